"""Benchmark: attrcli's engine against the straightforward per-target Captum / pytorch-grad-cam loop.

Both sides do identical work: the same model and weights, the same grid file, the same evaluated
targets (gridpg: the 4 cells of its head; difull: heads 0 and 3), the same layers and the same
method parameters (attrcli's presets, or the reduced ``--quick`` values, given to both). attrcli
runs as users run it: ``attribute(..., force=True)`` into a temporary cache, artifacts written.
The loop is described in ``_baseline_loop.py``. Per (setting, layer, method) key the benchmark
reports attributions per second of both sides, their ratio (the speed-up), attrcli's ratio to
the method's compute floor (``_baseline_work.Floors``: the passes it cannot avoid, timed alone
in the same run) and whether both sides' maps agree where the methods are defined the same.

attrcli is timed twice: *key by key* (one ``attribute`` call per key: no sharing across keys)
and *together* (every key of a setting in the fewest calls, as a study runs: gradient methods
share their passes across methods and layers). The summary gives the geometric mean speed-up key
by key, and *in one call*: each key charged its share of the together time, in proportion to its
time alone. Times are wall times (``time.perf_counter``) of the complete work, the median of 3
runs where one run takes under a second.

Modes:

- default: attrcli's presets (intgrad 20 steps, rise 1000 masks, occlusion K/s per layer, every
  channel), 2 grids for vgg11 / resnet18 and 32 for the digits models, every target of the loop
  timed. Many hours on a 2-core CPU.
- ``--quick``: vgg11 / resnet18 on 1 grid with intgrad 4 steps, rise 16 masks, occlusion 4×4
  windows per map (k = s = ⌈size/4⌉) and Score-CAM / Ablation-CAM on the first 8 channels of the
  layer (``_baseline_work.capped``); digits models on 16 grids with rise 100 masks and 8×8
  occlusion windows. Both sides get the same values; the loop is timed on the first target and
  scaled to all (its targets cost the same by construction).

Models: ``vgg11`` and ``resnet18`` with fixed-seed random weights on random normalised 448-pixel
2×2 grids; ``digits-vgg11`` / ``digits-resnet18`` with their trained weights (trained on first use
into ``--cache-dir``) on grids from the real digits pipeline, or ``--digits-weights random``.
On a machine shared with other jobs use ``--threads 1``: several torch threads on oversubscribed
cores stall unpredictably (small passes then vary 100-fold). Both sides run under the CPU
allocator policy ``attribute`` sets (:mod:`attrcli.engine.allocator`), set before either runs.

    pip install grad-cam                                    # the baseline (extra "bench")
    python benchmarks/bench_baseline.py --quick             # JSON + markdown in benchmarks/out/
    python benchmarks/bench_baseline.py --models digits-vgg11 --methods grad,occlusion
"""

from __future__ import annotations

import argparse
import dataclasses
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

from _baseline_loop import (
    LoopCase,
    MissingBaseline,
    agreement,
    gradcam_module,
    loop_maps,
    occlusion_region,
)
from _baseline_report import (
    finite,
    markdown,
    metadata,
    summarise,
    write_report,
)
from _baseline_work import (
    CHANNEL_METHODS,
    Floors,
    Reduced,
    capped,
    digits_grid_files,
    measure,
    method_spec,
    random_grid_file,
)

from attrcli.engine.allocator import retain_freed_memory
from attrcli.devices import resolve_device
from attrcli.engine.attribute import channels_last
from attrcli.stages.attribute import attribute
from attrcli.data.gridfile import load_grid_file
from attrcli.methods import parse_method
from attrcli.models import describe_model
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import create_setting
from attrcli.store import read_artifact

OUT = Path(__file__).parent / "out"
METHODS = ("grad", "guided-backprop", "ixg", "intgrad", "gradcam", "gradcam++", "layercam",
           "scorecam", "ablationcam", "occlusion", "rise")
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "ablationcam")
LAYERS = ("input", "middle", "final")
SETTINGS = ("gridpg", "difull")
MODELS = ("vgg11", "resnet18", "digits-vgg11", "digits-resnet18")
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
    images = torch.from_numpy(np.asarray(grid_file.images[:])).to(device)
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
        "agreement": _agreement(case, model, images, labels, cells, timed, our_maps, their_maps, region, device),
    }


