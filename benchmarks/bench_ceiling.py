"""Benchmark: the multiply-accumulates per second the perturbation methods reach, against the
ceiling of a plain forward pass of the same network and batch shape.

For each perturbation method (Score-CAM, Ablation-CAM, RISE, occlusion), model, setting and
layer, on one thread of the CPU with the engine's numeric set-up
(:func:`attrcli.engine.attribute.computing`: channels-last weights, the allocator policy):

- *method*: the method's maps for one chunk of grid images (:func:`compute_maps` with its job
  alone), CPU time, and the multiply-accumulates it executed (convolutions and matrix products,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` in a separate untimed run: MAC = FLOP/2),
  so ``method GMAC/s`` counts only arithmetic actually done (skipped passes and incremental
  occlusion's saved work do not count);
- *ceiling*: the time the same arithmetic takes in plain forward passes: the prefix up to the
  layer once (as the method computes it), and the rest at the rate of a plain pass of the
  network after the layer (the part a perturbation pass runs; the whole network for Score-CAM,
  which masks the image) on one batch of the shape the method's passes use (``--batch-size``
  grid images: in DiFull ``batch_size · n²`` cell rows), under ``torch.inference_mode``, median
  of at least 3 runs, the better of the contiguous and the channels-last activation layout;
- the *fraction* ceiling time ÷ method time (= method GMAC/s ÷ ceiling GMAC/s). Below 1 is
  bookkeeping (mask making, copies, scatter of scores, the last short batch of a plan) and, for
  incremental occlusion, the lower rate of its small cropped convolutions (it does far fewer
  MACs than full passes would); the gap from the ceiling to the machine's peak is the
  convolution kernels' own.

Models (random weights, nothing downloads): ``vgg11`` and ``resnet18`` on 96-pixel cells, as
``bench_study.py --quick``, Score-CAM / Ablation-CAM on the first 8 channels of middle and final
(``_baseline_work.capped``; same pass shapes and cost). ``--cell-size 224`` for paper scale.

    python benchmarks/bench_ceiling.py            # markdown on stdout, JSON in benchmarks/out/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path(__file__).parent / "out"
N = 2
METHODS = ("scorecam", "ablationcam", "rise:masks=16", "occlusion")
LAYERS = ("input", "middle", "final")
SETTINGS = ("gridpg", "difull")
CHANNEL_METHODS = ("scorecam", "ablationcam")


def counted_macs(run) -> float:
    """Multiply-accumulates of convolutions and matrix products in ``run()``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 2


def cpu_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return statistics.median(times)


