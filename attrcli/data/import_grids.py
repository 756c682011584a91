"""The checks on a user's own grid images (``attrcli import-grids``, whose stage is
:mod:`attrcli.stages.import_grids`).

``make-grids`` builds grids from a dataset through its confidence filter; ``import-grids`` takes
grids a user already has (read by :mod:`attrcli.data.grid_sources` from a ``.npz`` or ``.csv``)
and writes them in the same grid-file format (docs/artifacts.md), after checking here what every
later stage relies on, all before anything is written: n ≥ 2 with n² label columns; square images whose
size n divides; finite values; integer labels within the class count, which comes from
``--num-classes``, ``class_names`` or ``--model`` (never from the labels, whose maximum
undercounts); *distinct* grids hold n² distinct classes, *corners* grids one class at the
top-left and bottom-right cells (heads 0 and n²−1), two different images there, and other
classes elsewhere (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attrcli.data.grid_sources import Imported, grid_size, parse_triple
from attrcli.errors import UserError

SOURCES = (".npz", ".csv")
__all__ = ["Imported", "ModelFacts", "agree", "check_grids", "count_classes", "parse_triple"]
IMPORTER = "import-grids"  # provenance config["made_by"] of the files import-grids writes


@dataclass
class ModelFacts:
    """What a model fixes about its grids: cell size, class count and normalisation."""

    name: str
    cell_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def agree(what: str, given: dict[str, tuple[float, ...] | None]) -> tuple[float, ...] | None:
    """The one value the given sources state (None if none does); they must agree."""
    stated = {k: v for k, v in given.items() if v is not None}
    values = list(stated.values())
    if any(not np.allclose(v, values[0], rtol=1e-5, atol=1e-7) for v in values[1:]):
        raise UserError(f"the {what} values disagree: " + ", ".join(f"{k} says {list(v)}" for k, v in stated.items()))
    return tuple(values[0]) if values else None


def count_classes(num_classes: int | None, names: list[str] | None, model: ModelFacts | None) -> int:
    """The class count every given source agrees on; at least one must give it."""
    given = {}
    if num_classes is not None:
        if num_classes < 1:
            raise UserError(f"--num-classes must be at least 1, not {num_classes}")
        given["--num-classes"] = num_classes
    if names is not None:
        given["class_names"] = len(names)
    if model is not None:
        given[f"model {model.name}"] = model.num_classes
    if not given:
        raise UserError(
            "the class count is unknown: give --num-classes, class_names in the .npz, or --model "
            "(it is never guessed from the labels)"
        )
    counts = set(given.values())
    if len(counts) > 1:
        raise UserError("the class counts disagree: " + ", ".join(f"{k} says {v}" for k, v in given.items()))
    return counts.pop()


def check_grids(images: np.ndarray, labels: np.ndarray, *, variant: str, num_classes: int, where: str,
                ids: Sequence[int] | None = None) -> tuple[int, int]:
    """``(n, cell size)`` of grids that pass every check of the module docstring; ``ids`` name
    the grids in messages (default: their rows)."""

    def name(row: int) -> int:
        return int(ids[row]) if ids is not None else row

    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"{where}: grids must have shape (B, 3, H, W), got {images.shape}")
    count = images.shape[0]
    if count < 1:
        raise UserError(f"{where} holds no grids")
    if labels.shape[0] != count:
        raise UserError(f"{where}: {count} grids but {labels.shape[0]} rows of labels")
    n = grid_size(labels.shape[1], where)
    height, width = images.shape[2:]
    if height != width:
        raise UserError(f"{where}: grid images must be square, got {height}×{width}")
    if height % n:
        raise UserError(f"{where}: image size {height} is not divisible by n={n} (cells must be whole pixels)")
    bad = np.flatnonzero(~np.isfinite(images).reshape(count, -1).all(axis=1))
    if bad.size:
        raise UserError(f"{where}: grid {name(int(bad[0]))} holds NaN or infinite values ({bad.size} grid(s) do)")
    outside = np.argwhere((labels < 0) | (labels >= num_classes))
    if outside.size:
        row, cell = (int(i) for i in outside[0])
        raise UserError(
            f"{where}: grid {name(row)}, cell {cell}: label {int(labels[row, cell])} is outside the "
            f"{num_classes} classes (0–{num_classes - 1})"
        )
    if variant == "distinct":
        repeats = [i for i, row in enumerate(labels) if len(set(row.tolist())) != n * n]
        if repeats:
            row = labels[repeats[0]].tolist()
            raise UserError(
                f"{where}: distinct grid {name(repeats[0])} repeats a class ({row}); distinct grids hold "
                f"{n * n} distinct classes ({len(repeats)} grid(s) do not)"
            )
    else:
        from attrcli.data.gridfile import check_corners

        check_corners(labels, where, ids)
        inside = [i for i, row in enumerate(labels) if row[0] in row[1:-1]]
        if inside:
            raise UserError(
                f"{where}: corners grid {name(inside[0])} holds its corner class {int(labels[inside[0], 0])} "
                "in another cell too; only the two corners may hold it"
            )
        same = [i for i in range(count) if np.array_equal(images[i, :, :height // n, :height // n],
                                                           images[i, :, -(height // n):, -(height // n):])]
        if same:
            raise UserError(
                f"{where}: corners grid {name(same[0])} holds the same image at both corners; "
                "they must be two different images"
            )
    return n, height // n
