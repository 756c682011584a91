"""Reading grid files for the engine, with the checks a setting and model need.

Images are read a chunk at a time (:class:`GridImages`), so memory stays bounded by
``--batch-size`` however large the grid file (1,000 ImageNet grids are 2.4 GB of float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.store import file_hash, read_artifact


class GridImages:
    """The ``images`` dataset of a grid file, read on indexing: ``images[rows]`` is float32."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        with h5py.File(self.path, "r") as handle:
            return np.asarray(handle["images"][index], dtype=np.float32)


@dataclass
class GridFile:
    """A grid file as the engine uses it."""

    path: Path
    name: str
    images: GridImages | np.ndarray  # (N, 3, n·c, n·c) float32, normalised
    labels: np.ndarray  # (N, n²)
    n: int
    cell_size: int
    variant: str
    num_classes: int
    hash: str

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def load_grid_file(path: Path | str) -> GridFile:
    """Read a grid file written by ``make-grids``."""
    path = Path(path)
    artifact = read_artifact(path, names=["labels"])
    attrs = artifact.attrs
    missing = [k for k in ("n", "cell_size", "variant") if k not in attrs]
    if missing:
        raise UserError(f"{path} is not a grid file (no {', '.join(missing)}); make one with make-grids")
    try:
        with h5py.File(path, "r") as handle:
            images = GridImages(path, tuple(handle["images"].shape))
    except (OSError, KeyError) as exc:
        raise UserError(f"{path} has no readable images dataset: {exc}") from None
    labels = artifact.data["labels"]
    n, cell = int(attrs["n"]), int(attrs["cell_size"])
    if len(images.shape) != 4 or images.shape[1:] != (3, n * cell, n * cell) or len(images) < 1:
        raise UserError(
            f"{path} holds images of shape {images.shape}, expected (N>=1, 3, {n * cell}, {n * cell}) "
            f"for its {n}x{n} grids of {cell}-pixel cells"
        )
    if labels.shape != (len(images), n * n) or labels.min(initial=0) < 0:
        raise UserError(f"{path} holds labels of shape {labels.shape}, expected ({len(images)}, {n * n})")
    class_names = attrs.get("class_names") or []
    return GridFile(
        path=path,
        name=path.stem,
        images=images,
        labels=np.ascontiguousarray(labels, dtype=np.int64),
        n=n,
        cell_size=cell,
        variant=str(attrs["variant"]),
        num_classes=len(class_names) if class_names else int(labels.max()) + 1,
        hash=file_hash(path),
    )


def check_fit(grids: GridFile, *, setting_name: str, variant: str, model: ModelAdapter) -> None:
    """Raise a one-line UserError if the grids do not fit the setting or the model."""
    if grids.variant != variant:
        raise UserError(
            f"setting {setting_name} needs {variant} grids but {grids.path} holds {grids.variant} "
            f"grids; make them with: attrcli make-grids --variant {variant}"
        )
    if grids.cell_size != model.cell_size:
        raise UserError(
            f"{grids.path} has {grids.cell_size}-pixel cells but {model.name} expects "
            f"{model.cell_size}-pixel cells"
        )
    if grids.num_classes != model.num_classes or int(grids.labels.max()) >= model.num_classes:
        raise UserError(
            f"{grids.path} is built from a {grids.num_classes}-class dataset but {model.name} "
            f"has {model.num_classes} classes"
        )
