"""Benchmark: incremental occlusion against the plain path (issue 17, part 1).

Occlusion at ``input`` and ``middle`` on vgg11 and resnet18 (random weights) on 448-pixel grids
(2×2 cells of 224 pixels), in each setting, with the layer's preset window (K=16, s=8 at the input;
K=5, s=2 in the middle). Both paths run on the same context in the same process, one after the
other: the incremental one (:mod:`attrcli.methods._incremental`, the default) and the plain one
(``attrcli.methods.occlusion.INCREMENTAL = False``: every occluded map runs through the whole
network after the layer). Reported per case: CPU seconds of each, their ratio ``speedup`` (plain
over incremental), the evaluations made, and the largest difference of the two maps relative to
the largest map value (float32). Goal: ≥ 4× at the input, never below 1×.

Timing is the CPU time of the process with one torch thread (``--threads``), so that other work
on the machine moves the ratios little; wall time on CUDA. Everything runs as ``attribute`` runs
it: convolution weights channels-last on the CPU, freed memory kept for the next batch. The
layer's activations are computed before either path is timed (the engine shares them between
methods).

``--quick``: one grid and a stride that leaves about ``--windows`` windows per axis (same
window size, so each evaluation costs what it costs at the preset stride), to check the script
and get indicative ratios on a busy machine. The full run (preset strides: 3,249 windows per
grid at the input) takes hours for the plain path on vgg11.

    python benchmarks/bench_occlusion.py --quick     # table on stderr, JSON in benchmarks/out/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from attrcli.engine.allocator import retain_freed_memory
from attrcli.engine.attribute import channels_last
from attrcli.methods import occlusion
from attrcli.methods.occlusion import Occlusion, OcclusionConfig

OUT = Path(__file__).parent / "out" / "bench_occlusion.json"
N = 2  # grids of 2×2 cells: 448 pixels for the ImageNet models' 224-pixel cells


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _context(model, setting_name: str, layer: str, grids: int, batch_size: int, device: torch.device):
    from attrcli.engine.context import AttributionContext
    from attrcli.settings import create_setting

    setting = create_setting(setting_name, model, N)
    gen = torch.Generator().manual_seed(0)
    size = N * model.cell_size
    x = torch.randn(grids, 3, size, size, generator=gen, dtype=next(model.module.parameters()).dtype).to(device)
    labels = torch.randint(0, model.num_classes, (grids, N * N), generator=gen).to(device)
    ctx = AttributionContext(
        setting=setting, x=x, targets=setting.targets(labels, setting.default_cells()), layer=layer,
        layer_index=model.layer_index(layer), batch_size=batch_size,
    )
    _ = ctx.evaluated  # shared by every method of the layer: not part of either path's time
    return ctx


def _timed(config: OcclusionConfig, ctx, incremental: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    occlusion.INCREMENTAL = incremental
    try:
        start = _clock(device)
        maps = Occlusion(config).attribute(ctx)
        return _clock(device) - start, maps
    finally:
        occlusion.INCREMENTAL = True


def case(model, setting: str, layer: str, args, device: torch.device) -> dict:
    preset = Occlusion.preset(cell_size=model.cell_size, layer=layer)
    ctx = _context(model, setting, layer, args.grids, args.batch_size, device)
    size = ctx.setting.to_map(ctx.evaluated[: ctx.units_per_grid]).shape[-1]
    stride = max(preset.s, size // args.windows) if args.quick else preset.s
    config = OcclusionConfig(k=preset.k, s=stride)
    windows = len(occlusion.window_starts(size, config.k, config.s, config.scheme)) ** 2
    fast, maps = _timed(config, ctx, True, device)
    plain, expected = _timed(config, ctx, False, device)
    difference = float((maps - expected).abs().max() / expected.abs().max().clamp(min=1e-30))
    return {
        "model": model.name, "setting": setting, "layer": layer, "map_size": size, "k": config.k,
        "s": config.s, "windows_per_grid": windows, "grids": ctx.grids, "incremental_s": fast,
        "plain_s": plain, "speedup": plain / fast, "max_relative_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time is stable)")
    parser.add_argument("--models", default="vgg11,resnet18")
    parser.add_argument("--settings", default="gridpg,dipart,difull")
    parser.add_argument("--layers", default="input,middle")
    parser.add_argument("--grids", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a large stride: about --windows windows per axis")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--cache-dir", default=os.environ.get("ATTRCLI_CACHE", "/tmp/attrcli-bench-cache"))
    args = parser.parse_args()
    from attrcli.models.registry import create_model

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        retain_freed_memory()
    rows = []
    load_before = os.getloadavg()
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, weights="random", device=device, cache_dir=args.cache_dir)
        for setting in args.settings.split(","):
            for layer in args.layers.split(","):
                with channels_last(model.module, device):
                    row = case(model, setting, layer, args, device)
                rows.append(row)
                print(
                    f"{name:9s} {setting:7s} {layer:6s} k={row['k']} s={row['s']:3d}"
                    f" {row['windows_per_grid']:5d} windows"
                    f"  incremental {row['incremental_s']:8.2f}s  plain {row['plain_s']:8.2f}s"
                    f"  x{row['speedup']:.2f}  max rel diff {row['max_relative_difference']:.1e}",
                    file=sys.stderr,
                )
    result = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "quick": args.quick, "n": N, "batch_size": args.batch_size,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cases": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(OUT)


if __name__ == "__main__":
    main()
