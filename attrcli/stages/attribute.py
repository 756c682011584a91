"""``attribute``: compute attribution maps for a grid file, one artifact per key.

One request takes several settings, layers and methods. Everything is validated first, on a
weightless copy of the model where possible (:func:`attrcli.stages.plan.plan`), so bad input
fails before any weights are loaded or trained and before anything is written. Keys that are up
to date are skipped; the others are locked, computed chunk by chunk by the engine
(:func:`attrcli.engine.attribute.run_setting`, which checkpoints finished chunks so a killed
run resumes) and written here; derived methods (smoothing) are computed afterwards from the
cached maps of their base method.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from attrcli.data.gridfile import GridFile, load_grid_file
from attrcli.devices import resolve_device
from attrcli.engine.attribute import batch_macs, computing, run_setting
from attrcli.engine.precision import check_device, provenance
from attrcli.errors import TaskError, UserError
from attrcli.models import ModelAdapter, create_model, state_dict_hash
from attrcli.models.weights_hash import known_weights_hash
from attrcli.progress import Progress
from attrcli.stages.plan import (
    AttributeRequest,
    AttributeResult,
    Job,
    plan,
    resolve_methods,
    setting_names,
    up_to_date,
    weightless,
)
from attrcli.store import artifact_lock, file_hash, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance

__all__ = ["AttributeRequest", "AttributeResult", "attribute", "run_attribute", "write_derived", "write_maps"]


def attribute(*, progress: Progress | None = None, **fields: Any) -> list[AttributeResult]:
    """:func:`run_attribute` of ``AttributeRequest(**fields)``: the library's keyword form
    (``attribute(grids=..., setting="gridpg", model=..., methods="grad,ixg")``); an unknown
    field is a TypeError."""
    return run_attribute(AttributeRequest(**fields), progress=progress)


def run_attribute(request: AttributeRequest, *, progress: Progress | None = None) -> list[AttributeResult]:
    """Compute (or reuse) one attribution artifact per (setting, layer, method) of ``request``.

    Artifacts that are up to date (same grid file, weights and config; for sampling methods also
    seed and chunking) are skipped unless ``force``, also when another process finished them
    while this one waited for their locks. A run killed after some chunks resumes from its
    checkpoints, which are only kept for identical inputs and config; ``force`` starts from
    scratch. On the CPU, small batches run on one thread (:mod:`attrcli.threads`).
    ``shard=(i, N)`` computes only rows ``[i*count//N, (i+1)*count//N)`` of the grid file into
    shard artifacts (:mod:`attrcli.engine.shards`; ``attrcli merge`` joins them).
    """
    if request.shards > 1 and request.shard is None:  # the identity would claim a sharding not run
        raise UserError(
            f"shards={request.shards} without a shard: compute one shard (shard=(i, N)) or launch "
            "them all (attrcli launch --shards N)"
        )
    dev = resolve_device(request.device)
    check_device(request.precision, dev)  # tf32 off CUDA ("auto" on a CPU machine): before anything is written
    model = request.model
    setting_names(request.setting)  # the checks in the order attribute has always made them
    grid_file = load_grid_file(request.grids)
    resolve_methods(request.methods)
    preview = None if isinstance(model, ModelAdapter) else weightless(model)
    if preview is not None:  # a registered model: fail before any weights are loaded or trained
        plan(request, adapter=preview, grid_file=grid_file)
        done = _known_up_to_date(request, preview, grid_file)
        if done is not None:
            return done
    adapter = model if isinstance(model, ModelAdapter) else create_model(
        model, weights=request.weights, device=dev, cache_dir=request.cache_root, progress=progress
    )
    adapter.module.eval()
    adapter.to(dev)
    if not adapter.weights_hash:
        adapter.weights_hash = state_dict_hash(adapter.module.state_dict())
    # shapes do not depend on the weights: the weightless copy's geometry check holds for them
    planned = plan(request, adapter=adapter, grid_file=grid_file, geometry=preview is None)

    results: list[AttributeResult] = []
    todo: list[Job] = []
    for job in planned.jobs:
        if not request.force and up_to_date(job):
            results.append(AttributeResult(job.key, job.path, "up to date"))
        else:
            todo.append(job)
    if not todo:
        return results
    macs = batch_macs(preview or adapter, grid_file.n, request.batch_size) if dev.type == "cpu" else None

    def write(job: Job, maps: np.ndarray, counts: dict[str, int], seconds: float) -> None:
        write_maps(job, maps, grid_file, seconds=seconds, device=dev, batch_size=request.batch_size,
                   seed=request.seed, rows=planned.rows, counts=counts, precision=request.precision)

    with ExitStack() as stack:
        for job in todo:
            stack.enter_context(artifact_lock(job.path, wait=request.wait))
        if not request.force:  # another process may have finished some while we waited for their locks
            finished = [job for job in todo if up_to_date(job)]
            results += [AttributeResult(job.key, job.path, "up to date") for job in finished]
            todo = [job for job in todo if job not in finished]
        stack.enter_context(computing(adapter.module, dev, macs, precision=request.precision, model=adapter))
        for grid_setting, _ in planned.settings:
            mine = [j for j in todo if j.setting is grid_setting and j.kind != "derived"]
            done = run_setting(grid_file, mine, dev, request.batch_size, request.seed, progress, planned.rows,
                               fresh=request.force, write=write)
            results += [AttributeResult(j.key, j.path, "resumed" if resumed else "computed") for j, resumed in done.items()]
        derived = [j for j in todo if j.kind == "derived"]
        for i, job in enumerate(derived):
            write_derived(job)
            results.append(AttributeResult(job.key, job.path, "computed"))
            if progress:
                progress("derive", i + 1, len(derived))
    return results


def _known_up_to_date(request: AttributeRequest, preview: ModelAdapter, grid_file: GridFile) -> list[AttributeResult] | None:
    """Every key's result when all are up to date and the weights file's hash is known from the
    weights-hash cache (:func:`attrcli.models.weights_hash.known_weights_hash`): the weights are
    then neither built nor loaded. None otherwise (the call goes on as usual)."""
    if request.force or isinstance(request.model, ModelAdapter):
        return None
    known = known_weights_hash(preview, model=request.model, weights=request.weights, cache_dir=request.cache_root)
    if not known:
        return None
    preview.weights_hash = known
    jobs = plan(request, adapter=preview, grid_file=grid_file, geometry=False).jobs
    if not all(up_to_date(job) for job in jobs):
        return None
    return [AttributeResult(job.key, job.path, "up to date") for job in jobs]


def write_maps(
    job: Job, maps: np.ndarray, grid_file: GridFile, *, seconds: float, device: torch.device,
    batch_size: int, seed: int, rows: range | None = None, counts: dict[str, int] | None = None,
    precision: str = "fp32",
) -> None:
    """Write one attribution artifact (docs/artifacts.md); NaN or inf maps are refused.

    ``precision`` the maps were computed in is recorded in the provenance's config (beside the
    identity, which names it only when not fp32, so fp32 artifacts of earlier versions stay
    fresh).

    ``rows``: the grid-file rows the maps cover (a shard); default all. ``counts``: the
    method's diagnostic counts (:meth:`~attrcli.methods.base.Method.diagnostics`), stored as the
    attribute ``diagnostics`` (a dict).
    """
    index = np.arange(grid_file.count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if maps.ndim != 4 or maps.shape[:2] != (len(index), len(job.cells)):
        raise TaskError(
            f"{job.key.label()}: maps of shape {maps.shape} for {len(index)} grid images and "
            f"{len(job.cells)} targets; nothing written"
        )
    if not np.isfinite(maps).all():
        raise TaskError(f"{job.key.label()}: maps hold NaN or inf; nothing written")
    setting = job.setting
    write_artifact(
        job.path,
        data={
            "maps": maps.astype(np.float32, copy=False),
            "grid_index": index,
            "cells": np.asarray(job.cells, dtype=np.int64),
            "heads": np.asarray([setting.head_of_cell(c) for c in job.cells], dtype=np.int64),
            "classes": grid_file.labels[index][:, job.cells].astype(np.int64),
        },
        attrs={
            "grids": grid_file.name,
            "grid_path": str(grid_file.path),
            "setting": setting.name,
            "model": setting.model.name,
            "layer": job.layer,
            "layer_module": job.identity["layer_module"],
            "method": job.spec.canonical(),
            "n": setting.n,
            "image_size": grid_file.image_size,
            "diagnostics": {name: int(v) for name, v in sorted((counts or {}).items())},
        },
        provenance=make_provenance(
            config={"identity": job.identity, "batch_size": batch_size, **provenance(precision)},
            inputs=job.inputs,
            seed=seed,
            device=str(device),
            seconds=seconds,
        ),
    )


def write_derived(job: Job) -> None:
    """A derived method's artifact, from the cached maps of its base method (no model pass)."""
    artifact = read_artifact(job.base_path)
    maps = job.method.derive(torch.from_numpy(artifact.data["maps"])).float().numpy()
    write_artifact(
        job.path,
        data={**artifact.data, "maps": maps},
        attrs={**artifact.attrs, "method": job.spec.canonical()},
        provenance=make_provenance(
            config={"identity": job.identity, **provenance(job.identity.get("precision", "fp32"))},
            inputs={**job.inputs, "base": file_hash(job.base_path)},
        ),
    )