def _agreement(case, model, images, labels, cells, timed, ours, theirs, region, device) -> dict[str, Any]:
    """:func:`agreement`; where the maps differ on the CPU, the loop runs once more (untimed) on
    attrcli's channels-last kernels, which tells float32 rounding of the two kernel sets apart
    from a method defined otherwise (``same_kernels``)."""
    found = agreement(case.method, case.layer, ours, theirs, region=region)
    if found["status"] == "differ" and device.type == "cpu":
        with channels_last(model.module, device):
            again = loop_maps(case, images, labels, cells, targets=timed)
        found["same_kernels"] = agreement(case.method, case.layer, ours, again, region=region)
    return found


def bench_model(
    adapter: ModelAdapter, grid_paths: dict[str, Path], plan: Plan, work: Path, device: torch.device, log: Log,
) -> list[dict[str, Any]]:
    """Every (setting, layer, method) of one model, then a *together* row per setting."""
    rows: list[dict[str, Any]] = []
    for setting_name in plan.settings:
        setting = create_setting(setting_name, adapter, N)
        grid_path = grid_paths[setting.variant]
        grid_file = load_grid_file(grid_path)
        images = torch.from_numpy(np.asarray(grid_file.images[:])).to(device)
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
        rows.append(together(adapter, setting_name, grid_path, mine, shapes, plan, work, device))
        r = rows[-1]
        log(f"{adapter.name:15s} {setting_name:6s} together: attrcli {r['attrcli_s']:.2f}s in {r['calls']} "
            f"call(s) (keys one by one {r['attrcli_separate_s']:.2f}s), loop {r['loop_s']:.2f}s, x{r['speedup']:.2f}")
    return rows


def together(
    adapter: ModelAdapter, setting_name: str, grid_path: Path, keys: list[dict[str, Any]],
    shapes: dict[str, tuple[int, int, int]], plan: Plan, work: Path, device: torch.device,
) -> dict[str, Any]:
    """All keys of one setting in the fewest ``attribute`` calls (as a user runs the study): one
    call for the specs shared by every layer, one per layer for specs that differ by layer, one per
    layer for the channel-capped view. attrcli shares passes across the keys of a call."""
    calls: list[tuple[ModelAdapter, list[str], list[str]]] = []
    plain = [k for k in keys if not k["channels_capped"]]
    by_layer = {layer: [k["spec"] for k in plain if k["layer"] == layer] for layer in plan.layers}
    shared = [spec for spec in by_layer[plan.layers[0]] if all(spec in specs for specs in by_layer.values())]
    if shared:
        calls.append((adapter, list(plan.layers), shared))
    for layer, specs in by_layer.items():
        rest = [spec for spec in specs if spec not in shared]
        if rest:
            calls.append((adapter, [layer], rest))
        cut = [k for k in keys if k["channels_capped"] and k["layer"] == layer]
        if cut:
            view = capped(adapter, layer, cut[0]["channels"], shapes[layer][0])
            calls.append((view, [layer], [k["spec"] for k in cut]))
    start = time.perf_counter()
    for model, layers, specs in calls:
        attribute(
            grids=grid_path, setting=setting_name, model=model, layers=layers, methods=specs, device=device,
            batch_size=plan.batch_size, force=True, cache_root=work / "cache", seed=plan.seed,
        )
    ours_s = time.perf_counter() - start
    loop_s, separate_s = sum(k["loop_s"] for k in keys), sum(k["attrcli_s"] for k in keys)
    return {
        "model": adapter.name, "setting": setting_name, "layer": "all", "method": "together",
        "calls": len(calls), "attrcli_s": ours_s, "attrcli_separate_s": separate_s, "loop_s": loop_s,
        "speedup": loop_s / ours_s, "sharing": separate_s / ours_s,
        "attributions": sum(k["attributions"] for k in keys),
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
    retain_freed_memory()  # as attribute sets it on the CPU; from the start, so the loop has it too
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
    print(markdown(finite(report)).split("\n\n| model | setting")[0])
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
