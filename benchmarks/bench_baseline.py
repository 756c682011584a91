"""Benchmark: attrcli's engine against the straightforward per-target Captum / pytorch-grad-cam loop.

Both sides do identical work: the same model and weights, the same grid file, the same evaluated
targets (gridpg: the 4 cells of its head; difull: heads 0 and 3), the same layers and the same
method parameters (attrcli's presets, or the reduced ``--quick`` values, given to both). attrcli
runs as users run it: ``attribute(..., force=True)`` for one (setting, layer, method) key into a
temporary cache, artifact written. The loop is described in ``_baseline_loop.py``. For each key
the benchmark reports attributions per second of both, their ratio (the speed-up), attrcli's
ratio to the method's compute floor (``_baseline_work.Floors``: the passes it cannot
avoid, timed alone in the same run) and whether both sides' maps agree where the methods are
defined the same. Times are wall times (``time.perf_counter``) of the complete work, the median
of 3 runs where one run takes under a second. A *together* row per setting times one
``attribute`` call for every method and layer at once (attrcli shares passes across keys)
against the sum of the loop's times; it is skipped where the specs differ by layer.

Modes:

- default: attrcli's presets (intgrad 20 steps, rise 1000 masks, occlusion K/s per layer, every
  channel), 2 grids for vgg11 / resnet18 and 8 for the digits models, every target of the loop
  timed. Many hours on a 2-core CPU.
- ``--quick``: 1 grid for vgg11 / resnet18 with intgrad 4 steps, rise 16 masks, occlusion 4×4
  windows per map (k = s = ⌈size/4⌉) and Score-CAM / Ablation-CAM on the first 8 channels of the
  layer (``_baseline_work.capped``), on both sides; the loop is timed on the first target and
  scaled to all (its targets cost the same by construction). Digits models: 2 grids, presets.

Models: ``vgg11`` and ``resnet18`` with fixed-seed random weights on random normalised 448-pixel
2×2 grids; ``digits-vgg11`` / ``digits-resnet18`` with their trained weights (trained on first use
into ``--cache-dir``) on grids from the real digits pipeline, or ``--digits-weights random``.

    pip install grad-cam                                    # the baseline (extra "bench")
    python benchmarks/bench_baseline.py --quick             # JSON + markdown in benchmarks/out/
    python benchmarks/bench_baseline.py --models digits-vgg11 --methods grad,occlusion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline_loop import LoopCase, MissingBaseline, agreement, gradcam_module, loop_maps, occlusion_region  # noqa: E402
from _baseline_work import (  # noqa: E402
    CHANNEL_METHODS, Floors, Reduced, capped, digits_grid_files, measure, method_spec,
    random_grid_file,
)
from attrcli.engine.attribute import attribute, resolve_device  # noqa: E402
from attrcli.engine.grids import load_grid_file  # noqa: E402
from attrcli.methods import parse_method  # noqa: E402
from attrcli.models import describe_model  # noqa: E402
from attrcli.models.adapter import ModelAdapter  # noqa: E402
from attrcli.settings import create_setting  # noqa: E402
from attrcli.store import read_artifact  # noqa: E402

OUT = Path(__file__).parent / "out"
METHODS = ("grad", "guided-backprop", "ixg", "intgrad", "gradcam", "gradcam++", "layercam",
           "scorecam", "ablationcam", "occlusion", "rise")
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "ablationcam")
LAYERS = ("input", "middle", "final")
SETTINGS = ("gridpg", "difull")
MODELS = ("vgg11", "resnet18", "digits-vgg11", "digits-resnet18")
BAR_MODELS = ("vgg11", "resnet18")  # the bar: geometric mean >= 5x over these
QUICK = Reduced(steps=4, masks=16, windows=4, channels=8)  # --quick at 448 px
QUICK_DIGITS = Reduced(masks=100, windows=8)  # --quick for the digits models
N = 2
Log = Callable[[str], None]


@dataclasses.dataclass
class Plan:
    """How one model is benchmarked."""

    grids: int
    batch_size: int
    reduced: Reduced
    loop_targets: int | None  # time the loop on the first targets only (None: all)
    settings: tuple[str, ...] = SETTINGS
    layers: tuple[str, ...] = LAYERS
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    repeats: int = 3  # runs of a side whose first run takes under a second (median)


def _layer_shapes(setting, x: torch.Tensor, layers) -> dict[str, tuple[int, int, int]]:
    """Channels, height and width of each layer's grid-layout map."""
    out = {}
    with torch.no_grad():
        for layer in layers:
            a = setting.to_map(setting.prefix(x[:1], setting.model.layer_index(layer)))
            out[layer] = tuple(a.shape[1:])
    return out


