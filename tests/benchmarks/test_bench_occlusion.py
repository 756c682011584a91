"""The incremental-occlusion benchmark's harness (benchmarks/bench_occlusion.py) on a tiny model:
both paths run on the same context, their maps agree, and the row reports what was run. Nothing
here checks a timing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_occlusion as bench

from attrcli.methods import occlusion
from tests.methods.test_incremental_occlusion import tiny_vgg


@pytest.mark.parametrize("setting", ["gridpg", "difull"])
def test_case_runs_both_paths_and_compares_their_maps(setting, monkeypatch):
    args = argparse.Namespace(quick=True, windows=3, grids=1, batch_size=4)
    taken = []
    for name in ("window_scores", "_plain_scores"):
        original = getattr(occlusion, name)
        monkeypatch.setattr(occlusion, name, lambda *a, _f=original, _n=name, **k: taken.append(_n) or _f(*a, **k))
    row = bench.case(tiny_vgg(), setting, "input", args, torch.device("cpu"))
    assert taken == ["window_scores", "_plain_scores"]  # incremental first, then the plain path
    assert occlusion.INCREMENTAL is True  # the switch is put back
    assert row["k"] == 4 and row["s"] == 32 // 3 and row["map_size"] == 32
    assert row["windows_per_grid"] == len(occlusion.window_starts(32, 4, row["s"], "paper")) ** 2
    assert row["incremental_s"] > 0 and row["plain_s"] > 0 and row["speedup"] > 0
    assert row["max_relative_difference"] < 1e-10  # float64: the same maps
