"""Synthetic artifacts for the figure tests, written as docs/artifacts.md describes (no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from attrcli.store import ArtifactKey, write_artifact

CACHE = Path("cache")


def load_fakes():
    """``tests/metrics/fakes.py`` (grid files, attribution artifacts) loaded by path."""
    path = Path(__file__).parents[1] / "metrics" / "fakes.py"
    spec = importlib.util.spec_from_file_location("attrcli_analysis_fakes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_scores(
    root: Path,
    scores: np.ndarray,
    *,
    setting: str = "gridpg",
    model: str = "digits-vgg11",
    layer: str = "input",
    method: str = "grad",
    grids: str = "toy",
    n: int = 2,
    cells: list[int] | None = None,
    grids_hash: str = "h" * 64,
    intervals: np.ndarray | None = None,
    confidence: float = 0.95,
) -> Path:
    """A score artifact holding ``scores`` (N, T), and ``intervals`` (3, 2) if given."""
    scores = np.asarray(scores, dtype=np.float64)
    count, targets = scores.shape
    cells = list(range(targets)) if cells is None else cells
    key = ArtifactKey("scores", grids, setting, model, layer, method)
    data = {
        "scores": scores,
        "numerators": scores * 10.0,
        "grid_index": np.arange(count, dtype=np.int64),
        "cells": np.asarray(cells, dtype=np.int64),
        "heads": np.zeros(targets, dtype=np.int64),
    }
    attrs = {
        "grids": grids,
        "setting": setting,
        "model": model,
        "layer": layer,
        "method": method,
        "n": n,
        "image_size": 32 * n,
        "grids_hash": grids_hash,
    }
    if intervals is not None:
        data["intervals"] = np.asarray(intervals, dtype=np.float64)
        attrs.update(interval_statistics=["median", "mean", "perfect"], confidence=confidence)
    return write_artifact(key.path(root), data=data, attrs=attrs)


def assert_drawn(path: Path) -> np.ndarray:
    """The PNG at ``path`` has content: not one flat colour, and not a blank white canvas."""
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.02
    assert (pixels[..., :3] < 0.9).mean() > 0.005
    return pixels


def texts(fig) -> list[str]:
    """Every text drawn anywhere in the figure (titles, labels, ticks, legends, annotations)."""
    found = []
    for artist in fig.findobj():
        get = getattr(artist, "get_text", None)
        if callable(get) and artist.get_visible():
            value = get()
            if value:
                found.append(value)
    return found


def bump_maps(count: int = 20, *, targets: int = 4, size: int = 8, strength: float = 1.0,
              seed: int = 0) -> np.ndarray:
    """Noise maps (count, targets, size, size) with a bump of ``strength`` on each target's cell."""
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((count, targets, size, size))
    half = size // 2
    for t in range(targets):
        r, c = divmod(t if targets == 4 else (0, 3)[t], 2)
        maps[:, t, r * half : (r + 1) * half, c * half : (c + 1) * half] += strength
    return maps


def aggatt_study(fakes, *, layers=("input", "final"), methods=("gradcam", "grad"),
                 cell: int = 0, count: int = 20) -> dict:
    """A grid file and AggAtt artifacts (through the real ``aggatt`` stage) per layer and method."""
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(Path("data/grids/toy.h5"), count=count)
    attributions = {}
    for i, layer in enumerate(layers):
        for j, method in enumerate(methods):
            attributions[layer, method] = fakes.make_attribution(
                CACHE, bump_maps(count, strength=0.5 + i + j, seed=10 * i + j), grid_path=grid,
                layer=layer, method=method,
            )
    results = aggatt(paths=list(attributions.values()), cell=cell)
    return {"grid": grid, "attributions": attributions,
            "aggatt": {key: r.path for key, r in zip(attributions, results)}}
