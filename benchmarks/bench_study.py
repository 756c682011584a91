"""Benchmark: a whole small study as attrcli runs it, against the straightforward per-key loop.

The study: every method at three layers (input, middle, final) in the three settings (gridpg,
difull, dipart), one grid image per variant (distinct for gridpg, corners for difull and dipart),
on vgg11 and resnet18 with fixed-seed random weights and random normalised grids (nothing
downloads). Two sides, timed in the same run, with 1 torch thread each:

- *attrcli*: ``attrcli attribute`` as a user runs the study, one call per model and setting
  with every method and layer (run in this process through ``attrcli.cli.main``, which costs no
  interpreter start or ``import torch`` per call; each call still parses, validates, reads the
  grid file and writes its artifacts). The model reaches the CLI as a user model, ``--model
  _study_models:NAME`` (``_study_models.py``: the registered network with the weights of
  ``--weights random``, built once per process; its adapter carries the weights hash computed
  then, which a factory's adapter keeps, as a ``--weights FILE`` is hashed once per file).
- *loop*: the per-key loop of ``_baseline_loop.py`` (Captum / pytorch-grad-cam, one call per
  grid image, target and key), one key at a time, every target of every key timed.

Reported: the **ratio of the totals** (loop total / attrcli's study total) per model and setting,
per model and over the study, beside the **geometric mean of the per-key speed-ups** (loop time
of a key over attrcli's time for that key alone: one more CLI call per key, timed as well, so
it carries the call's fixed cost), and per method rows; in CPU time (``time.process_time``) and
wall time. Maps of both sides are compared where the methods are defined the same
(``_baseline_loop.agreement``).

Methods: the eleven the loop implements (``_baseline_loop.RUNNERS``) are in the ratio. attrcli's
other methods (:data:`ATTRCLI_ONLY`: LRP and the two SmoothGrads) have no loop implementation;
they are timed in their own call per model and setting and reported apart, in no ratio.
Occlusion runs with ``scheme=inside`` (Captum's windows and mean drops, which the loop computes:
the same definition and the same work; attrcli's default ``paper`` scheme places a few more,
overhanging windows).

Modes (the same values on both sides):

- default (paper scale): 448-pixel grids, attrcli's presets (intgrad 20 steps, rise 1000 masks,
  occlusion K/s per layer, every channel, SmoothGrad 15 samples). One call per model and
  setting for the loop's methods. Many hours on a 2-core CPU.
- ``--quick``: 192-pixel grids (96-pixel cells, a multiple of both networks' stride of 32),
  intgrad 4 steps, rise 16 masks, occlusion 4×4 windows per map (k = s = ⌈size/4⌉), Score-CAM /
  Ablation-CAM on the first 8 channels of the middle and final layers (``_baseline_work.capped``:
  same pass shapes and cost), SmoothGrad 4 samples. The window size then depends on the layer
  and the channel cap on the model, which one call cannot express: the study takes 5 calls per
  model and setting (the uncapped methods at all layers; Score-CAM and Ablation-CAM on the
  capped view at all layers; occlusion at each layer).

    pip install grad-cam                                 # the loop's CAMs (extra "bench")
    nice -n 10 python benchmarks/bench_study.py --quick  # JSON + markdown in benchmarks/out/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _study_models
from _baseline_loop import RUNNERS, LoopCase, MissingBaseline, agreement, gradcam_module, loop_maps, occlusion_region
from _baseline_report import finite, metadata
from _baseline_work import CHANNEL_METHODS, Reduced, method_spec, random_grid_file

OUT = Path(__file__).parent / "out"
METHODS = ("grad", "guided-backprop", "ixg", "intgrad", "gradcam", "gradcam++", "layercam",
           "scorecam", "ablationcam", "occlusion", "rise")
ATTRCLI_ONLY = ("lrp", "smoothgrad-ixg", "smoothgrad-intgrad")  # no loop implementation
SETTINGS = ("gridpg", "difull", "dipart")
LAYERS = ("input", "middle", "final")
MODELS = ("vgg11", "resnet18")
N = 2
PAPER_CELL = 224  # vgg11 and resnet18
QUICK_CELL = 96
QUICK = Reduced(steps=4, masks=16, windows=4, channels=8)
QUICK_SAMPLES = 4
Log = Callable[[str], None]


@dataclasses.dataclass
class Study:
    """What is benchmarked and with which values (both sides)."""

    models: tuple[str, ...] = MODELS
    settings: tuple[str, ...] = SETTINGS
    layers: tuple[str, ...] = LAYERS
    methods: tuple[str, ...] = METHODS
    extra: tuple[str, ...] = ATTRCLI_ONLY  # attrcli-only methods, timed apart
    cell_size: int | None = None  # None: the model's own (224)
    reduced: Reduced = Reduced()
    samples: int | None = None  # SmoothGrad samples (None: preset)
    grids: int = 1
    batch_size: int = 8
    seed: int = 0
    loop_targets: int | None = None  # time the loop on the first targets and scale (None: all)


@dataclasses.dataclass
class Call:
    """One ``attrcli attribute`` call of the study: a model view, layers and method specs."""

    model: str  # _study_models name
    layers: list[str]
    specs: list[str]
    methods: list[str]  # method names of the specs, in order
    extra: bool = False  # attrcli-only methods


# --- the CLI, in this process --------------------------------------------------------------
def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """CPU seconds (this process) and wall seconds of ``run()``, and its result."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = run()
    return time.process_time() - cpu, time.perf_counter() - wall, out


