"""Reading a user's own grids for ``attrcli import-grids``: the ``.npz`` and ``.csv`` sources.

* ``.npz`` with ``grids`` (float, ``(B, 3, H, W)``, already normalised) and ``labels`` (int,
  ``(B, n²)``, cells row-major), optionally ``class_names``, ``mean`` and ``std``;
* ``.csv`` with a header ``grid,cell,image,class`` and one row per cell: the grid's id, the
  cell's row-major index, the image file (relative paths are relative to the CSV's folder) and
  the class index. The images are resized and normalised as ``make-grids`` does
  (:func:`attrcli.data.grids.assemble`).

A reader checks the source's own structure (arrays, columns, cells, files); what the grids must
satisfy as grids is checked by :func:`attrcli.data.import_grids.check_grids`.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attrcli.data.grids import assemble
from attrcli.errors import UserError
from attrcli.store import content_hash, file_hash

CSV_COLUMNS = ("grid", "cell", "image", "class")


@dataclass
class Imported:
    """Grids read from a source, not yet checked against the variant."""

    images: np.ndarray  # (G, 3, n·c, n·c) float32, normalised
    labels: np.ndarray  # (G, n²) int64
    sources: np.ndarray  # (G, n²) int64
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: list[str] | None
    reused: int = 0
    pool_size: int = 0
    ids: list[int] | None = None  # the grids' ids in messages (.csv); None: their rows
    inputs: dict[str, str] = field(default_factory=dict)


def triple(values: Any, what: str) -> tuple[float, float, float]:
    """Three finite floats, one per colour channel (a normalisation mean or std)."""
    try:
        out = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise UserError(f"{what} must be 3 numbers (one per colour channel), got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise UserError(f"{what} must be 3 finite numbers (one per colour channel), got {list(out)}")
    return out  # type: ignore[return-value]


def parse_triple(text: str | None, what: str) -> tuple[float, float, float] | None:
    """``"0.485,0.456,0.406"`` -> a 3-tuple; None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return triple([float(p) for p in parts], what)
    except ValueError:
        raise UserError(f"{what} must be 3 comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}") from None


def grid_size(cells: int, where: str) -> int:
    """n of grids with ``cells`` cells: n² = cells, n ≥ 2."""
    n = math.isqrt(cells)
    if n * n != cells or n < 2:
        raise UserError(f"{where}: {cells} cells per grid is not n² for an n ≥ 2 (4, 9, 16, …)")
    return n


def _names(value: Any, where: str) -> list[str]:
    """Class names from an array or list of strings (bytes decoded)."""
    names = np.asarray(value)
    if names.ndim != 1 or names.dtype.kind not in "USO":
        raise UserError(f"{where}: class_names must be a 1-D list of strings, got shape {names.shape} of {names.dtype}")
    out = [v.decode() if isinstance(v, bytes) else v for v in names.tolist()]
    if not all(isinstance(v, str) for v in out):
        raise UserError(f"{where}: class_names must be strings")
    if len(set(out)) != len(out):
        raise UserError(f"{where}: class_names repeat a name")
    return out


def read_npz(path: Path) -> Imported:
    """The arrays of a ``.npz`` source (without pickle: object arrays are refused)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable .npz file: {exc}") from None
    with archive:
        missing = [k for k in ("grids", "labels") if k not in archive.files]
        if missing:
            held = ", ".join(archive.files) or "nothing"
            raise UserError(f"{path} has no {' or '.join(missing)} array (it holds: {held})")
        try:
            arrays = {k: archive[k] for k in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            # Object arrays (a list of Python strings saved without a dtype) need pickle: refused.
            raise UserError(f"{path}: cannot read an array ({exc}); save names as np.array(names, dtype=str)") from None
    images, labels = arrays["grids"], arrays["labels"]
    if images.dtype.kind != "f":
        raise UserError(f"{path}: grids must be floats, already normalised as the model expects; got {images.dtype}")
    images = images.astype(np.float32, copy=False)  # as stored: a value beyond float32 shows as infinite
    if labels.dtype.kind not in "iu":
        raise UserError(f"{path}: labels must be integers (class indices), got {labels.dtype}")
    if labels.ndim != 2:
        raise UserError(f"{path}: labels must have shape (B, n²), got {labels.shape}")
    sources = np.arange(labels.size, dtype=np.int64).reshape(labels.shape)
    return Imported(
        images=images,
        labels=labels,
        sources=sources,
        mean=triple(arrays["mean"], f"{path}: mean") if "mean" in arrays else None,
        std=triple(arrays["std"], f"{path}: std") if "std" in arrays else None,
        class_names=_names(arrays["class_names"], str(path)) if "class_names" in arrays else None,
        pool_size=int(labels.size),
        inputs={"source": file_hash(path)},
    )


def _int(value: str, column: str, row: int, path: Path) -> int:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        raise UserError(f"{path} row {row}: {column} must be an integer, got {value!r}") from None


def _read_csv_rows(path: Path) -> tuple[list[tuple[int, int, Path, int, int]], str]:
    """``(grid, cell, image file, class, row)`` per data row, and the text's hash."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if [h for h in CSV_COLUMNS if h not in header]:
        raise UserError(
            f"{path} needs the header {','.join(CSV_COLUMNS)} (one row per cell), got {','.join(header) or 'none'}"
        )
    reader.fieldnames = header
    rows = []
    for number, row in enumerate(reader, start=2):
        if any(row.get(c) in (None, "") for c in CSV_COLUMNS):
            raise UserError(f"{path} row {number}: every row needs {', '.join(CSV_COLUMNS)}")
        image = Path(row["image"].strip()).expanduser()
        image = image if image.is_absolute() else path.parent / image
        rows.append((
            _int(row["grid"], "grid", number, path), _int(row["cell"], "cell", number, path), image,
            _int(row["class"], "class", number, path), number,
        ))
    if not rows:
        raise UserError(f"{path} lists no cells")
    return rows, content_hash(text)


