"""Benchmark: perturbation methods (occlusion, RISE, Score-CAM, Ablation-CAM) against their floor.

Issue "Perturbation and ablation methods" bars:

- speed: at the middle and final layers a method costs no more than 1.3× the forward passes of
  the network after the layer that it needs. The *floor* replays exactly those passes (same
  number, same shapes, same layer; recorded from the method's own run) on ready-made tensors,
  with no mask making or bookkeeping. Also reported: the *whole-network* baseline, which runs
  prefix and suffix on the whole grid image for every perturbation and every target (as a
  per-target loop with a hook at the layer would), timed on a few batches and scaled to the
  count; ``speedup_vs_whole`` is that time over the method's.
- timing: CPU time of the process with one torch thread (``--threads``), so that other work on
  the machine does not move the ratios; wall time on CUDA. Medians of at least ``--repeats`` runs
  (more in short cases, until the method has run a second), method and floor interleaved.
  Everything runs with the convolution weights in channels-last layout on the CPU, as
  ``attribute`` runs them (:func:`attrcli.engine.attribute.channels_last`), and under its CPU
  allocator policy (:mod:`attrcli.engine.allocator`): without it glibc returns freed batches to
  the system and faults them back in, which cost occlusion up to 1.3× its floor.
- memory: the peak resident memory of RISE with 6000 masks and of Score-CAM at a 512-channel
  layer stay within 1.5× of the same run with 1000 masks / at a 64-channel layer, at equal
  ``--batch-size``. Each memory case runs in a fresh subprocess so its ``ru_maxrss`` is its own;
  ``peak_rss_mib`` is the process peak, ``growth_mib`` the growth during the method beyond one
  full batch of the forward passes it makes (run just before).

Models have random weights (timing and memory do not depend on them): ``digits-vgg11``'s
architecture on 2×2 grids of 32-pixel cells for speed, and the same VGG topology at width 64
(64 channels at ``features.1``, 512 at ``features.14``) for the Score-CAM memory case.

    python benchmarks/bench_perturbation.py          # table on stdout, JSON in benchmarks/out/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from attrcli.engine.allocator import retain_freed_memory
from attrcli.engine.attribute import channels_last

OUT = Path(__file__).parent / "out" / "bench_perturbation.json"
N, BATCH, MEMORY_BATCH = 2, 32, 16
MIN_SECONDS = 1.0  # short cases repeat until the method has run this long
METHODS = ("occlusion", "rise:masks=250", "ablationcam", "scorecam")


def _model(width: int = 16):
    from attrcli.models import MODELS
    from attrcli.models.digits import DigitsVGG

    spec = MODELS.get("digits-vgg11")
    torch.manual_seed(0)
    module = DigitsVGG(width=width) if width != 16 else spec.factory()
    return spec.adapter(module)


def _context(model, setting_name: str, layer: str, grids: int | None, batch_size: int, device: torch.device):
    """A context of ``grids`` grid images, by default as many as the engine puts in one chunk."""
    from attrcli.engine.context import AttributionContext
    from attrcli.settings import create_setting

    setting = create_setting(setting_name, model, N)
    if grids is None:
        targets = len(setting.default_cells())
        grids = batch_size if setting.disconnected else max(1, batch_size // targets)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(grids, 3, N * model.cell_size, N * model.cell_size, generator=gen).to(device)
    labels = torch.randint(0, model.num_classes, (grids, N * N), generator=gen).to(device)
    ctx = AttributionContext(
        setting=setting, x=x, targets=setting.targets(labels, setting.default_cells()), layer=layer,
        layer_index=model.layer_index(layer), batch_size=batch_size,
    )
    _ = ctx.activations  # the prefix runs once per batch, shared by every method of the layer
    return ctx


def _record(method, ctx) -> list[tuple[bool, tuple[int, ...], int, bool]]:
    """The forward passes a method makes: (connected, rows shape, layer index, softmax)."""
    from attrcli.methods import _perturb

    calls = []
    original = _perturb.evaluate

    def spy(ctx, rows, classes, *, layer_index, softmax=False):
        calls.append((not ctx.setting.disconnected, tuple(rows.shape), layer_index, softmax))
        return original(ctx, rows, classes, layer_index=layer_index, softmax=softmax)

    _perturb.evaluate = spy
    try:
        method.attribute(ctx)
    finally:
        _perturb.evaluate = original
    return calls


def _clock(device: torch.device) -> float:
    """CPU time of this process on the CPU (robust to other processes' load), wall time on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _replay(ctx, calls) -> float:
    """Seconds for the recorded forward passes alone, on ready-made rows of the same data."""
    model = ctx.setting.model
    sources = {ctx.layer_index: ctx.activations, -1: ctx.setting.split(ctx.x)}
    inputs = {}
    for _, shape, index, _ in calls:
        source = sources[index]
        inputs[shape, index] = source[torch.arange(shape[0], device=ctx.device) % len(source)]
    start = _clock(ctx.device)
    with torch.no_grad():
        for connected, shape, index, softmax in calls:
            rows = inputs[shape, index]
            logits = ctx.setting.suffix(rows, index) if connected else model.head(model.run_blocks(rows, index))
            if softmax:
                logits.softmax(-1)
    return _clock(ctx.device) - start


def _whole_network(ctx, calls, batch_size: int, sample_batches: int = 5) -> float:
    """Seconds to run the whole network on the whole grid for every perturbation and target."""
    setting, T = ctx.setting, ctx.targets.count
    forwards = sum(shape[0] * (T if connected else 1) for connected, shape, _, _ in calls)
    x = ctx.x[:1].expand(batch_size, *ctx.x.shape[1:]).contiguous()
    with torch.no_grad():
        setting.forward(x)
        times = []
        for _ in range(sample_batches):
            start = _clock(ctx.device)
            setting.forward(x)
            times.append(_clock(ctx.device) - start)
    return statistics.median(times) / batch_size * forwards


def speed_case(model, setting: str, layer: str, spec: str, device: torch.device, repeats: int) -> dict:
    from attrcli.methods import parse_method

    ctx = _context(model, setting, layer, None, BATCH, device)
    method = parse_method(spec).build(cell_size=model.cell_size, layer=layer)
    calls = _record(method, ctx)
    method_times, floor_times = [], []
    while len(method_times) < repeats or sum(method_times) < MIN_SECONDS:
        start = _clock(device)
        method.attribute(ctx)  # background load hits method and floor alike
        method_times.append(_clock(device) - start)
        floor_times.append(_replay(ctx, calls))
    seconds, floor = statistics.median(method_times), statistics.median(floor_times)
    whole = _whole_network(ctx, calls, BATCH)
    return {
        "setting": setting, "layer": layer, "method": spec, "config": repr(method.config),
        "forward_passes": len(calls), "rows": sum(shape[0] for _, shape, _, _ in calls),
        "seconds": seconds, "floor_seconds": floor, "ratio_to_floor": seconds / floor,
        "whole_network_seconds": whole, "speedup_vs_whole": whole / seconds,
        "repeats": len(method_times), "grids": ctx.grids,
        "attributions_per_second": ctx.grids * ctx.targets.count / seconds,
    }


def memory_worker(case: str, device: str) -> dict:
    """One memory measurement in this process (``rise:<masks>`` or ``scorecam:<layer>``)."""
    from attrcli.methods import parse_method

    name, _, value = case.partition(":")
    dev = torch.device(device)
    torch.set_num_threads(1)
    if dev.type == "cpu":
        retain_freed_memory()
    if name == "rise":
        model, layer, spec = _model(), "middle", f"rise:masks={value}"
    else:
        model, layer, spec = _model(width=64), value, "scorecam"
    model.to(dev)
    stack = contextlib.ExitStack()
    stack.enter_context(channels_last(model.module, dev))
    ctx = _context(model, "gridpg", layer, 2, MEMORY_BATCH, dev)
    method = parse_method(spec).build(cell_size=model.cell_size, layer=layer)
    with torch.no_grad():  # one full batch of the passes the method makes, so growth is its own
        if name == "rise":
            ctx.suffix_logits(ctx.activations[:1].expand(MEMORY_BATCH, *ctx.activations.shape[1:]).clone())
        else:
            ctx.setting.forward(ctx.x[:1].expand(MEMORY_BATCH, *ctx.x.shape[1:]).clone())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    method.attribute(ctx)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": case, "channels": int(ctx.activations.shape[1]), "peak_rss_mib": peak,
        "growth_mib": max(0.0, peak - before), "seconds": seconds,
    }


