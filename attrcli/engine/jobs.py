"""The keys one ``attribute`` call computes: planning, freshness and writing of artifacts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrcli.engine.grids import GridFile
from attrcli.errors import TaskError, UserError
from attrcli.methods import METHODS, Method, MethodSpec, parse_method, split_methods
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import GridSetting
from attrcli.store import ArtifactKey, file_hash, read_artifact, read_provenance, write_artifact
from attrcli.store.artifacts import make_provenance


@dataclass(frozen=True)
class AttributeResult:
    """One artifact of an ``attribute`` call and what happened to it."""

    key: ArtifactKey
    path: Path
    status: str  # "computed", "resumed", "up to date"


@dataclass(eq=False)
class Job:
    """One key to compute: a (setting, layer, method) of one grid file and model."""

    key: ArtifactKey
    path: Path
    setting: GridSetting
    cells: list[int]
    layer: str
    layer_index: int
    spec: MethodSpec
    method: Method
    identity: dict[str, Any]  # everything but the inputs that determines the maps
    inputs: dict[str, str]  # content hashes of the grid file and the weights
    base_path: Path | None = None  # derived methods: the artifact of the base method

    @property
    def kind(self) -> str:
        return self.method.kind


def resolve_methods(methods: str | list[str]) -> list[MethodSpec]:
    """``"all"``, a comma list (``occlusion:k=16,s=8,grad``) or a list of specs."""
    items = split_methods(methods) if isinstance(methods, str) else list(methods)
    if items == ["all"]:
        items = [name for name in METHODS.names() if METHODS.get(name).kind != "derived"]
    specs: list[MethodSpec] = []
    for item in items:
        spec = parse_method(item)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise UserError(f"no method given; valid: {', '.join(METHODS.names())}")
    return specs


def samples(method: Method) -> bool:
    """Whether ``method`` draws random numbers (:attr:`Method.seeded`: RISE's masks,
    SmoothGrad's noise). Its maps then depend on ``--seed`` and on how the grid images are cut
    into chunks (each chunk draws afresh), so both are part of its identity."""
    return bool(getattr(type(method), "seeded", False))


def sampling_identity(*, seed: int, batch_size: int, count: int, shards: int = 1) -> dict[str, int]:
    """What a sampling method's maps depend on besides its config: the seed, the chunk size, and
    the shard count when shard boundaries cut ``count`` grid images into other chunks than an
    unsharded run (a shard's chunks start at its first row)."""
    out = {"seed": int(seed), "chunk": int(batch_size)}
    if shards > 1 and batch_size > 0 and any((i * count // shards) % batch_size for i in range(shards)):
        out["shards"] = int(shards)
    return out


def wants_all(methods: str | list[str]) -> bool:
    """Whether a ``--method`` value asks for every registered method."""
    return (split_methods(methods) if isinstance(methods, str) else list(methods)) == ["all"]


def _applies(setting: GridSetting, spec: MethodSpec, layer: str) -> bool:
    try:
        setting.check_method(spec.method_class, layer)
    except UserError:
        return False
    return True


def _job(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layer: str, spec: MethodSpec,
    cache_root: Path, sampling: dict[str, int],
) -> Job:
    model: ModelAdapter = setting.model
    spec = spec.canonical_for(cell_size=model.cell_size, layer=layer)
    method = spec.build(cell_size=model.cell_size, layer=layer)
    setting.check_method(method, layer)  # model, layer and method fit (e.g. no ViT token-layer occlusion)
    method.check(layer=layer, map_size=setting.map_size(model.layer_index(layer)))
    key = ArtifactKey("attributions", grid_file.name, setting.name, model.name, layer, spec.canonical())
    identity = {
        "setting": setting.name,
        "model": model.name,
        "layer_module": model.canonical_layer(layer),
        "method": spec.canonical(),
        "method_config": dataclasses.asdict(method.config),
        "cells": list(cells),
        "n": setting.n,
    }
    if samples(method):
        identity.update(sampling)
    inputs = {"grids": grid_file.hash, "model": model.weights_hash}
    return Job(
        key, key.path(cache_root), setting, list(cells), layer, model.layer_index(layer), spec,
        method, identity, inputs,
    )


def plan_jobs(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layers: list[str],
    specs: list[MethodSpec], cache_root: Path, *, seed: int = 0, batch_size: int = 32,
    shards: int = 1, applicable_only: bool = False,
) -> tuple[list[Job], list[Job]]:
    """Jobs that run the model, and derived jobs (each after the job of its base method).

    ``seed``, ``batch_size`` and ``shards`` (the shard count of a sharded run) enter the identity
    of sampling methods only (:func:`sampling_identity`). ``applicable_only`` (``--method all``)
    skips the methods the setting refuses at a layer instead of failing on them (guided backprop
    on a GELU model, say).
    """
    sampling = sampling_identity(seed=seed, batch_size=batch_size, count=grid_file.count, shards=shards)
    jobs: list[Job] = []
    derived: list[Job] = []
    for layer in layers:
        for spec in specs:
            if applicable_only and not _applies(setting, spec, layer):
                continue
            job = _job(grid_file, setting, cells, layer, spec, cache_root, sampling)
            if job.kind != "derived":
                if not any(j.spec == job.spec and j.layer == layer for j in jobs):
                    jobs.append(job)
                continue
            base = MethodSpec(job.method.base)
            base_job = next((j for j in jobs if j.spec == base and j.layer == layer), None)
            if base_job is None:
                base_job = _job(grid_file, setting, cells, layer, base, cache_root, sampling)
                jobs.append(base_job)
            job.base_path = base_job.path
            if not any(d.spec == job.spec and d.layer == layer for d in derived):
                derived.append(job)
    return jobs, derived


def up_to_date(job: Job) -> bool:
    """The artifact exists and was made from the same inputs and config."""
    if not job.path.exists():
        adopt_legacy(job)
    return job.path.exists() and _same_computation(job, job.path)


def _same_computation(job: Job, path: Path) -> bool:
    """``path`` holds ``job``'s computation: same inputs and identity, the method spec compared
    by name and config (an artifact of an earlier version may spell its spec with default parameters)."""
    try:
        prov = read_provenance(path)
    except UserError:
        return False
    inputs = dict(job.inputs)
    if job.base_path is not None:
        if not job.base_path.exists():
            return False
        inputs["base"] = file_hash(job.base_path)
    identity = dict(prov.get("config", {}).get("identity") or {})
    stored_name = str(identity.get("method", "")).partition(":")[0]
    identity["method"] = job.identity["method"] if stored_name == job.spec.name else None
    return prov.get("inputs") == inputs and identity == job.identity


def adopt_legacy(job: Job) -> None:
    """Move an artifact written under a non-canonical spelling of the job's spec (earlier versions
    keyed ``intgrad:steps=20`` apart from ``intgrad``) to the job's canonical key, when it holds
    the same computation; its content is unchanged."""
    folder = job.path.parent
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.h5")):
        try:
            key = ArtifactKey.from_path(path)
            spec = parse_method(key.method)
        except UserError:
            continue
        if key.shard is not None or spec.name != job.spec.name or key.method == job.key.method:
            continue
        try:
            same = spec.canonical_for(cell_size=job.setting.model.cell_size, layer=job.layer) == job.spec
        except UserError:
            continue
        if same and _same_computation(job, path):
            path.replace(job.path)
            return


def write_maps(
    job: Job, maps: np.ndarray, grid_file: GridFile, *, seconds: float, device: torch.device,
    batch_size: int, seed: int, rows: range | None = None, counts: dict[str, int] | None = None,
) -> None:
    """Write one attribution artifact (docs/artifacts.md); NaN or inf maps are refused.

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
            config={"identity": job.identity, "batch_size": batch_size},
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
            config={"identity": job.identity},
            inputs={**job.inputs, "base": file_hash(job.base_path)},
        ),
    )
