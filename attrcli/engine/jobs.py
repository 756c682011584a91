"""The keys one ``attribute`` call computes: planning, freshness and writing of artifacts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrcli.engine.grids import GridFile
from attrcli.errors import UserError
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


def _job(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layer: str, spec: MethodSpec,
    cache_root: Path,
) -> Job:
    model: ModelAdapter = setting.model
    method = spec.build(cell_size=model.cell_size, layer=layer)
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
    inputs = {"grids": grid_file.hash, "model": model.weights_hash}
    return Job(
        key, key.path(cache_root), setting, list(cells), layer, model.layer_index(layer), spec,
        method, identity, inputs,
    )


def plan_jobs(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layers: list[str],
    specs: list[MethodSpec], cache_root: Path,
) -> tuple[list[Job], list[Job]]:
    """Jobs that run the model, and derived jobs (each after the job of its base method)."""
    jobs: list[Job] = []
    derived: list[Job] = []
    for layer in layers:
        for spec in specs:
            job = _job(grid_file, setting, cells, layer, spec, cache_root)
            if job.kind != "derived":
                if not any(j.spec == spec and j.layer == layer for j in jobs):
                    jobs.append(job)
                continue
            base = MethodSpec(job.method.base)
            base_job = next((j for j in jobs if j.spec == base and j.layer == layer), None)
            if base_job is None:
                base_job = _job(grid_file, setting, cells, layer, base, cache_root)
                jobs.append(base_job)
            job.base_path = base_job.path
            derived.append(job)
    return jobs, derived


def up_to_date(job: Job) -> bool:
    """The artifact exists and was made from the same inputs and config."""
    if not job.path.exists():
        return False
    try:
        prov = read_provenance(job.path)
    except UserError:
        return False
    inputs = dict(job.inputs)
    if job.base_path is not None:
        if not job.base_path.exists():
            return False
        inputs["base"] = file_hash(job.base_path)
    return prov.get("inputs") == inputs and prov.get("config", {}).get("identity") == job.identity


def write_maps(
    job: Job, maps: np.ndarray, grid_file: GridFile, *, seconds: float, device: torch.device,
    batch_size: int, seed: int, rows: range | None = None,
) -> None:
    """Write one attribution artifact (docs/artifacts.md); NaN or inf maps are refused.

    ``rows``: the grid-file rows the maps cover (a shard); default all.
    """
    index = np.arange(grid_file.count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if not np.isfinite(maps).all():
        raise RuntimeError(f"{job.key.label()}: maps hold NaN or inf; nothing written")
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
