"""Grid files from a user's own grid images (``attrcli import-grids``).

``make-grids`` builds grids from a dataset through its confidence filter; this module takes grids
a user already has (read by :mod:`attrcli.data.grid_sources` from a ``.npz`` or ``.csv``) and
writes them in the same grid-file format (docs/artifacts.md), after checking what every later
stage relies on, all before anything is written: n ≥ 2 with n² label columns; square images whose
size n divides; finite values; integer labels within the class count, which comes from
``--num-classes``, ``class_names`` or ``--model`` (never from the labels, whose maximum
undercounts); *distinct* grids hold n² distinct classes, *corners* grids one class at the
top-left and bottom-right cells (heads 0 and n²−1), two different images there, and other
classes elsewhere (SPEC §1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attrcli.data.grid_sources import Imported, grid_size, parse_triple, read_csv, read_npz, triple
from attrcli.data.grids import VARIANTS
from attrcli.errors import UserError
from attrcli.store import artifact_lock, read_provenance, write_artifact
from attrcli.store.artifacts import make_provenance

SOURCES = (".npz", ".csv")
__all__ = ["Imported", "check_grids", "import_grids", "model_facts", "parse_triple"]
IMPORTER = "import-grids"  # provenance config["made_by"] of the files written here


@dataclass
class ModelFacts:
    """What a model fixes about its grids: cell size, class count and normalisation."""

    name: str
    cell_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_facts(name: str) -> ModelFacts:
    """A registered model's spec, or a ``module:attr`` factory's adapter (random weights)."""
    from attrcli.models import MODELS, ModelSpec, create_model

    spec = MODELS.get(name)
    if isinstance(spec, ModelSpec):
        return ModelFacts(name, int(spec.cell_size), int(spec.num_classes), tuple(spec.mean), tuple(spec.std))
    adapter = create_model(name, weights="random")
    return ModelFacts(name, int(adapter.cell_size), int(adapter.num_classes), tuple(adapter.mean), tuple(adapter.std))


def _agree(what: str, given: dict[str, tuple[float, ...] | None]) -> tuple[float, ...] | None:
    """The one value the given sources state (None if none does); they must agree."""
    stated = {k: v for k, v in given.items() if v is not None}
    values = list(stated.values())
    if any(not np.allclose(v, values[0], rtol=1e-5, atol=1e-7) for v in values[1:]):
        raise UserError(f"the {what} values disagree: " + ", ".join(f"{k} says {list(v)}" for k, v in stated.items()))
    return tuple(values[0]) if values else None


def _class_count(num_classes: int | None, names: list[str] | None, model: ModelFacts | None) -> int:
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
        from attrcli.engine.grids import check_corners

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


def _output(out_dir: Path, name: str | None, source: Path) -> Path:
    name = name if name is not None else source.stem
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+=,:@-]+", name) or name.startswith("."):
        raise UserError(f"invalid grid name {name!r}: use letters, digits and _.+=,:@- (it names the cache folders)")
    return Path(out_dir) / f"{name}.h5"


def _existing(path: Path, config: dict, inputs: dict, force: bool) -> str | None:
    """``"up to date"`` when ``path`` holds this very import; raise if it holds something else."""
    if not path.exists():
        return None
    try:
        prov = read_provenance(path)
    except UserError:
        prov = {}
    if prov.get("config") == config and prov.get("inputs") == inputs and not force:
        return "up to date"
    if prov.get("config", {}).get("made_by") != IMPORTER and not force:
        raise UserError(f"{path} exists and was not made by import-grids; choose another --name or add --force")
    return None


def import_grids(
    source: Path | str,
    *,
    variant: str,
    model: str | None = None,
    num_classes: int | None = None,
    cell_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
    out_dir: Path | str = Path("data/grids"),
    batch_size: int = 256,
    force: bool = False,
    wait: bool = False,
) -> tuple[Path, str]:
    """Check a user's grids and write them as a grid file; returns its path and
    ``"written"`` or ``"up to date"``. Raises UserError, before writing anything, on bad input."""
    source = Path(source)
    if variant not in VARIANTS:
        raise UserError(f"unknown grid variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    if source.suffix.lower() not in SOURCES:
        raise UserError(f"{source}: the source must be a .npz or .csv file, not {source.suffix or 'no suffix'}")
    if cell_size is not None and cell_size < 1:
        raise UserError(f"--cell-size must be a positive number of pixels, not {cell_size}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    facts = model_facts(model) if model else None
    if facts is not None and cell_size is not None and cell_size != facts.cell_size:
        raise UserError(f"model {facts.name} needs {facts.cell_size}-pixel cells, not --cell-size {cell_size}")
    norm = {
        what: _agree(what, {f"--{what}": triple(value, f"--{what}") if value is not None else None,
                            f"model {model}": getattr(facts, what) if facts else None})
        for what, value in (("mean", mean), ("std", std))
    }
    path = _output(Path(out_dir), name, source)

    if source.suffix.lower() == ".npz":
        got = read_npz(source)
        for what, stated in (("mean", got.mean), ("std", got.std)):
            norm[what] = _agree(what, {f"--{what}" if facts is None else f"--{what} or model {model}": norm[what],
                                       str(source): stated})
    else:
        got = read_csv(source, cell_size=cell_size or (facts.cell_size if facts else None),
                        mean=norm["mean"], std=norm["std"], batch_size=batch_size)
    mean, std = norm["mean"], norm["std"]
    if std is not None and min(std) <= 0:
        raise UserError(f"std must be positive, got {list(std)}")
    classes = _class_count(num_classes, got.class_names, facts)
    if got.class_names is not None and len(got.class_names) != classes:
        raise UserError(f"{source}: {len(got.class_names)} class_names for {classes} classes")
    n, cell = check_grids(got.images, got.labels, variant=variant, num_classes=classes, where=str(source), ids=got.ids)
    if facts is not None and cell != facts.cell_size:
        raise UserError(f"{source} has {cell}-pixel cells but model {facts.name} needs {facts.cell_size}")
    if cell_size is not None and cell != cell_size:
        raise UserError(f"{source} has {cell}-pixel cells, not --cell-size {cell_size}")

    config = {
        "made_by": IMPORTER, "name": path.stem, "format": source.suffix.lower().lstrip("."),
        "variant": variant, "n": n, "cell_size": cell, "num_classes": classes,
        "mean": list(mean) if mean else None, "std": list(std) if std else None, "model": model,
    }
    status = _existing(path, config, got.inputs, force)
    if status:
        return path, status
    provenance = make_provenance(config=config, inputs=got.inputs, seed=None, device="cpu")
    # No wall-clock fields: the same source gives a byte-identical grid file (as make-grids).
    provenance.pop("created", None)
    provenance.pop("seconds", None)
    names = got.class_names if got.class_names is not None else [str(i) for i in range(classes)]
    attrs = {
        "dataset": f"{config['format']}:{source.name}", "variant": variant, "n": n, "cell_size": cell,
        "mean": list(mean) if mean else [0.0, 0.0, 0.0], "std": list(std) if std else [1.0, 1.0, 1.0],
        "seed": 0, "min_conf": 0.0, "models": [model] if model else [], "per_model": False,
        "reused": got.reused, "count": int(len(got.labels)), "confident": got.pool_size,
        "pool_size": got.pool_size, "class_names": names, "num_classes": classes,
        "source": str(source.resolve()),
    }
    with artifact_lock(path, wait=wait):
        write_artifact(
            path,
            data={
                "images": np.ascontiguousarray(got.images, dtype=np.float32),
                "labels": np.ascontiguousarray(got.labels, dtype=np.int64),
                "sources": np.ascontiguousarray(got.sources, dtype=np.int64),
            },
            attrs=attrs,
            provenance=provenance,
        )
    return path, "written"
