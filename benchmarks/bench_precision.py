"""Benchmark: speed and fidelity of the precision modes against fp32 (issue 17, part 2).

For every key (model, setting, layer, method) the maps of the same grids are computed in each
precision — ``fp32`` and ``bf16`` everywhere, ``tf32`` on CUDA — the way ``attribute`` computes
them (:func:`attrcli.engine.attribute.compute_maps` under
:func:`attrcli.engine.precision.precision_context`, convolution weights channels-last on the
CPU), one key at a time, after one untimed warm-up chunk per precision. Reported per key and
precision: seconds, attributions per second (grid images × targets / s), the speed-up over fp32,
and the agreement with fp32: Spearman correlation of the localization scores (supplement H.3:
positive attribution in the target cell over all positive attribution), the largest score
difference, and the Pearson correlation of the maps (all values of the key). Also, per method,
the geometric-mean speed-up, and the extrapolated time of the paper's ImageNet study from the
attributions per second (``--study-attributions``: attributions per key of the paper's study).

Random weights (nothing is downloaded), random normalised grids; the class labels are random,
which does not change the cost. Run on the GPU machine:

    python benchmarks/bench_precision.py --device cuda --models vgg11,resnet18 --grids 8
    python benchmarks/bench_precision.py --quick       # CPU smoke run on a tiny model
    python benchmarks/bench_precision.py --light --settings gridpg --grids 1   # CPU, affordable

``--light`` swaps the methods that run the model hundreds of times for cheaper configs of the
same code paths (:data:`LIGHT`), for a CPU run; their speed-ups and agreement are indicative, and
the study extrapolation then assumes those configs, not the paper's.

Extrapolation (``study_hours``): the paper's ImageNet study computes 2,000 attributions per key
(supplement H.1: 500 GridPG grids × 4 cells, 1,000 DiFull/DiPart grids × 2 corners) for every
model, setting, layer and method; the time is the sum over the benchmarked keys of 2,000 / the
key's attributions per second, i.e. it assumes the benchmark ran every key of the study (models,
settings, layers, methods; the smoothing sweep is derived from cached maps and costs nothing
here) and that throughput at 2,000 attributions equals that of the benchmarked grids (larger
batches on a GPU only raise it, so the figure is an upper bound there).

Results: JSON in ``benchmarks/out/bench_precision.json``, a line per key on stderr, and markdown
tables (per method, per key) on stdout for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from attrcli.data.gridfile import GridFile
from attrcli.engine.attribute import channels_last, compute_maps
from attrcli.engine.precision import PRECISIONS, precision_context
from attrcli.methods import METHODS, parse_method
from attrcli.metrics.localization import localization_scores
from attrcli.settings import create_setting
from attrcli.stages.plan import plan_jobs

OUT = Path(__file__).parent / "out" / "bench_precision.json"
N = 2
STUDY_ATTRIBUTIONS = 2000  # per key in the paper's ImageNet study (supplement H.1)
#: ``--light``: configs of the model-running methods that a CPU run affords (same code paths).
LIGHT = {
    "rise": "rise:masks=16",
    "occlusion": "occlusion:k=112,s=112",  # input; hidden layers: LIGHT_HIDDEN
    "intgrad": "intgrad:steps=4",
    "smoothgrad-intgrad": "smoothgrad-intgrad:samples=2,steps=2",
    "smoothgrad-ixg": "smoothgrad-ixg:samples=2",
}


#: ``--light`` occlusion at hidden layers (a 56×56 map at the middle of a 448-px grid, 14×14 final).
LIGHT_HIDDEN = {"middle": "occlusion:k=14,s=14", "final": "occlusion"}


def _light(method: str, layer: str) -> str:
    """The ``--light`` config of ``method`` at ``layer``."""
    if method.partition(":")[0] == "occlusion" and layer in LIGHT_HIDDEN:
        return LIGHT_HIDDEN[layer]
    return method


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _model(name: str, device: torch.device):
    if name == "tiny":  # the tests' tiny VGG, for --quick
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from tests.engine.helpers import tiny_vgg

        return tiny_vgg(dtype=torch.float32).to(device)
    from attrcli.models.registry import create_model

    return create_model(name, weights="random", device=device, cache_dir=Path("cache"))


def _jobs(setting, cells, layer: str, method: str):
    grid_file = GridFile(Path("bench.h5"), "bench", np.empty(0), np.empty(0), setting.n,
                         setting.model.cell_size, setting.variant, setting.model.num_classes, "")
    jobs, _ = plan_jobs(grid_file, setting, cells, [layer], [parse_method(method)], Path("unused"))
    return jobs


def _run(setting, x, labels, cells, jobs, precision, device, batch_size) -> tuple[float, dict]:
    with ExitStack() as stack:
        stack.enter_context(precision_context(precision, device, setting.model))
        stack.enter_context(channels_last(setting.model.module, device))
        start = _clock(device)
        maps = compute_maps(setting, x, labels, cells, jobs, batch_size=batch_size)
        seconds = _clock(device) - start
    return seconds, {job: m.detach().float().cpu() for job, m in maps.items()}


def _scores(maps: torch.Tensor, cells: list[int], image_size: int) -> np.ndarray:
    scores, _ = localization_scores(maps.numpy(), cells=np.asarray(cells), n=N, image_size=image_size)
    return scores.ravel()


def _agreement(reference: torch.Tensor, other: torch.Tensor, cells: list[int], size: int) -> dict:
    a, b = reference.flatten().double(), other.flatten().double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item() if a.std() > 0 and b.std() > 0 else float("nan")
    sa, sb = _scores(reference, cells, size), _scores(other, cells, size)
    rho = spearmanr(sa, sb).statistic if np.ptp(sa) > 0 and np.ptp(sb) > 0 else float("nan")
    return {"spearman": float(rho), "max_dscore": float(np.abs(sa - sb).max()), "map_corr": corr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="vgg11,resnet18")
    parser.add_argument("--settings", default="gridpg,difull,dipart")
    parser.add_argument("--layers", default="input,middle,final")
    parser.add_argument("--methods", default="all", help="comma list, or all (every registered non-derived method)")
    parser.add_argument("--grids", type=int, default=8, help="grid images per key")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--study-attributions", type=float, default=STUDY_ATTRIBUTIONS,
                        help="attributions of the paper's study per (model, setting, layer, method), to extrapolate")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed warm-up per key and precision (slow CPU runs)")
    parser.add_argument("--light", action="store_true", help="cheaper configs of the expensive methods (LIGHT), for CPUs")
    parser.add_argument("--quick", action="store_true", help="tiny model, two grids, a few methods, CPU")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.quick:
        args.models, args.grids, args.batch_size, args.device = "tiny", 2, 2, "cpu"
        args.methods, args.layers = "grad,gradcam,occlusion,rise:masks=20", "input,middle"
        args.settings = "gridpg"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = [p for p in PRECISIONS if p != "tf32" or device.type == "cuda"]
    methods = (
        [m for m in METHODS.names() if METHODS.get(m).kind != "derived"]
        if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    if args.light:
        methods = [LIGHT.get(m, m) for m in methods]
    rows = []
    for model_name in args.models.split(","):
        model = _model(model_name, device)
        size = N * model.cell_size
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.grids, 3, size, size, generator=g).to(device)
        labels = torch.stack([torch.randperm(model.num_classes, generator=g)[: N * N] for _ in range(args.grids)]).to(device)
        for setting_name in args.settings.split(","):
            setting = create_setting(setting_name, model, N)
            cells = setting.resolve_cells(None)
            for layer in args.layers.split(","):
                for listed in methods:
                    method = _light(listed, layer) if args.light else listed
                    jobs = _jobs(setting, cells, layer, method)
                    if not jobs:  # not applicable to this model or layer
                        continue
                    found: dict[str, tuple[float, torch.Tensor]] = {}
                    for precision in precisions:
                        if not args.no_warmup:
                            _run(setting, x[:1], labels[:1], cells, jobs, precision, device, args.batch_size)
                        seconds, maps = _run(setting, x, labels, cells, jobs, precision, device, args.batch_size)
                        found[precision] = (seconds, next(iter(maps.values())))
                    base_seconds, base_maps = found["fp32"]
                    for precision, (seconds, maps) in found.items():
                        row = {
                            "model": model_name, "setting": setting_name, "layer": layer, "method": listed, "config": method,
                            "precision": precision, "seconds": seconds,
                            "attributions_per_s": args.grids * len(cells) / seconds,
                            "speedup": base_seconds / seconds,
                            **_agreement(base_maps, maps, cells, size),
                        }
                        rows.append(row)
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.with_suffix(".partial.json").write_text(json.dumps(rows))
                        print(
                            f"{model_name:9} {setting_name:6} {layer:6} {method:18} {precision:4} "
                            f"{seconds:8.3f}s {row['attributions_per_s']:9.1f}/s ×{row['speedup']:5.2f} "
                            f"ρ={row['spearman']:.4f} max|Δs|={row['max_dscore']:.4f} r={row['map_corr']:.4f}",
                            file=sys.stderr, flush=True,
                        )
    summary = {}
    for precision in precisions:
        for method in methods:
            ups = [r["speedup"] for r in rows if r["precision"] == precision and r["method"] == method]
            if ups:
                summary[f"{precision}/{method}"] = _geomean(ups)
    study = {}
    if args.study_attributions:
        for precision in precisions:
            mine = [r for r in rows if r["precision"] == precision]
            study[precision] = sum(args.study_attributions / r["attributions_per_s"] for r in mine) / 3600
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "grids": args.grids, "batch_size": args.batch_size, "rows": rows,
        "geomean_speedup": summary, "study_hours": study,
    }, indent=1))
    for name, value in summary.items():
        print(f"geomean speed-up {name}: ×{value:.2f}", file=sys.stderr)
    for precision, hours in study.items():
        print(f"extrapolated study ({precision}): {hours:.2f} h", file=sys.stderr)
    print(markdown(rows, methods, precisions, study, len(rows) // max(1, len(precisions))))


def _geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"  # NaN: a constant score or map


def markdown(rows: list[dict], methods: list[str], precisions: list[str], study: dict, keys: int) -> str:
    """Tables for RESULTS.md: per method and precision (geometric-mean speed-up, attributions/s,
    worst agreement over its keys), then per key."""
    header = ("| method | precision | keys | speed-up (geomean) | attributions/s (median) | Spearman (min) | "
              r"max \|Δscore\| | map corr (min) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for precision in precisions:
            mine = [r for r in rows if r["method"] == method and r["precision"] == precision]
            if not mine:
                continue
            rho = [r["spearman"] for r in mine if r["spearman"] == r["spearman"]]
            corr = [r["map_corr"] for r in mine if r["map_corr"] == r["map_corr"]]
            lines.append(
                f"| {method} | {precision} | {len(mine)} | ×{_geomean([r['speedup'] for r in mine]):.2f} | "
                f"{np.median([r['attributions_per_s'] for r in mine]):.2f} | {_fmt(min(rho) if rho else float('nan'))} | "
                f"{max(r['max_dscore'] for r in mine):.4f} | {_fmt(min(corr) if corr else float('nan'), 4)} |"
            )
    lines += ["", r"| model | setting | layer | method | precision | s | speed-up | Spearman | max \|Δscore\| | map corr |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["precision"] == "fp32":
            continue
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['layer']} | {r['config']} | {r['precision']} | {r['seconds']:.2f} | "
            f"×{r['speedup']:.2f} | {_fmt(r['spearman'])} | {r['max_dscore']:.4f} | {_fmt(r['map_corr'], 4)} |"
        )
    if study:
        lines += ["", f"Extrapolated study time over these {keys} keys at {STUDY_ATTRIBUTIONS} attributions per key: "
                  + ", ".join(f"{p} {h:.2f} h" for p, h in study.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