def cli(args: list[str]) -> list[dict[str, str]]:
    """Run ``attrcli ARGS --json`` through ``attrcli.cli.main`` in this process; its JSON list.
    A failing call raises with its last line of error output."""
    from attrcli.cli.main import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["attrcli", *args, "--json"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    if code != 0:
        last = (err.getvalue().strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"attrcli {' '.join(args[:1])} failed (exit {code}): {last}")
    return json.loads(out.getvalue())


def attribute_args(call: Call, grid: Path, setting: str, study: Study, cache: Path) -> list[str]:
    return [
        "attribute", "--grids", str(grid), "--setting", setting, "--model", _study_models.spec(call.model),
        "--layer", ",".join(call.layers), "--method", ",".join(call.specs), "--device", "cpu",
        "--batch-size", str(study.batch_size), "--seed", str(study.seed), "--cache-dir", str(cache),
        "--force", "--quiet",
    ]


def run_call(call: Call, grid: Path, setting: str, study: Study, cache: Path) -> dict[str, Any]:
    """Time one call; its artifacts by (layer, method name)."""
    cpu, wall, results = timed(lambda: cli(attribute_args(call, grid, setting, study, cache)))
    paths = {}
    for result in results:
        _, _, layer, method = result["key"].split("/", 3)
        paths[layer, method.split(":", 1)[0]] = Path(result["path"])
    return {"model": call.model, "layers": call.layers, "specs": call.specs, "extra": call.extra,
            "cpu_s": cpu, "wall_s": wall, "artifacts": len(results), "paths": paths}


# --- the work ------------------------------------------------------------------------------
def model_names(model: str, study: Study, cell_size: int) -> tuple[str, str | None]:
    """The plain view and (with a channel cap) the capped view of ``model``."""
    cap = study.reduced.channels
    return (_study_models.model_name(model, cell_size),
            _study_models.model_name(model, cell_size, cap) if cap else None)


def spec_for(method: str, map_size: int, study: Study) -> str:
    """The spec of ``method`` at a layer whose grid-layout map is ``map_size`` wide."""
    spec = method_spec(method, map_size, study.reduced)  # occlusion: Captum's scheme=inside
    if method in ("smoothgrad-ixg", "smoothgrad-intgrad") and study.samples:
        steps = f",steps={study.reduced.steps}" if method == "smoothgrad-intgrad" and study.reduced.steps else ""
        return f"{method}:samples={study.samples}{steps}"
    return spec


def per_layer(method: str, study: Study) -> bool:
    """Whether ``method``'s spec differs by layer (occlusion's window under ``--quick``)."""
    return method == "occlusion" and bool(study.reduced.windows)


def study_calls(model: str, study: Study, sizes: dict[str, int], cell_size: int) -> list[Call]:
    """The fewest calls that run the study's methods at its layers: one, unless a spec differs
    by layer (one call per layer for it) or the channel cap needs the capped view (one call)."""
    plain, view = model_names(model, study, cell_size)
    first = study.layers[0]
    shared = [m for m in study.methods if not per_layer(m, study) and not (view and m in CHANNEL_METHODS)]
    calls = [Call(plain, list(study.layers), [spec_for(m, sizes[first], study) for m in shared], shared)] if shared else []
    capped = [m for m in study.methods if view and m in CHANNEL_METHODS]
    if capped:
        calls.append(Call(view, list(study.layers), [spec_for(m, sizes[first], study) for m in capped], capped))
    for method in (m for m in study.methods if per_layer(m, study)):
        calls += [Call(plain, [layer], [spec_for(method, sizes[layer], study)], [method]) for layer in study.layers]
    if study.extra:
        calls.append(Call(plain, list(study.layers), [spec_for(m, sizes[first], study) for m in study.extra],
                          list(study.extra), extra=True))
    return calls


def key_view(model: str, method: str, study: Study, cell_size: int) -> str:
    plain, view = model_names(model, study, cell_size)
    return view if view and method in CHANNEL_METHODS else plain


def map_sizes(adapter, layers) -> dict[str, int]:
    """Width of each layer's grid-layout map (GridPG: the whole grid through the network)."""
    from attrcli.settings import create_setting

    setting = create_setting("gridpg", adapter, N)
    x = torch.zeros(1, 3, N * adapter.cell_size, N * adapter.cell_size)
    with torch.no_grad():
        return {layer: int(setting.to_map(setting.prefix(x, adapter.layer_index(layer))).shape[-1]) for layer in layers}


def loop_key(adapter, setting_name: str, grid: Path, layer: str, method: str, spec: str, study: Study) -> dict[str, Any]:
    """The loop on one key: CPU and wall seconds (scaled from ``loop_targets`` if set) and maps."""
    from attrcli.methods import parse_method
    from attrcli.settings import create_setting
    from attrcli.store import read_artifact

    setting = create_setting(setting_name, adapter, N)
    cells = setting.default_cells()
    data = read_artifact(grid).data
    images, labels = torch.from_numpy(np.asarray(data["images"])), np.asarray(data["labels"])
    config = parse_method(spec).build(cell_size=adapter.cell_size, layer=layer).config
    case = LoopCase(setting, layer, method, config, study.batch_size, study.seed)
    targets = len(cells) if study.loop_targets is None else min(study.loop_targets, len(cells))
    cpu, wall, maps = timed(lambda: loop_maps(case, images, labels, cells, targets=targets))
    scale = len(cells) / targets
    return {"cpu_s": cpu * scale, "wall_s": wall * scale, "maps": maps, "config": config,
            "targets": len(cells), "targets_timed": targets, "attributions": images.shape[0] * len(cells)}


def compare(method: str, layer: str, ours: np.ndarray, theirs: np.ndarray, config) -> dict[str, Any]:
    region = None
    if method == "occlusion":
        h, w = ours.shape[-2:]
        region = (occlusion_region(h, config.k, config.s), occlusion_region(w, config.k, config.s))
    return agreement(method, layer, ours, theirs, region=region)


def bench_setting(model: str, setting_name: str, grid: Path, study: Study, cell_size: int, sizes: dict[str, int],
                  cache: Path, log: Log) -> tuple[list[dict], list[dict], list[dict]]:
    """One model and setting: the study's calls, every key of the loop's methods alone, the loop on
    every key; attrcli-only methods are timed in their call only."""
    from attrcli.store import read_artifact

    calls = [run_call(c, grid, setting_name, study, cache) for c in study_calls(model, study, sizes, cell_size)]
    ours = {key: read_artifact(path).data["maps"] for c in calls if not c["extra"] for key, path in c["paths"].items()}
    for c in calls:
        log(f"{model:9s} {setting_name:6s} call {','.join(c['layers']):18s} {len(c['specs'])} method(s)"
            f"{' (attrcli only)' if c['extra'] else ''}: {c['cpu_s']:8.2f} CPU-s {c['wall_s']:8.2f} s")
    keys = []
    for layer in study.layers:
        for method in study.methods:
            view = key_view(model, method, study, cell_size)
            spec = spec_for(method, sizes[layer], study)
            alone = run_call(Call(view, [layer], [spec], [method]), grid, setting_name, study, cache)
            loop = loop_key(_study_models.build(view), setting_name, grid, layer, method, spec, study)
            row = {"model": model, "setting": setting_name, "layer": layer, "method": method, "spec": spec,
                   "view": view, "attrcli_cpu_s": alone["cpu_s"], "attrcli_wall_s": alone["wall_s"],
                   "loop_cpu_s": loop["cpu_s"], "loop_wall_s": loop["wall_s"], "targets": loop["targets"],
                   "loop_targets_timed": loop["targets_timed"], "attributions": loop["attributions"],
                   "speedup_cpu": loop["cpu_s"] / alone["cpu_s"], "speedup_wall": loop["wall_s"] / alone["wall_s"],
                   "agreement": compare(method, layer, ours[layer, method], loop["maps"], loop["config"])}
            keys.append(row)
            agree = row["agreement"]
            log(f"{model:9s} {setting_name:6s} {layer:6s} {method:16s} attrcli {alone['cpu_s']:7.2f} CPU-s  loop "
                f"{loop['cpu_s']:8.2f} CPU-s  x{row['speedup_cpu']:6.2f}  {agree['status']}"
                + (f" ({agree['max_diff']:.1e})" if "max_diff" in agree else ""))
    extra = [{"model": model, "setting": setting_name, "methods": c["specs"], "keys": c["artifacts"],
              "cpu_s": c["cpu_s"], "wall_s": c["wall_s"], "loop": "no implementation in _baseline_loop.py"}
             for c in calls if c["extra"]]
    for c in calls:
        c["paths"] = {f"{layer}/{method}": str(path) for (layer, method), path in c["paths"].items()}
        c |= {"setting": setting_name, "model_family": model}
    return calls, keys, extra


def grid_files(model: str, adapter, folder: Path, study: Study) -> dict[str, Path]:
    return {variant: random_grid_file(folder / f"{model}-{variant}.h5", adapter, variant=variant, count=study.grids,
                                      n=N, seed=study.seed)
            for variant in ("distinct", "corners")}


def warm_up(model: str, adapter, grid: Path, study: Study, cell_size: int, cache: Path) -> None:
    """Untimed: imports of both sides, attrcli's CPU allocator policy (which the loop then has
    too), first-use costs of the kernels."""
    plain, _ = model_names(model, study, cell_size)
    cli(attribute_args(Call(plain, ["final"], ["grad"], ["grad"]), grid, "gridpg", study, cache))
    warm = dataclasses.replace(study, loop_targets=1)
    loop_key(adapter, "gridpg", grid, "final", "grad", "grad", warm)
    if any(m in study.methods for m in ("gradcam", "gradcam++", "layercam", "scorecam", "ablationcam")):
        loop_key(adapter, "gridpg", grid, "final", "gradcam", "gradcam", warm)


def bench(study: Study, work: Path, log: Log) -> dict[str, Any]:
    """Every model and setting of ``study``: calls, keys, attrcli-only keys and the summary."""
    from attrcli.settings import create_setting

    calls, keys, extra = [], [], []
    for model in study.models:
        started = time.perf_counter()
        cell_size = study.cell_size or PAPER_CELL
        plain, _ = model_names(model, study, cell_size)
        adapter = _study_models.build(plain)
        sizes = map_sizes(adapter, study.layers)
        grids = grid_files(model, adapter, work / "grids", study)
        warm_up(model, adapter, grids["distinct"], study, cell_size, work / "cache")
        for setting_name in study.settings:
            variant = create_setting(setting_name, adapter, N).variant
            found = bench_setting(model, setting_name, grids[variant], study, cell_size, sizes, work / "cache", log)
            calls += found[0]
            keys += found[1]
            extra += found[2]
        log(f"{model}: {time.perf_counter() - started:.0f} s")
    return {"calls": calls, "keys": keys, "attrcli_only": extra, "summary": summarise(calls, keys, extra)}


# --- the report ----------------------------------------------------------------------------
def geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def totals(calls: list[dict], keys: list[dict]) -> dict[str, Any]:
    """Totals of a selection: the loop's keys, attrcli's study calls (the loop's methods only) and
    its keys alone; the ratio of the totals and the geometric mean of the per-key speed-ups."""
    study_calls_ = [c for c in calls if not c["extra"]]
    out: dict[str, Any] = {"keys": len(keys), "calls": len(study_calls_)}
    for clock in ("cpu", "wall"):
        loop = sum(k[f"loop_{clock}_s"] for k in keys)
        ours = sum(c[f"{clock}_s"] for c in study_calls_)
        alone = sum(k[f"attrcli_{clock}_s"] for k in keys)
        out[clock] = {
            "loop_s": loop, "attrcli_study_s": ours, "attrcli_keys_alone_s": alone,
            "ratio_of_totals": loop / ours if ours > 0 else None,
            "ratio_of_totals_keys_alone": loop / alone if alone > 0 else None,
            "sharing": alone / ours if ours > 0 else None,
            "geomean_speedup": geomean([k[f"speedup_{clock}"] for k in keys]),
            "slowest": min(({"setting": k["setting"], "layer": k["layer"], "method": k["method"], "model": k["model"],
                             "speedup": k[f"speedup_{clock}"]} for k in keys), key=lambda s: s["speedup"], default=None),
        }
    return out


def summarise(calls: list[dict], keys: list[dict], extra: list[dict]) -> dict[str, Any]:
    models = list(dict.fromkeys(k["model"] for k in keys))
    settings = list(dict.fromkeys(k["setting"] for k in keys))

    def pick(rows, **match):
        return [r for r in rows if all(r.get(f) == v for f, v in match.items())]

    def calls_of(**match):
        return [c for c in calls if all(c.get("model_family" if f == "model" else f) == v for f, v in match.items())]

    statuses: dict[str, int] = {}
    for k in keys:
        statuses[k["agreement"]["status"]] = statuses.get(k["agreement"]["status"], 0) + 1
    per_method = {}
    for method in dict.fromkeys(k["method"] for k in keys):
        mine = pick(keys, method=method)
        per_method[method] = {
            "keys": len(mine),
            **{clock: {"geomean_speedup": geomean([k[f"speedup_{clock}"] for k in mine]),
                       "min": min(k[f"speedup_{clock}"] for k in mine), "max": max(k[f"speedup_{clock}"] for k in mine),
                       "loop_s": sum(k[f"loop_{clock}_s"] for k in mine),
                       "attrcli_keys_alone_s": sum(k[f"attrcli_{clock}_s"] for k in mine)}
               for clock in ("cpu", "wall")},
        }
    extra_calls = [c for c in calls if c["extra"]]
    return {
        "study": totals(calls, keys),
        "per_model": {m: totals(calls_of(model=m), pick(keys, model=m)) for m in models},
        "per_setting": {f"{m}/{s}": totals(calls_of(model=m, setting=s), pick(keys, model=m, setting=s))
                        for m in models for s in settings if pick(keys, model=m, setting=s)},
        "per_method": per_method,
        "attrcli_only": {"methods": list(dict.fromkeys(m.split(":", 1)[0] for e in extra for m in e["methods"])),
                         "keys": sum(e["keys"] for e in extra), "calls": len(extra_calls),
                         "cpu_s": sum(c["cpu_s"] for c in extra_calls), "wall_s": sum(c["wall_s"] for c in extra_calls),
                         "loop": "no implementation in _baseline_loop.py"},
        "agreement": statuses,
    }


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(report: dict[str, Any]) -> str:
    """The section for benchmarks/RESULTS.md."""
    meta, summary, plan = report["meta"], report["summary"], report["plan"]
    s = summary["study"]
    lines = [
        f"## Whole study (`bench_study.py{' --quick' if meta['mode'] == 'quick' else ''}`)",
        "",
        f"{meta['date']}, {meta['cpu']}, 1 torch thread each side, load average "
        f"{meta['load_before'][0]:.1f} before / {meta['load_after'][0]:.1f} after. "
        f"{len(plan['models'])} models × {len(plan['settings'])} settings × {len(plan['layers'])} layers × "
        f"{len(plan['methods'])} methods = {s['keys']} keys; {plan['grid_px']}-pixel grids, {plan['grids']} grid per "
        f"variant, batch size {plan['batch_size']}; {plan['reductions']}.",
        "",
        f"**Whole study: {_x(s['cpu']['ratio_of_totals'])} (ratio of the CPU-time totals: loop "
        f"{s['cpu']['loop_s']:.0f} CPU-s / attrcli {s['cpu']['attrcli_study_s']:.0f} CPU-s in {s['calls']} calls), "
        f"{_x(s['wall']['ratio_of_totals'])} in wall time; per key (each key in its own call) the geometric mean "
        f"speed-up is {_x(s['cpu']['geomean_speedup'])} CPU, {_x(s['wall']['geomean_speedup'])} wall.**",
        "",
        "| model | setting | keys | calls | loop CPU-s | attrcli CPU-s | ratio of totals, CPU | wall | "
        "keys alone: ratio of totals, CPU | per-key geomean, CPU | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(model, setting, t):
        c, w = t["cpu"], t["wall"]
        return (f"| {model} | {setting} | {t['keys']} | {t['calls']} | {c['loop_s']:.1f} | {c['attrcli_study_s']:.1f} | "
                f"{_x(c['ratio_of_totals'])} | {_x(w['ratio_of_totals'])} | {_x(c['ratio_of_totals_keys_alone'])} | "
                f"{_x(c['geomean_speedup'])} | {_x(w['geomean_speedup'])} |")

    for name, t in summary["per_setting"].items():
        lines.append(row(*name.split("/"), t))
    for model, t in summary["per_model"].items():
        lines.append(row(f"**{model}**", "all", t))
    lines.append(row("**study**", "all", s))
    lines += ["", "| method | keys | per-key geomean, CPU | min | max | wall | loop CPU-s | attrcli CPU-s (keys alone) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in summary["per_method"].items():
        c = m["cpu"]
        lines.append(f"| {method} | {m['keys']} | {_x(c['geomean_speedup'])} | {_x(c['min'])} | {_x(c['max'])} | "
                     f"{_x(m['wall']['geomean_speedup'])} | {c['loop_s']:.1f} | {c['attrcli_keys_alone_s']:.1f} |")
    only = summary["attrcli_only"]
    if only["methods"]:
        lines += ["", f"Not in the ratio (no loop implementation in `_baseline_loop.py`): {', '.join(only['methods'])}; "
                  f"attrcli ran their {only['keys']} keys in {only['calls']} more calls (one per model and setting), "
                  f"{only['cpu_s']:.1f} CPU-s ({only['wall_s']:.1f} s wall) in all."]
    slow = s["cpu"]["slowest"]
    if slow:
        lines += ["", f"Slowest key (CPU): {slow['model']} {slow['setting']} {slow['layer']} {slow['method']}, "
                  f"{_x(slow['speedup'])}. Maps: " + ", ".join(f"{n} {v}" for v, n in sorted(summary["agreement"].items())) + "."]
    return "\n".join(lines) + "\n"


def readme_line(report: dict[str, Any]) -> str:
    """A row for the README's speed table (model | geomean key by key | in one call | slowest)."""
    s = report["summary"]["study"]["cpu"]
    plan = report["plan"]
    slow = s["slowest"]
    return (f"| whole study, {' + '.join(plan['models'])} ({len(plan['settings'])} settings, "
            f"{report['summary']['study']['keys']} keys, `bench_study.py{' --quick' if report['meta']['mode'] == 'quick' else ''}`) | "
            f"{_x(s['geomean_speedup'])} | {_x(s['ratio_of_totals'])} (ratio of totals) | "
            f"{slow['method']} @ {slow['layer']}, {slow['setting']}, {slow['model']}: {_x(slow['speedup'])} |")


def reductions(study: Study, grid_px: int) -> str:
    r = study.reduced
    if r == Reduced() and study.samples is None:
        return "attrcli's presets, every channel"
    parts = [f"intgrad {r.steps} steps" if r.steps else None, f"rise {r.masks} masks" if r.masks else None,
             f"occlusion {r.windows}×{r.windows} windows per map (scheme=inside)" if r.windows else None,
             f"Score-CAM / Ablation-CAM on the first {r.channels} channels of middle and final" if r.channels else None,
             f"SmoothGrad {study.samples} samples" if study.samples else None]
    return ", ".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="192-pixel grids and reduced parameters (see the docstring)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--methods", default=",".join(METHODS), help="methods in the ratio (the loop's)")
    parser.add_argument("--attrcli-only", default=",".join(ATTRCLI_ONLY), help="methods timed apart ('' for none)")
    parser.add_argument("--cell-size", type=int, default=None, help="pixels per grid cell (default 224; --quick 96)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loop-targets", type=int, default=None, help="time the loop on the first targets only, scaled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    extra = tuple(m for m in args.attrcli_only.split(",") if m)
    unknown = sorted(set(methods) - set(RUNNERS))
    if unknown:
        parser.error(f"no loop implementation for {', '.join(unknown)}: give it in --attrcli-only; loop methods: {', '.join(RUNNERS)}")
    if set(methods) & {"gradcam", "gradcam++", "layercam", "scorecam", "ablationcam"}:
        try:
            gradcam_module()
        except MissingBaseline as exc:
            print(f"bench_study: {exc}", file=sys.stderr)
            return 2
    os.environ["ATTRCLI_THREADS"] = "1"
    torch.set_num_threads(1)
    study = Study(
        models=tuple(args.models.split(",")), settings=tuple(args.settings.split(",")),
        layers=tuple(args.layers.split(",")), methods=methods, extra=extra,
        cell_size=args.cell_size or (QUICK_CELL if args.quick else None), reduced=QUICK if args.quick else Reduced(),
        samples=QUICK_SAMPLES if args.quick else None, batch_size=args.batch_size, seed=args.seed,
        loop_targets=args.loop_targets,
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_study_") as tmp:
        found = bench(study, Path(tmp), lambda line: print(line, flush=True))
    mode = "quick" if args.quick else "default"
    grid_px = N * (study.cell_size or PAPER_CELL)
    plan = dataclasses.asdict(study) | {"grid_px": grid_px, "reductions": reductions(study, grid_px)}
    report = {"meta": metadata(mode, torch.device("cpu"), load_before), "plan": plan, **found}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / f"bench_study_{mode}.json", args.out_dir / f"bench_study_{mode}.md"
    json_path.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    text = markdown(report) + "\nREADME row:\n\n" + readme_line(report) + "\n"
    md_path.write_text(text)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