def read_csv(path: Path, *, cell_size: int | None, mean: tuple[float, ...] | None,
              std: tuple[float, ...] | None, batch_size: int) -> Imported:
    """The grids a ``.csv`` source lists, read as a :class:`~attrcli.data.datasets.Pool` of its
    distinct image files and assembled (resized, normalised) as ``make-grids`` assembles."""
    from attrcli.data.datasets import Pool, load_images

    if cell_size is None:
        raise UserError("a .csv source needs --cell-size (or --model) to resize its images")
    if mean is None or std is None:
        raise UserError("a .csv source needs --mean and --std (or --model) to normalise its images")
    rows, text_hash = _read_csv_rows(path)
    grids: dict[int, dict[int, tuple[Path, int, int]]] = {}
    for grid, cell, image, label, number in rows:
        cells = grids.setdefault(grid, {})
        if cell in cells:
            raise UserError(f"{path} row {number}: grid {grid} lists cell {cell} twice (also row {cells[cell][2]})")
        cells[cell] = (image, label, number)
    sizes = {len(c) for c in grids.values()}
    if len(sizes) != 1:
        counts = ", ".join(map(str, sorted(sizes)))
        raise UserError(f"{path}: grids list different numbers of cells ({counts}); every grid needs all n² cells")
    n = grid_size(sizes.pop(), str(path))
    files: dict[Path, int] = {}
    labels_of: dict[Path, tuple[int, int]] = {}
    positions, labels = [], []
    for grid in sorted(grids):
        cells = grids[grid]
        if sorted(cells) != list(range(n * n)):
            raise UserError(f"{path}: grid {grid} has cells {sorted(cells)}, expected 0–{n * n - 1} (row-major)")
        seen: list[Path] = []
        for cell in range(n * n):
            image, label, number = cells[cell]
            if image in seen:
                raise UserError(f"{path} row {number}: image {image} appears twice in grid {grid}")
            seen.append(image)
            if image in labels_of and labels_of[image][0] != label:
                first, row = labels_of[image]
                raise UserError(f"{path} row {number}: image {image} has class {label} here but {first} in row {row}")
            labels_of.setdefault(image, (label, number))
            files.setdefault(image, len(files))
        positions.append([files[cells[c][0]] for c in range(n * n)])
        labels.append([cells[c][1] for c in range(n * n)])
    missing = [f for f in files if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: image {missing[0]} does not exist{more}")
    ordered = list(files)
    pool = Pool(
        dataset=path.stem,
        labels=np.array([labels_of[f][0] for f in ordered], dtype=np.int64),
        sources=np.arange(len(ordered), dtype=np.int64),
        class_names=(),
        read=lambda where, size: load_images([ordered[int(i)] for i in where], size),
    )
    index = np.array(positions, dtype=np.int64)
    uses = np.bincount(index.reshape(-1), minlength=len(ordered))
    return Imported(
        images=assemble(pool, index, n=n, cell_size=cell_size, mean=mean, std=std, batch_size=batch_size),
        labels=np.array(labels, dtype=np.int64),
        sources=index,
        mean=mean,
        std=std,
        class_names=None,
        reused=int((uses > 1).sum()),
        pool_size=len(ordered),
        ids=sorted(grids),
        inputs={"source": text_hash, "images": content_hash([file_hash(f) for f in ordered])},
    )