def _warm_up(setting, x: torch.Tensor) -> None:
    with torch.enable_grad():
        h = x[:1].detach().requires_grad_(True)
        torch.autograd.grad(setting.forward(h).sum(), h)


def bench_case(
    adapter: ModelAdapter, setting_name: str, grid_path: Path, layer: str, method: str, plan: Plan,
    shape: tuple[int, int, int], floors: Floors, cache_root: Path, device: torch.device,
) -> dict[str, Any]:
    """One (setting, layer, method) of one model: both sides timed, floor, maps compared."""
    channels, height, _ = shape
    spec = method_spec(method, height, plan.reduced)
    cap = plan.reduced.channels
    capped_to = cap if method in CHANNEL_METHODS and layer != "input" and cap and cap < channels else None
    model = capped(adapter, layer, capped_to, channels) if capped_to else adapter
    setting = create_setting(setting_name, model, N)
    cells = setting.default_cells()
    grid_file = load_grid_file(grid_path)
    images = torch.from_numpy(grid_file.images).to(device)
    labels = grid_file.labels
    config = parse_method(spec).build(cell_size=model.cell_size, layer=layer).config

    def ours() -> np.ndarray:
        (result,) = attribute(
            grids=grid_path, setting=setting_name, model=model, layers=[layer], methods=[spec],
            device=device, batch_size=plan.batch_size, force=True, cache_root=cache_root, seed=plan.seed,
        )
        return read_artifact(result.path).data["maps"]

    ours_s, our_maps = measure(ours, device, repeats=plan.repeats)
    case = LoopCase(setting, layer, method, config, plan.batch_size, plan.seed)
    timed = len(cells) if plan.loop_targets is None else min(plan.loop_targets, len(cells))
    loop_s, their_maps = measure(lambda: loop_maps(case, images, labels, cells, targets=timed), device, repeats=plan.repeats)
    loop_s *= len(cells) / timed
    floor_s = floors.seconds(layer, method, config, capped_to or channels)
    region = None
    if method == "occlusion":
        h, w = our_maps.shape[-2:]
        region = (occlusion_region(h, config.k, config.s), occlusion_region(w, config.k, config.s))
    count = grid_file.count * len(cells)
    return {
        "model": adapter.name, "setting": setting_name, "layer": layer,
        "layer_module": adapter.canonical_layer(layer), "method": method, "spec": spec,
        "channels": capped_to or channels, "channels_capped": capped_to is not None,
        "grids": grid_file.count, "targets": len(cells), "attributions": count,
        "attrcli_s": ours_s, "loop_s": loop_s, "loop_targets_timed": timed, "floor_s": floor_s,
        "speedup": loop_s / ours_s, "attrcli_per_s": count / ours_s, "loop_per_s": count / loop_s,
        "floor_ratio": ours_s / floor_s,
        "agreement": agreement(method, layer, our_maps, their_maps, region=region),
    }


