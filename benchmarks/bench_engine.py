"""Benchmark: the attribution engine's shared passes against their floors (not a test).

Bars (issue "Settings, layers and the attribution engine"):

- the six single-pass methods (grad, guided-backprop, ixg, gradcam, gradcam++, layercam)
  together at input, middle and final cost at most 2.5x the *floor*: one plain forward+backward
  (gradient of the target logits w.r.t. the input, no parameter gradients) over the replicated
  batch of heads, i.e. B·T rows in gridpg / dipart (each grid image once per target) and the
  B·T target cells in difull (the engine runs only those; the other cells cannot move a head;
  DiFull rows also report the ratio to one forward+backward over every cell, the network's
  whole-grid pass);
- intgrad (20 steps) at the middle layer costs at most 1.2x *its* floor: steps x one
  forward+backward of the network after the layer over the same replicated rows.

The engine time is :func:`attrcli.engine.attribute.compute_maps` on one chunk, everything
included (prefix, shared forward, per-target backward, guided backward, the methods' maps).
Each time is the median of several repetitions after one warm-up round, the cases taking turns
within each repetition, all in one process and one run, so the ratios compare like with like even
on a loaded machine (torch's thread count is left as it is). The intgrad floor is measured as one
forward+backward of the suffix over the replicated rows, times the number of steps; the engine
batches (grid image, step) pairs under the same ``--batch-size`` as the chunk (B grid images). Inputs are random normalised grids: timing does not depend on the content.
Engine and floors run with the convolution weights channels-last on the CPU, as ``attribute``
runs them (:func:`attrcli.engine.attribute.channels_last`), and under its CPU allocator policy
(:mod:`attrcli.engine.allocator`).

    python benchmarks/bench_engine.py            # all four models, writes benchmarks/out/bench_engine.json
    python benchmarks/bench_engine.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from attrcli.engine.allocator import retain_freed_memory
from attrcli.devices import resolve_device
from attrcli.engine.attribute import channels_last, compute_maps, exact_float32
from attrcli.engine.gradients import target_logits
from attrcli.data.gridfile import GridFile
from attrcli.stages.plan import plan_jobs
from attrcli.methods import parse_method
from attrcli.models import create_model
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import GridSetting, Targets, create_setting

OUT = Path(__file__).parent / "out" / "bench_engine.json"
SINGLE_PASS = ("grad", "guided-backprop", "ixg", "gradcam", "gradcam++", "layercam")
LAYERS = ("input", "middle", "final")
SETTINGS = ("gridpg", "difull", "dipart")
# grid images per chunk: the 32-pixel digits models are cheap, a 448-pixel VGG11 pass takes seconds
GRIDS = {"digits-vgg11": 16, "digits-resnet18": 16, "vgg11": 1, "resnet18": 1}


def seconds(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall time and process CPU time of one call (CUDA work included in the wall time)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved(
    cases: dict[str, Callable[[], object]], reps: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU times of each case, the cases taking turns within each repetition (after one
    warm-up round), so that a change of load on a shared machine hits all of them alike."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(reps + 1):
        for name, run in cases.items():
            elapsed, used = seconds(run, device)
            if rep:
                wall[name].append(elapsed)
                cpu[name].append(used)
    return wall, cpu


def replicated(setting: GridSetting, x: torch.Tensor, targets: Targets):
    """The network-layout rows a per-target pass needs: each grid image once per target (DiFull:
    each target's own cell), with the grid image and target of each row."""
    B, T = x.shape[0], targets.count
    grid = torch.arange(B, device=x.device).repeat_interleave(T)
    target = torch.arange(T, device=x.device).repeat(B)
    if setting.disconnected:
        return setting.split(x)[setting.target_rows(targets, B)], grid, target
    return x.repeat_interleave(T, 0), grid, target


def floor_pass(setting: GridSetting, rows: torch.Tensor, targets: Targets, grid, target, layer_index: int) -> None:
    """One plain forward+backward of the network after ``layer_index`` over network-layout rows
    (DiFull: cell rows, each scored by its target's head)."""
    model = setting.model
    with torch.enable_grad():
        h = rows.detach().requires_grad_(True)
        if setting.disconnected:
            logits = model.head(model.run_blocks(h, layer_index))
            values = logits[torch.arange(len(h), device=h.device), targets.classes[grid, target]]
        else:
            values = target_logits(setting.suffix(h, layer_index), targets, grid, target)
        torch.autograd.grad(values.sum(), h)


def grid_pass(setting: GridSetting, x: torch.Tensor, targets: Targets) -> None:
    """DiFull: one plain forward+backward of the setting's network over every cell of the grid
    images (what the bar calls one forward+backward; the engine runs only the target cells)."""
    with torch.enable_grad():
        h = setting.split(x).detach().requires_grad_(True)
        grid = torch.arange(x.shape[0], device=x.device)
        torch.autograd.grad(target_logits(setting.suffix(h, -1), targets, grid, None).sum(), h)


def _jobs(setting: GridSetting, cells: list[int], layers: list[str], methods: list[str]):
    grid_file = GridFile(Path("bench.h5"), "bench", np.empty(0), np.empty(0), setting.n,
                         setting.model.cell_size, setting.variant, setting.model.num_classes, "")
    jobs, _ = plan_jobs(grid_file, setting, cells, layers, [parse_method(m) for m in methods], Path("unused"))
    return jobs


def bench_setting(adapter: ModelAdapter, name: str, grids: int, reps: int, steps: int, device) -> dict:
    setting = create_setting(name, adapter, 2)
    cells = setting.resolve_cells(None)
    g = torch.Generator().manual_seed(0)
    size = 2 * adapter.cell_size
    x = torch.randn(grids, 3, size, size, generator=g).to(device)
    labels = torch.stack([torch.randperm(adapter.num_classes, generator=g)[:4] for _ in range(grids)])
    labels[:, 3] = labels[:, 0]
    labels = labels.to(device)
    targets = setting.targets(labels, cells)
    net_rows, grid, target = replicated(setting, x, targets)
    jobs = _jobs(setting, cells, list(LAYERS), list(SINGLE_PASS))
    middle = adapter.layer_index("middle")
    with torch.no_grad():
        a = adapter.run_blocks(net_rows, -1, middle)
    ig_jobs = _jobs(setting, cells, ["middle"], [f"intgrad:steps={steps}"] if steps != 20 else ["intgrad"])
    cases = {
        "floor": lambda: floor_pass(setting, net_rows, targets, grid, target, -1),
        "engine": lambda: compute_maps(setting, x, labels, cells, jobs, batch_size=grids),
        "suffix": lambda: floor_pass(setting, a, targets, grid, target, middle),
        "intgrad": lambda: compute_maps(setting, x, labels, cells, ig_jobs, batch_size=grids),
    }
    if setting.disconnected:  # the DiFull network on the whole grid: every cell, one backward
        cases["grid"] = lambda: grid_pass(setting, x, targets)
    times, cpu = interleaved(cases, reps, device)
    med = {name: statistics.median(values) for name, values in times.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    fastest = {name: min(values) for name, values in times.items()}
    ratios = [e / f for e, f in zip(times["engine"], times["floor"])]
    ig_ratios = [i / (steps * f) for i, f in zip(times["intgrad"], times["suffix"])]
    return {
        "setting": name,
        "grids": grids,
        "targets": len(cells),
        "floor_rows": int(net_rows.shape[0]),
        "floor_s": med["floor"],
        "single_pass_s": med["engine"],
        "single_pass_ratio": med["engine"] / med["floor"],
        "single_pass_ratio_per_rep": ratios,
        "intgrad_steps": steps,
        "intgrad_floor_s": steps * med["suffix"],
        "intgrad_s": med["intgrad"],
        "intgrad_ratio": med["intgrad"] / (steps * med["suffix"]),
        "intgrad_ratio_per_rep": ig_ratios,
        "single_pass_ratio_of_minima": fastest["engine"] / fastest["floor"],
        "grid_pass_s": med.get("grid"),
        "single_pass_ratio_to_grid_pass": med["engine"] / med["grid"] if "grid" in med else None,
        "intgrad_ratio_of_minima": fastest["intgrad"] / (steps * fastest["suffix"]),
        "cpu_time": {
            "floor_s": med_cpu["floor"],
            "single_pass_ratio": med_cpu["engine"] / med_cpu["floor"],
            "intgrad_floor_s": steps * med_cpu["suffix"],
            "intgrad_ratio": med_cpu["intgrad"] / (steps * med_cpu["suffix"]),
        },
    }


def bench_model(model: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every requested setting of one model; prints one line per setting."""
    digits = model.startswith("digits-")
    adapter = create_model(model, weights=None if digits else "random", device=device, cache_dir=args.cache_dir)
    reps = (2 if digits else 1) if args.quick else (5 if digits else 3)
    grids = args.grids or GRIDS.get(model, 1)
    rows = []
    for name in args.settings.split(","):
        started = time.perf_counter()
        with channels_last(adapter.module, device):
            row = {"model": model, "reps": reps, **bench_setting(adapter, name, grids, reps, args.steps, device)}
        row["wall_s"] = time.perf_counter() - started
        rows.append(row)
        print(
            f"{model:16s} {name:7s} rows {row['floor_rows']:3d}  floor {row['floor_s']:8.3f}s  "
            f"six methods {row['single_pass_s']:8.3f}s  x{row['single_pass_ratio']:.2f}  |  intgrad floor "
            f"{row['intgrad_floor_s']:8.3f}s  intgrad {row['intgrad_s']:8.3f}s  x{row['intgrad_ratio']:.2f}  "
            f"|  cpu-time ratios x{row['cpu_time']['single_pass_ratio']:.2f} x{row['cpu_time']['intgrad_ratio']:.2f}"
            + (f"  |  six methods / whole-grid pass x{row['single_pass_ratio_to_grid_pass']:.2f}"
               if row["single_pass_ratio_to_grid_pass"] else ""),
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(GRIDS), help="comma list of registered models")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (2 instead of 5; 1 for 448-pixel grids)")
    parser.add_argument("--steps", type=int, default=20, help="intgrad steps (fewer can only raise the intgrad ratio: the prefix runs once per chunk)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="where the digits models are (trained on first use)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: leave as is)")
    parser.add_argument("--grids", type=int, default=None, help="grid images per chunk for every model (default: 16 digits, 1 at 448 px)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        retain_freed_memory()  # as attribute runs on the CPU (floors too)
    results = []
    with exact_float32():  # as the engine runs on CUDA: no TF32 (floors and engine alike)
        for model in args.models.split(","):
            results += bench_model(model, args, device)
    report = {
        "bars": {"single_pass_ratio": 2.5, "intgrad_ratio": 1.2},
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
