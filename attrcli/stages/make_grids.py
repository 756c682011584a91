"""The ``make-grids`` stage (SPEC §1): load the filter models, check every argument, and write
one grid file per variant (and per model with ``per_model``) as docs/artifacts.md describes.

Which images go into which cells is :mod:`attrcli.data.grids`; this module adds the models and
the files. A grid file holds no timestamps, so the same arguments give a byte-identical file;
a file whose config and inputs are unchanged is kept (:func:`attrcli.store.freshness.freshness`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attrcli.data.datasets import DATASETS, DatasetSpec, Pool
from attrcli.data.grids import (
    assemble,
    check_classes,
    check_pool,
    confident,
    grid_name,
    plan_grids,
    resolve_variants,
)
from attrcli.errors import UserError
from attrcli.progress import Progress
from attrcli.store import artifact_lock, content_hash, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.files import check_folder, output_target
from attrcli.store.freshness import freshness
from attrcli.store.keys import GridFileKey

#: ``report(path, status)`` with status ``"written"`` or ``"up to date"``.
Report = Callable[[Path, str], None]


def load_models(names: Sequence[str], *, device: str, cache_dir: Path,
                progress: Progress | None = None, weights: dict[str, str] | None = None) -> list:
    """Model adapters from the model registry (the digits models train on first use), with
    ``weights`` (model -> file, ``.pth`` or ``.safetensors``) where given."""
    from attrcli.models import create_model

    weights = weights or {}
    return [create_model(name, weights=weights.get(name), device=device, cache_dir=cache_dir, progress=progress)
            for name in names]


@dataclass
class _File:
    """One grid file to make: its models, variant, path and identity (config and inputs)."""

    models: list[str]
    adapters: list
    variant: str
    path: Path
    config: dict
    inputs: dict


def _up_to_date(file: _File) -> bool:
    """The file records this very config and these inputs (missing or unreadable: not)."""
    return freshness(file.path, {"config": file.config, "inputs": file.inputs}).fresh


def _check_numbers(*, n: int, count: int | None, min_conf: float, seed: int, batch_size: int,
                   cell_size: int | None) -> None:
    if n < 2:
        raise UserError(f"--n must be at least 2 (grids are n×n cells), not {n}")
    if count is not None and count < 1:
        raise UserError(f"--count must be at least 1, not {count}")
    if not 0.0 <= min_conf <= 1.0:
        raise UserError(f"--min-conf is a softmax probability between 0 and 1, not {min_conf}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, not {seed}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    if cell_size is not None and cell_size < 1:
        raise UserError(f"--cell-size must be a positive number of pixels, not {cell_size}")


def _check_models(names: Sequence[str], adapters: Sequence, *, pool: Pool, cell_size: int | None,
                  joint: bool) -> None:
    classes = int(pool.labels.max()) + 1 if len(pool) else 0
    for name, adapter in zip(names, adapters):
        if cell_size is not None and int(adapter.cell_size) != cell_size:
            raise UserError(
                f"model {name} needs {adapter.cell_size}-pixel cells, not --cell-size {cell_size}; "
                "leave --cell-size out to use the model's size"
            )
        if classes > adapter.num_classes:
            raise UserError(
                f"{pool.dataset} has {classes} classes but model {name} has {adapter.num_classes} "
                f"outputs; use a model trained on {pool.dataset}"
            )
    if joint:
        first, a0 = names[0], adapters[0]
        for name, adapter in zip(names[1:], adapters[1:]):
            if int(adapter.cell_size) != int(a0.cell_size):
                raise UserError(
                    f"models {first} ({a0.cell_size}-pixel cells) and {name} ({adapter.cell_size}) "
                    "cannot share grids; filter them separately with --per-model"
                )
            if tuple(adapter.mean) != tuple(a0.mean) or tuple(adapter.std) != tuple(a0.std):
                raise UserError(
                    f"models {first} and {name} expect different input normalisation, so they "
                    "cannot share stored grid images; filter them separately with --per-model"
                )


def make_grids(
    *,
    dataset: str = "digits",
    root: Path | None = None,
    variant: str | Sequence[str] = "both",
    n: int = 2,
    count: int | None = None,
    cell_size: int | None = None,
    min_conf: float = 0.99,
    models: Sequence[str] | None = None,
    per_model: bool = False,
    seed: int = 0,
    out_dir: Path = Path("data/grids"),
    cache_dir: Path = Path("cache"),
    device: str | torch.device = "cpu",
    download: bool = False,
    force: bool = False,
    wait: bool = False,
    batch_size: int = 256,
    progress: Progress | None = None,
    report: Report | None = None,
    dry_run: bool = False,
    weights: dict[str, str] | None = None,
) -> list[Path]:
    """Build grid files ``<out_dir>/<name>.h5`` (docs/artifacts.md), one per variant, and with
    ``per_model`` one per variant and model; return their paths.

    ``variant`` is ``distinct``, ``corners`` or ``both``; ``models`` default to the dataset's;
    ``count`` defaults to the dataset's per-variant count, else to as many grids as the
    confident pool fills without reuse. A file whose config and inputs (weights hashes, pool
    labels) are unchanged is kept unless ``force``. Every check runs before anything is written.
    ``dry_run`` writes nothing: ``report`` hears ``"to build"`` or ``"up to date"`` per file.
    ``weights`` (model -> file) are the filter's models' weights instead of their default ones;
    their hashes are the file's inputs, so other weights make another file's content.
    """
    variants = resolve_variants(variant)
    _check_numbers(n=n, count=count, min_conf=min_conf, seed=seed, batch_size=batch_size,
                   cell_size=cell_size)
    check_folder(out_dir, what="--out-dir")
    check_folder(cache_dir, what="--cache-dir")
    spec = DATASETS.get(dataset)
    if not isinstance(spec, DatasetSpec):
        raise UserError(f"{dataset} is not a dataset spec (a DatasetSpec instance)")
    pool = spec.load(root, download)
    names = list(dict.fromkeys(models if models is not None else spec.models))
    if not names:
        reason = "no model given" if models is not None else f"{dataset} has no default models"
        raise UserError(f"{reason}: pass --models with comma-separated model names")
    for v in variants:
        check_classes(pool.labels, dataset=dataset, variant=v, n=n)

    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise UserError(f"--weights for {unknown[0]}, which is not among the models {', '.join(names)}")
    from attrcli.models.registry import check_weights

    for name, file in (weights or {}).items():
        check_weights(name, file)
    adapters = load_models(names, device=str(device), cache_dir=Path(cache_dir), progress=progress, weights=weights)
    by_name = dict(zip(names, adapters))
    _check_models(names, adapters, pool=pool, cell_size=cell_size, joint=not per_model)

    groups = [[name] for name in names] if per_model else [names]
    pool_hash = content_hash(pool.labels, pool.sources, list(pool.class_names))
    files: list[_File] = []
    for group in groups:
        for v in variants:
            wanted = count if count is not None else spec.counts.get(v)
            name = grid_name(spec=spec, root=root, variant=v, n=n, count=wanted,
                             min_conf=min_conf, seed=seed, models=group)
            config = {
                "name": name, "dataset": dataset, "variant": v, "n": n, "count": wanted,
                "cell_size": int(by_name[group[0]].cell_size), "min_conf": float(min_conf),
                "models": group, "seed": seed,
                "root": str(Path(root).expanduser().resolve()) if root is not None else None,
            }
            inputs = {f"model:{m}": by_name[m].weights_hash for m in group}
            inputs["pool"] = pool_hash
            files.append(_File(group, [by_name[m] for m in group], v, GridFileKey(name).path(out_dir),
                               config, inputs))

    todo = [f for f in files if force or not _up_to_date(f)]
    if dry_run:
        for f in files:
            if report:
                report(f.path, "to build" if f in todo else "up to date")
        return [f.path for f in files]
    for f in todo:
        output_target(f.path, what="grid file")  # a folder or device in the way: refused before any work
    if todo:
        needed = list(dict.fromkeys(m for f in todo for m in f.models))
        masks = confident(pool, [by_name[m] for m in needed], min_conf=min_conf,
                          batch_size=batch_size, device=device, progress=progress)
        mask_of = dict(zip(needed, masks))
        plans = []
        for f in todo:
            eligible = np.flatnonzero(np.logical_and.reduce([mask_of[m] for m in f.models]))
            check_pool(pool.labels, eligible, variant=f.variant, n=n, who=" and ".join(f.models),
                       min_conf=min_conf, dataset=dataset)
            positions, reused = plan_grids(pool.labels, eligible, variant=f.variant, n=n,
                                           count=f.config["count"], seed=seed)
            plans.append((f, eligible, positions, reused))
        for f, eligible, positions, reused in plans:
            _write(f, pool, eligible, positions, reused, n=n, seed=seed, device=device,
                   batch_size=batch_size, wait=wait, progress=progress)
    written = {f.path for f in todo}
    for f in files:
        if report:
            report(f.path, "written" if f.path in written else "up to date")
    return [f.path for f in files]


def _write(f: _File, pool: Pool, eligible: np.ndarray, positions: np.ndarray, reused: int, *,
           n: int, seed: int, device, batch_size: int, wait: bool, progress: Progress | None) -> None:
    adapter = f.adapters[0]
    cell = int(adapter.cell_size)
    images = assemble(pool, positions, n=n, cell_size=cell, mean=adapter.mean, std=adapter.std,
                      batch_size=batch_size, progress=progress, label=f.config["name"])
    provenance = make_provenance(config=f.config, inputs=f.inputs, seed=seed, device=str(device))
    # No wall-clock fields: the same arguments must give a byte-identical grid file.
    provenance.pop("created", None)
    provenance.pop("seconds", None)
    attrs = {
        "dataset": pool.dataset, "variant": f.variant, "n": n, "cell_size": cell,
        "mean": [float(x) for x in adapter.mean], "std": [float(x) for x in adapter.std],
        "seed": seed, "min_conf": float(f.config["min_conf"]), "models": f.models,
        "per_model": len(f.models) == 1, "reused": reused, "count": len(positions),
        "confident": len(eligible), "pool_size": len(pool), "class_names": list(pool.class_names),
    }
    with artifact_lock(f.path, wait=wait):
        write_artifact(
            f.path,
            data={"images": images, "labels": pool.labels[positions], "sources": pool.sources[positions]},
            attrs=attrs,
            provenance=provenance,
        )