def occlusion_spec(map_size: int, windows: int = 4) -> str:
    k = -(-map_size // windows)
    return f"occlusion:k={k},s={k}"


def one_case(adapter, setting_name: str, layer: str, spec: str, batch: int, repeats: int) -> dict:
    from attrcli.data.gridfile import GridFile
    from attrcli.engine.attribute import compute_maps
    from attrcli.methods import parse_method
    from attrcli.settings import create_setting
    from attrcli.stages.plan import plan_jobs

    setting = create_setting(setting_name, adapter, N)
    g = torch.Generator().manual_seed(0)
    size = N * adapter.cell_size
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.stack([torch.randperm(adapter.num_classes, generator=g)[: N * N] for _ in range(batch)])
    if setting.variant == "corners":
        labels[:, -1] = labels[:, 0]
    cells = setting.default_cells()
    grid_file = GridFile(Path("bench.h5"), "bench", np.empty(0), np.empty(0), N, adapter.cell_size,
                         setting.variant, adapter.num_classes, "")
    jobs, _ = plan_jobs(grid_file, setting, cells, [layer], [parse_method(spec)], Path("unused"))

    def method() -> None:
        compute_maps(setting, x, labels, cells, jobs, batch_size=batch)

    method()  # warm-up
    macs = counted_macs(method)
    seconds = cpu_seconds(method, repeats)
    # the ceiling: the passes' network on one batch of their shape
    index = -1 if spec.startswith("scorecam") else adapter.layer_index(layer)
    rows = setting.split(x) if setting.disconnected else x
    with torch.no_grad():
        a = rows if index == -1 else (adapter.run_blocks(rows, -1, index) if setting.disconnected
                                      else setting.prefix(x, index))

    def plain(inputs: torch.Tensor) -> None:
        with torch.inference_mode():
            if setting.disconnected:
                adapter.head(adapter.run_blocks(inputs, index))
            else:
                setting.suffix(inputs, index)

    def prefix() -> None:
        with torch.inference_mode():
            if setting.disconnected:
                adapter.run_blocks(rows, -1, adapter.layer_index(layer))
            else:
                setting.prefix(x, adapter.layer_index(layer))

    prefix()
    prefix_macs = counted_macs(prefix)
    prefix_s = cpu_seconds(prefix, max(repeats, 3))
    best = None
    for layout in (torch.contiguous_format, torch.channels_last):
        inputs = a.contiguous(memory_format=layout) if a.dim() == 4 else a
        plain(inputs)
        plain_macs = counted_macs(lambda: plain(inputs))
        rate = plain_macs / max(cpu_seconds(lambda: plain(inputs), max(repeats, 3)), 1e-9)
        best = rate if best is None else max(best, rate)
    # the same arithmetic in plain passes: the layer's prefix once, the rest at the passes' rate
    ceiling_s = prefix_s + max(macs - prefix_macs, 0.0) / best
    return {"setting": setting_name, "layer": layer, "method": spec, "batch": batch, "method_cpu_s": seconds,
            "method_gmac": macs / 1e9, "prefix_gmac": prefix_macs / 1e9, "passes_gmac_per_s_plain": best / 1e9,
            "ceiling_cpu_s": ceiling_s, "method_gmac_per_s": macs / max(seconds, 1e-9) / 1e9,
            "ceiling_gmac_per_s": macs / max(ceiling_s, 1e-9) / 1e9, "fraction": ceiling_s / max(seconds, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg11")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cell-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ["ATTRCLI_THREADS"] = "1"
    torch.set_num_threads(1)
    import _study_models
    from attrcli.engine.attribute import computing

    rows = []
    for model in args.models.split(","):
        plain = _study_models.build(_study_models.model_name(model, args.cell_size))
        view = _study_models.build(_study_models.model_name(model, args.cell_size, 8))
        sizes = {}
        for layer in args.layers.split(","):
            with torch.no_grad():
                x = torch.zeros(1, 3, N * plain.cell_size, N * plain.cell_size)
                from attrcli.settings import create_setting

                g = create_setting("gridpg", plain, N)
                sizes[layer] = int(g.to_map(g.prefix(x, plain.layer_index(layer))).shape[-1])
        for setting_name in args.settings.split(","):
            for layer in args.layers.split(","):
                for method in args.methods.split(","):
                    name = method.split(":")[0]
                    adapter = view if name in CHANNEL_METHODS and layer != "input" else plain
                    spec = occlusion_spec(sizes[layer]) if name == "occlusion" else method
                    with computing(adapter.module, torch.device("cpu")):
                        row = one_case(adapter, setting_name, layer, spec, args.batch_size, args.repeats)
                    row["model"] = model
                    rows.append(row)
                    print(f"{model:9s} {setting_name:6s} {layer:6s} {spec:24s} {row['method_gmac_per_s']:6.1f} GMAC/s "
                          f"of {row['ceiling_gmac_per_s']:6.1f}: {row['fraction']:.2f}", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_ceiling.json").write_text(json.dumps({"load": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    lines = ["| method | cases | fraction of the ceiling (median) | min | max | method GMAC/s (median) | ceiling GMAC/s (median) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method in dict.fromkeys(r["method"].split(":")[0] for r in rows):
        mine = [r for r in rows if r["method"].split(":")[0] == method]
        f = [r["fraction"] for r in mine]
        lines.append(f"| {method} | {len(mine)} | {statistics.median(f):.2f} | {min(f):.2f} | {max(f):.2f} | "
                     f"{statistics.median(r['method_gmac_per_s'] for r in mine):.1f} | "
                     f"{statistics.median(r['ceiling_gmac_per_s'] for r in mine):.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
