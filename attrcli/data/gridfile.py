"""Reading grid files for the engine, with the checks a setting and model need.

Images are read a chunk at a time (:class:`GridImages`), so memory stays bounded by
``--batch-size`` however large the grid file (1,000 ImageNet grids are 2.4 GB of float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from attrcli.errors import UserError
from attrcli.store import file_hash, read_artifact

if TYPE_CHECKING:
    from attrcli.models.adapter import ModelAdapter


class GridImages:
    """The ``images`` dataset of a grid file, read on indexing: ``images[rows]`` is float32."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            with h5py.File(self.path, "r") as handle:
                return np.asarray(handle["images"][index], dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise UserError(f"{self.path}: cannot read its images ({exc})") from None


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
    num_classes: int | None  # None: the file names no class count (the model's is assumed)
    hash: str

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def class_count(attrs: dict[str, Any]) -> int | None:
    """The class count a grid file states: its ``num_classes`` attribute, else the length of its
    ``class_names`` (a JSON list as attrcli writes it, or an HDF5 string array as h5py does);
    None when it states neither. Never the labels' maximum, which undercounts."""
    if "num_classes" in attrs:
        return int(attrs["num_classes"])
    names = attrs.get("class_names")
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        names = [names]
    return len(np.asarray(names).reshape(-1)) or None


def check_corners(labels: np.ndarray, where: str, ids: Sequence[int] | None = None) -> None:
    """A corners grid holds one class at its top-left and bottom-right cells (heads 0 and n²−1).

    ``ids`` name the grids in the message (default: their row)."""
    wrong = np.flatnonzero(labels[:, 0] != labels[:, -1])
    if wrong.size:
        row = int(wrong[0])
        name = ids[row] if ids is not None else row
        raise UserError(
            f"{where}: corners grid {name} has class {int(labels[row, 0])} at the top-left but "
            f"{int(labels[row, -1])} at the bottom-right (both corners must hold one class; "
            f"{wrong.size} grid(s) differ)"
        )


def load_grid_file(path: Path | str) -> GridFile:
    """Read a grid file written by ``make-grids`` or ``import-grids``."""
    path = Path(path)
    try:
        artifact = read_artifact(path, names=["labels"])
    except UserError as exc:
        if "no schema_version" in str(exc):
            raise UserError(
                f"{path} is not an attrcli grid file (no schema_version); convert your own grids "
                "with attrcli import-grids"
            ) from None
        raise
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
    variant = str(attrs["variant"])
    if variant == "corners":
        check_corners(labels, str(path))
    return GridFile(
        path=path,
        name=path.stem,
        images=images,
        labels=np.ascontiguousarray(labels, dtype=np.int64),
        n=n,
        cell_size=cell,
        variant=variant,
        num_classes=class_count(attrs),
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
    if grids.num_classes is not None and grids.num_classes != model.num_classes:
        raise UserError(
            f"{grids.path} is built from a {grids.num_classes}-class dataset but {model.name} "
            f"has {model.num_classes} classes"
        )
    if int(grids.labels.max()) >= model.num_classes:
        raise UserError(
            f"{grids.path} holds class {int(grids.labels.max())} but {model.name} has "
            f"{model.num_classes} classes (0–{model.num_classes - 1})"
        )