def bench_model(
    adapter: ModelAdapter, grid_paths: dict[str, Path], plan: Plan, work: Path, device: torch.device, log: Log,
) -> list[dict[str, Any]]:
    """Every (setting, layer, method) of one model, then a *together* row per setting."""
    rows: list[dict[str, Any]] = []
    for setting_name in plan.settings:
        setting = create_setting(setting_name, adapter, N)
        grid_path = grid_paths[setting.variant]
        grid_file = load_grid_file(grid_path)
        images = torch.from_numpy(grid_file.images).to(device)
        _warm_up(setting, images)
        shapes = _layer_shapes(setting, images, plan.layers)
        labels = torch.from_numpy(grid_file.labels).to(device)
        floors = Floors(setting, images, labels, setting.default_cells(), plan.batch_size, device)
        mine = []
        for layer in plan.layers:
            for method in plan.methods:
                row = bench_case(adapter, setting_name, grid_path, layer, method, plan, shapes[layer], floors,
                                 work / "cache", device)
                mine.append(row)
                agree = row["agreement"]
                log(
                    f"{adapter.name:15s} {setting_name:6s} {layer:6s} {method:15s} attrcli {row['attrcli_s']:9.3f}s "
                    f"loop {row['loop_s']:9.3f}s  x{row['speedup']:7.2f}  floor x{row['floor_ratio']:5.2f}  "
                    f"{agree['status']}" + (f" ({agree['max_diff']:.1e})" if "max_diff" in agree else "")
                )
        rows += mine
        specs = {method_spec(m, shapes[layer][1], plan.reduced) for m in plan.methods for layer in plan.layers}
        if len(specs) == len(plan.methods):  # one spec per method at every layer
            start = time.perf_counter()
            attribute(
                grids=grid_path, setting=setting_name, model=adapter, layers=list(plan.layers),
                methods=sorted(specs), device=device, batch_size=plan.batch_size, force=True,
                cache_root=work / "cache", seed=plan.seed,
            )
            ours_s = time.perf_counter() - start
            loop_s = sum(r["loop_s"] for r in mine)
            separate_s = sum(r["attrcli_s"] for r in mine)
            rows.append({
                "model": adapter.name, "setting": setting_name, "layer": "together", "method": "together",
                "attrcli_s": ours_s, "attrcli_separate_s": separate_s, "loop_s": loop_s,
                "speedup": loop_s / ours_s, "attributions": sum(r["attributions"] for r in mine),
            })
            log(f"{adapter.name:15s} {setting_name:6s} together: attrcli {ours_s:.2f}s (keys one by one "
                f"{separate_s:.2f}s), loop {loop_s:.2f}s, x{loop_s / ours_s:.2f}")
    return rows


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric mean speed-up per model and over the bar's models, the slowest key, agreement."""
    keys = [r for r in rows if r["method"] != "together"]

    def slowest(selected):
        worst = min(selected, key=lambda r: r["speedup"])
        return {k: worst[k] for k in ("model", "setting", "layer", "method", "speedup")}

    per_model = {}
    for model in dict.fromkeys(r["model"] for r in keys):
        mine = [r for r in keys if r["model"] == model]
        per_model[model] = {"keys": len(mine), "geomean_speedup": _geomean([r["speedup"] for r in mine]),
                            "slowest": slowest(mine)}
    bar = [r for r in keys if r["model"] in BAR_MODELS]
    statuses: dict[str, int] = {}
    for r in keys:
        statuses[r["agreement"]["status"]] = statuses.get(r["agreement"]["status"], 0) + 1
    bar_geomean = _geomean([r["speedup"] for r in bar])
    return {
        "per_model": per_model,
        "overall_geomean_speedup": _geomean([r["speedup"] for r in keys]),
        "bar_models": list(BAR_MODELS),
        "bar_geomean_speedup": bar_geomean,
        "bar_geomean_met": None if bar_geomean is None else bar_geomean >= 5,
        "bar_none_slower_met": None if not bar else all(r["speedup"] >= 1 for r in bar),
        "slowest": slowest(keys) if keys else None,
        "agreement": statuses,
        "differ": [{k: r[k] for k in ("model", "setting", "layer", "method")} | {"max_diff": r["agreement"]["max_diff"]}
                   for r in keys if r["agreement"]["status"] == "differ"],
    }


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: conditions, summary, one table row per key."""
    meta, summary = report["meta"], report["summary"]
    lines = [
        f"# attrcli vs the straightforward Captum / pytorch-grad-cam loop ({meta['mode']} mode)",
        "",
        f"{meta['date']}; device {meta['device']}; {meta['cpu_count']} CPUs, {meta['torch_threads']} torch "
        f"threads; torch {meta['torch']}, captum {meta['captum']}, grad-cam {meta['grad_cam']}; load average "
        f"{meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after. {meta['note']}",
        "",
        "| model | keys | geometric mean speed-up | slowest key |",
        "|---|---:|---:|---|",
    ]
    for model, s in summary["per_model"].items():
        w = s["slowest"]
        lines.append(f"| {model} | {s['keys']} | {_fmt(s['geomean_speedup'])}× | {w['method']} @ {w['layer']}, "
                     f"{w['setting']}: {w['speedup']:.2f}× |")
    lines += [
        "",
        f"Over {', '.join(summary['bar_models'])}: geometric mean {_fmt(summary['bar_geomean_speedup'])}× "
        f"(bar ≥ 5×: {summary['bar_geomean_met']}); no key slower than the loop: {summary['bar_none_slower_met']}. "
        f"All keys: {_fmt(summary['overall_geomean_speedup'])}×. Maps: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["agreement"].items())) + ".",
        "",
        "| model | setting | layer | method | spec | attrcli attr/s | loop attr/s | speed-up | × floor | maps |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if r["method"] == "together":
            lines.append(f"| {r['model']} | {r['setting']} | all | together | | {r['attributions'] / r['attrcli_s']:.3g} | "
                         f"{r['attributions'] / r['loop_s']:.3g} | {r['speedup']:.2f}× | | |")
            continue
        a = r["agreement"]
        maps = a["status"] + (f" ({a['max_diff']:.0e})" if a.get("max_diff") is not None else "")
        spec = r["spec"] + (f" ({r['channels']} ch)" if r["channels_capped"] else "")
        lines.append(f"| {r['model']} | {r['setting']} | {r['layer']} | {r['method']} | {spec} | "
                     f"{r['attrcli_per_s']:.3g} | {r['loop_per_s']:.3g} | {r['speedup']:.2f}× | "
                     f"{r['floor_ratio']:.2f} | {maps} |")
    return "\n".join(lines) + "\n"


def _finite(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``bench_baseline.json`` and ``bench_baseline.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _finite(report)
    paths = out_dir / "bench_baseline.json", out_dir / "bench_baseline.md"
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def metadata(mode: str, device: torch.device, load_before) -> dict[str, Any]:
    import captum

    try:
        from importlib.metadata import version

        grad_cam = version("grad-cam")
    except Exception:
        grad_cam = "missing"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": mode, "device": str(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "captum": captum.__version__, "grad_cam": grad_cam, "python": platform.python_version(),
        "machine": platform.machine(), "load_before": list(load_before), "load_after": list(os.getloadavg()),
        "note": "Shared machine, other jobs running: timings are noisy.",
    }


def _model_and_grids(name: str, args, work: Path, device: torch.device, grids: int) -> tuple[ModelAdapter, dict[str, Path]]:
    from attrcli.models import create_model

    digits = name.startswith("digits-")
    if digits and args.digits_weights == "trained":
        adapter = create_model(name, weights=None, device=device, cache_dir=args.cache_dir)
        paths = digits_grid_files(name, count=grids, cache_dir=args.cache_dir, out_dir=work / "grids",
                                  seed=args.seed, device=device)
        return adapter, paths
    adapter = create_model(name, weights="random", device=device, cache_dir=args.cache_dir)
    paths = {
        variant: random_grid_file(work / "grids" / f"{name}-{variant}.h5", adapter, variant=variant,
                                  count=grids, n=N, seed=args.seed)
        for variant in ("distinct", "corners")
    }
    return adapter, paths


def plan_for(cell_size: int, args) -> Plan:
    """Grids, batch size and reductions for a model of ``cell_size``-pixel cells under ``args``."""
    large = cell_size > 64
    if args.quick:
        grids, reduced, targets = (1, QUICK, 1) if large else (16, QUICK_DIGITS, 1)
    else:
        grids, reduced, targets = (2 if large else 32), Reduced(), None
    return Plan(
        grids=args.grids or grids, batch_size=args.batch_size or (8 if large else 32), reduced=reduced,
        loop_targets=targets, settings=tuple(args.settings.split(",")), layers=tuple(args.layers.split(",")),
        methods=tuple(args.methods.split(",")), seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 grid and reduced parameters for vgg11/resnet18")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--grids", type=int, default=None, help="grid images per model (default by mode)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 at 448 px, 32 for digits")
    parser.add_argument("--digits-weights", choices=("trained", "random"), default="trained")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="where the digits models are")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    if set(args.methods.split(",")) & set(CAM_METHODS):
        try:
            gradcam_module()
        except MissingBaseline as exc:
            print(f"bench_baseline: {exc}", file=sys.stderr)
            return 2
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    plans = {}

    def log(line: str) -> None:
        print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_baseline_") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            started = time.perf_counter()
            plan = plan_for(describe_model(name).cell_size, args)
            adapter, grid_paths = _model_and_grids(name, args, work, device, plan.grids)
            plans[name] = dataclasses.asdict(plan)
            rows += bench_model(adapter, grid_paths, plan, work, device, log)
            log(f"{name}: {time.perf_counter() - started:.0f}s")
    mode = "quick" if args.quick else "default"
    report = {"meta": metadata(mode, device, load_before), "plans": plans, "rows": rows, "summary": summarise(rows)}
    json_path, md_path = write_report(report, args.out_dir)
    print(markdown(_finite(report)).split("\n\n| model | setting")[0])
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
