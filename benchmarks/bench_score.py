"""Benchmark: localization scores of 2,000 maps upsampled to 448 x 448 (the paper's ImageNet size).

Target (issue "Analysis stages"): under 5 s, with peak memory under 1 GiB thanks to chunking.
Each case runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own.
Reported: wall ``seconds``; ``cpu_seconds``, the CPU time of all threads; ``load_average``, which
shows whether other work shared the cores (wall time then grows with it); ``peak_growth_mib``,
the peak memory growth over the process's state just before the computation (torch, the maps
and the artifact already loaded), and ``peak_rss_mib``, the whole process's peak. ``stage``
times the whole ``attrcli.stages.score.score`` call on an artifact file (hash, read, score,
write); ``aggatt`` times the scores plus the AggAtt of the top-left targets.

    python benchmarks/bench_score.py    # prints a table, writes benchmarks/out/bench_score.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "out" / "bench_score.json"
GRID_ROWS, TARGETS, IMAGE_SIZE, N = 500, 4, 448, 2  # 2,000 maps on 2 x 2 grids


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(case: str, side: int) -> dict:
    """One measurement in this process."""
    import torch

    from attrcli.metrics.aggatt import compute_aggatt
    from attrcli.metrics.localization import localization_scores

    rng = np.random.default_rng(0)
    maps = rng.standard_normal((GRID_ROWS, TARGETS, side, side)).astype(np.float32)
    cells = np.arange(TARGETS)
    # warm up torch's kernels on a tiny input so the timing is the steady state
    localization_scores(maps[:2], cells=cells, n=N, image_size=IMAGE_SIZE)
    if case == "stage":
        from attrcli.stages.score import score
        from attrcli.store import ArtifactKey, write_artifact
        from attrcli.store.artifacts import make_provenance

        root = Path(tempfile.mkdtemp())
        path = ArtifactKey("attributions", "bench", "gridpg", "vgg11", "final", "grad").path(root)
        write_artifact(
            path,
            data={
                "maps": maps,
                "grid_index": np.arange(GRID_ROWS),
                "cells": cells,
                "heads": np.zeros(TARGETS, dtype=np.int64),
            },
            attrs={"n": N, "image_size": IMAGE_SIZE},
            provenance=make_provenance(config={}, inputs={"grids": "0"}),
        )
    before = _rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if case == "scores":
        scores, numerators = localization_scores(maps, cells=cells, n=N, image_size=IMAGE_SIZE)
    elif case == "stage":
        score(attribution_paths=[path])
    else:  # aggatt of the top-left targets, scores included
        scores, numerators = localization_scores(maps, cells=cells, n=N, image_size=IMAGE_SIZE)
        compute_aggatt(
            maps, scores=scores, numerators=numerators, cells=cells, cell=0, image_size=IMAGE_SIZE
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "case": case,
        "maps": GRID_ROWS * TARGETS,
        "layer_side": side,
        "image_size": IMAGE_SIZE,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "peak_growth_mib": round(_rss_mib() - before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    results = []
    for case, side in [("scores", 14), ("scores", 28), ("stage", 14), ("aggatt", 14)]:
        run = subprocess.run(
            [sys.executable, __file__, "--worker", case, str(side)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['case']:>7}  {r['maps']} maps {side}x{side} -> {IMAGE_SIZE}: "
            f"{r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU, load {r['load_average']:.1f}), "
            f"peak growth {r['peak_growth_mib']:.0f} MiB (peak RSS {r['peak_rss_mib']:.0f} MiB)"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"target": {"seconds": 5, "memory_mib": 1024}, "results": results}, indent=2)
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
