"""The ``import-grids`` stage: check a user's own grids and write them as a grid file.

The checks are :mod:`attrcli.data.import_grids`; this module adds what a ``--model`` fixes
(cell size, class count, normalisation) and the file, written only once every check passed.
A file that already holds this very import is kept (:func:`attrcli.store.freshness.freshness`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attrcli.data.grid_sources import parse_triple, read_csv, read_npz, triple
from attrcli.data.grids import VARIANTS
from attrcli.data.import_grids import (
    IMPORTER,
    SOURCES,
    ModelFacts,
    agree,
    check_grids,
    count_classes,
)
from attrcli.errors import UserError
from attrcli.store import artifact_lock, read_provenance, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.freshness import MISSING, freshness
from attrcli.store.keys import GridFileKey

__all__ = ["import_grids", "model_facts", "parse_triple"]


def model_facts(name: str) -> ModelFacts:
    """A registered model's spec, or a ``module:attr`` factory's adapter (random weights)."""
    from attrcli.models import MODELS, ModelSpec, create_model

    spec = MODELS.get(name)
    if isinstance(spec, ModelSpec):
        return ModelFacts(name, int(spec.cell_size), int(spec.num_classes), tuple(spec.mean), tuple(spec.std))
    adapter = create_model(name, weights="random")
    return ModelFacts(name, int(adapter.cell_size), int(adapter.num_classes), tuple(adapter.mean), tuple(adapter.std))


def _key(name: str | None, source: Path) -> GridFileKey:
    """The grid file's key: ``--name``, else the source's stem."""
    name = name if name is not None else source.stem
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+=,:@-]+", name) or name.startswith("."):
        raise UserError(f"invalid grid name {name!r}: use letters, digits and _.+=,:@- (it names the cache folders)")
    return GridFileKey(name)


def _existing(path: Path, config: dict, inputs: dict, force: bool) -> str | None:
    """``"up to date"`` when ``path`` holds this very import; raise if it holds something else."""
    state = freshness(path, {"config": config, "inputs": inputs})
    if state.state == MISSING:
        return None
    if state.fresh and not force:
        return "up to date"
    try:
        prov = read_provenance(path)
    except UserError:
        prov = {}
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
    dry_run: bool = False,
) -> tuple[Path, str]:
    """Check a user's grids and write them as a grid file; returns its path and
    ``"written"`` or ``"up to date"`` (``dry_run``: ``"to import"``, nothing written). Raises
    UserError, before writing anything, on bad input."""
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
        what: agree(what, {f"--{what}": triple(value, f"--{what}") if value is not None else None,
                            f"model {model}": getattr(facts, what) if facts else None})
        for what, value in (("mean", mean), ("std", std))
    }
    key = _key(name, source)
    path = key.path(out_dir)

    if source.suffix.lower() == ".npz":
        got = read_npz(source)
        for what, stated in (("mean", got.mean), ("std", got.std)):
            norm[what] = agree(what, {f"--{what}" if facts is None else f"--{what} or model {model}": norm[what],
                                       str(source): stated})
    else:
        got = read_csv(source, cell_size=cell_size or (facts.cell_size if facts else None),
                        mean=norm["mean"], std=norm["std"], batch_size=batch_size)
    mean, std = norm["mean"], norm["std"]
    if std is not None and min(std) <= 0:
        raise UserError(f"std must be positive, got {list(std)}")
    classes = count_classes(num_classes, got.class_names, facts)
    if got.class_names is not None and len(got.class_names) != classes:
        raise UserError(f"{source}: {len(got.class_names)} class_names for {classes} classes")
    n, cell = check_grids(got.images, got.labels, variant=variant, num_classes=classes, where=str(source), ids=got.ids)
    if facts is not None and cell != facts.cell_size:
        raise UserError(f"{source} has {cell}-pixel cells but model {facts.name} needs {facts.cell_size}")
    if cell_size is not None and cell != cell_size:
        raise UserError(f"{source} has {cell}-pixel cells, not --cell-size {cell_size}")

    config = {
        "made_by": IMPORTER, "name": key.name, "format": source.suffix.lower().lstrip("."),
        "variant": variant, "n": n, "cell_size": cell, "num_classes": classes,
        "mean": list(mean) if mean else None, "std": list(std) if std else None, "model": model,
    }
    status = _existing(path, config, got.inputs, force)
    if status:
        return path, status
    if dry_run:
        return path, "to import"
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
