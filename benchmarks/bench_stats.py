"""Benchmark: bootstrap intervals of localization scores (issue 16); a cached rerun is free.

Target: intervals (median, mean, share of perfect scores) for 2,000 scores with 2,000 resamples
in well under a second per key; a rerun of ``score`` that is up to date computes nothing.

Reported:

- ``intervals``: :func:`attrcli.metrics.intervals.score_intervals` alone on 2,000 scores shaped
  as the paper's keys (500 GridPG grids x 4 heads, 1,000 DiFull grids x 2 heads), percentile and
  BCa, median seconds per key over ``--keys`` keys;
- ``stage``: the ``score`` stage on ``--keys`` attribution artifacts of 2,000 maps each (digits
  sizes: 8 x 8 maps on 64-pixel grids), first run (scores and intervals), a run with another
  interval config (intervals only, from the stored scores), and an up-to-date rerun, with the
  number of score and interval computations each made (counted by wrapping the functions);
- ``correlate`` and ``compare``: the Spearman intervals of 11 keys (square matrix) and the paired
  comparison of 11 keys (55 pairs), the matrix forms of one layer, each for 2,000 scores per key.

``wall`` is wall time, ``cpu`` the process's CPU time, ``load`` the 1-minute load average (other
work on the machine stretches wall time).

    python benchmarks/bench_stats.py    # prints a table, writes benchmarks/out/bench_stats.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "out" / "bench_stats.json"
SCORES, RESAMPLES = 2000, 2000


def _timed(call) -> tuple[object, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    value = call()
    return value, time.perf_counter() - start, time.process_time() - cpu


def _scores(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.beta(2, 3, size=shape) + 0.2 * rng.random((shape[0], 1)), 0, 1)


def bench_intervals(keys: int) -> list[dict]:
    from attrcli.metrics.intervals import BootstrapConfig, score_intervals

    rows = []
    score_intervals(_scores((50, 4), 0), BootstrapConfig(resamples=100))  # warm up
    for method in ("percentile", "bca"):
        for grids, heads in ((500, 4), (1000, 2)):
            config = BootstrapConfig(resamples=RESAMPLES, method=method)
            times = [_timed(lambda: score_intervals(_scores((grids, heads), k), config))[1:]
                     for k in range(keys)]
            rows.append({
                "case": "intervals", "method": method, "grids": grids, "heads": heads,
                "scores": grids * heads, "resamples": RESAMPLES, "keys": keys,
                "wall_per_key": round(statistics.median(t[0] for t in times), 4),
                "cpu_per_key": round(statistics.median(t[1] for t in times), 4),
            })
    return rows


def _attribution(root: Path, method: str, seed: int) -> Path:
    from attrcli.store import ArtifactKey, write_artifact
    from attrcli.store.artifacts import make_provenance

    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((500, 4, 8, 8)).astype(np.float32)
    for t in range(4):
        r, c = divmod(t, 2)
        maps[:, t, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.5 + 0.2 * seed
    key = ArtifactKey("attributions", "bench", "gridpg", "digits-vgg11", "input", method)
    return write_artifact(
        key.path(root),
        data={"maps": maps, "grid_index": np.arange(500), "cells": np.arange(4),
              "heads": np.zeros(4, dtype=np.int64), "classes": np.zeros((500, 4), dtype=np.int64)},
        attrs={"n": 2, "image_size": 64, "grid_path": ""},
        provenance=make_provenance(config={}, inputs={"grids": "0" * 64}),
    )


def bench_stage(keys: int) -> list[dict]:
    from attrcli.stages import score as score_stage
    from attrcli.metrics.intervals import BootstrapConfig

    calls = {"localization_scores": 0, "score_intervals": 0}
    for name in calls:
        original = getattr(score_stage, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(score_stage, name, counted)
    root = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    paths = [_attribution(root, f"m{i}", i) for i in range(keys)]
    rows = []
    for run, config in (
        ("first run", BootstrapConfig()),
        ("interval config changed", BootstrapConfig(confidence=0.9, seed=1)),
        ("up to date", BootstrapConfig(confidence=0.9, seed=1)),
    ):
        before = dict(calls)
        results, wall, cpu = _timed(
            lambda: score_stage.score(attribution_paths=paths, bootstrap=config))
        rows.append({
            "case": "stage", "run": run, "keys": keys, "scores_per_key": SCORES,
            "statuses": sorted({r.status for r in results}),
            "wall_per_key": round(wall / keys, 4), "cpu_per_key": round(cpu / keys, 4),
            "score_computations": calls["localization_scores"] - before["localization_scores"],
            "interval_computations": calls["score_intervals"] - before["score_intervals"],
        })
    return rows


def bench_cross(keys: int = 11) -> list[dict]:
    from attrcli.metrics.intervals import BootstrapConfig, compare_keys, spearman_intervals

    scores = np.stack([_scores((500, 4), k) for k in range(keys)])
    config = BootstrapConfig(resamples=RESAMPLES)
    _, wall, cpu = _timed(lambda: spearman_intervals(scores, None, config))
    rows = [{"case": "correlate", "keys": keys, "scores_per_key": SCORES, "resamples": RESAMPLES,
             "wall": round(wall, 3), "cpu": round(cpu, 3)}]
    _, wall, cpu = _timed(lambda: compare_keys(scores, config))
    rows.append({"case": "compare", "keys": keys, "pairs": keys * (keys - 1) // 2,
                 "scores_per_key": SCORES, "resamples": RESAMPLES, "wall": round(wall, 3),
                 "cpu": round(cpu, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5, help="Keys per measured case.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = bench_intervals(args.keys) + bench_stage(args.keys) + bench_cross()
    load = round(os.getloadavg()[0], 2)
    for r in results:
        if r["case"] == "intervals":
            print(f"intervals  {r['method']:>10}  {r['grids']} grids x {r['heads']} heads, "
                  f"{r['resamples']} resamples: {r['wall_per_key']:.3f} s per key "
                  f"({r['cpu_per_key']:.3f} s CPU)")
        elif r["case"] == "stage":
            print(f"score      {r['run']:>23}: {r['wall_per_key']:.3f} s per key "
                  f"({', '.join(r['statuses'])}; {r['score_computations']} score and "
                  f"{r['interval_computations']} interval computations)")
        else:
            print(f"{r['case']:<10} {r['keys']} keys x {r['scores_per_key']} scores: "
                  f"{r['wall']:.2f} s ({r['cpu']:.2f} s CPU)")
    print(f"load average {load}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"target": {"seconds_per_key": 1.0}, "load_average": load,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
