"""Synthetic grid files and attribution artifacts for the analysis tests (no model involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrcli.store import ArtifactKey, file_hash, write_artifact
from attrcli.store.artifacts import make_provenance


def make_grid_file(
    path: Path, *, count: int = 8, n: int = 2, cell_size: int = 32, seed: int = 0
) -> Path:
    """A small grid file with the datasets and attributes of docs/artifacts.md."""
    rng = np.random.default_rng(seed)
    size = n * cell_size
    return write_artifact(
        path,
        data={
            "images": rng.standard_normal((count, 3, size, size)).astype(np.float32),
            "labels": rng.integers(0, 10, (count, n * n)).astype(np.int64),
            "sources": np.arange(count * n * n, dtype=np.int64).reshape(count, n * n),
        },
        attrs={
            "dataset": "digits",
            "variant": "distinct",
            "n": n,
            "cell_size": cell_size,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "seed": seed,
            "min_conf": 0.99,
            "models": ["digits-vgg11"],
            "per_model": False,
            "reused": 0,
            "class_names": [str(i) for i in range(10)],
        },
    )


def make_attribution(
    root: Path,
    maps: np.ndarray,
    *,
    grid_path: Path,
    setting: str = "gridpg",
    model: str = "digits-vgg11",
    layer: str = "input",
    method: str = "grad",
    cells: list[int] | None = None,
    heads: list[int] | None = None,
    grid_index: np.ndarray | None = None,
    n: int = 2,
    image_size: int | None = None,
) -> Path:
    """Write ``maps`` (N, T, h, w) as an attribution artifact under the cache folder ``root``."""
    maps = np.asarray(maps, dtype=np.float32)
    count, targets = maps.shape[:2]
    cells = list(range(targets)) if cells is None else cells
    heads = [0] * targets if heads is None else heads
    grid_index = np.arange(count) if grid_index is None else grid_index
    key = ArtifactKey("attributions", Path(grid_path).stem, setting, model, layer, method)
    size = image_size or 32 * n
    return write_artifact(
        key.path(root),
        data={
            "maps": maps,
            "grid_index": np.asarray(grid_index, dtype=np.int64),
            "cells": np.asarray(cells, dtype=np.int64),
            "heads": np.asarray(heads, dtype=np.int64),
            "classes": np.zeros((count, targets), dtype=np.int64),
        },
        attrs={
            "grids": key.grids,
            "grid_path": str(grid_path),
            "setting": setting,
            "model": model,
            "layer": layer,
            "layer_module": layer,
            "method": method,
            "n": n,
            "image_size": size,
        },
        provenance=make_provenance(
            config={"method": method, "heads": heads, "batch_size": 4},
            inputs={"grids": file_hash(grid_path), "model": "0" * 64},
        ),
    )