def _memory(case: str, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-case", case, "--device", device],
        check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time is stable)")
    parser.add_argument("--layers", default="middle,final")
    parser.add_argument("--settings", default="gridpg,difull,dipart")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(memory_worker(args.memory_case, args.device)))
        return
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        retain_freed_memory()  # as attribute runs on the CPU; method and floor alike
    model = _model().to(device)
    speed = []
    for setting in args.settings.split(","):
        for layer in args.layers.split(","):
            for spec in METHODS:
                with channels_last(model.module, device):
                    row = speed_case(model, setting, layer, spec, device, args.repeats)
                speed.append(row)
                print(
                    f"{setting:7s} {layer:6s} {spec:15s} {row['seconds']:7.3f}s  floor {row['floor_seconds']:7.3f}s"
                    f"  ratio {row['ratio_to_floor']:.2f}  vs whole network x{row['speedup_vs_whole']:.1f}",
                    file=sys.stderr,
                )
    memory = {}
    if not args.skip_memory:
        pairs = {"rise": ("rise:1000", "rise:6000"), "scorecam": ("scorecam:features.1", "scorecam:features.14")}
        for name, (small, large) in pairs.items():
            a, b = _memory(small, args.device), _memory(large, args.device)
            memory[name] = {"small": a, "large": b, "peak_ratio": b["peak_rss_mib"] / a["peak_rss_mib"]}
            print(f"memory {name}: {a['peak_rss_mib']:.0f} -> {b['peak_rss_mib']:.0f} MiB peak "
                  f"(x{memory[name]['peak_ratio']:.2f}), growth {a['growth_mib']:.0f} -> {b['growth_mib']:.0f} MiB",
                  file=sys.stderr)
    result = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": BATCH, "n": N, "model": "digits-vgg11 (random weights)",
        "load_average": os.getloadavg(), "speed": speed, "memory": memory,
        "max_ratio_to_floor": max(r["ratio_to_floor"] for r in speed),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(OUT)


if __name__ == "__main__":
    main()
