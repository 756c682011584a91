"""``attribute``: compute attribution maps for a grid file, one artifact per key.

One invocation takes several layers and methods. Per chunk of grid images the gradient methods
share one forward and backward across all their layers (plus one guided pass), methods that run
the model share the layer's prefix, and derived methods (smoothing) are computed afterwards from
the cached maps of their base method without running the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from attrcli.engine.checkpoint import Checkpoint
from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import gradient_pass
from attrcli.engine.grids import GridFile, check_fit, load_grid_file
from attrcli.errors import UserError
from attrcli.methods import METHODS, Method, MethodSpec, parse_method, split_methods
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import SETTINGS, GridSetting, create_setting
from attrcli.store import ArtifactKey, artifact_lock, file_hash, read_provenance, write_artifact
from attrcli.store.artifacts import make_provenance

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AttributeResult:
    """One artifact of an ``attribute`` call and what happened to it."""

    key: ArtifactKey
    path: Path
    status: str  # "computed", "resumed", "up to date"


@dataclass
class Job:
    """One key to compute."""

    key: ArtifactKey
    path: Path
    layer: str
    layer_index: int
    spec: MethodSpec
    method: Method
    identity: dict
    inputs: dict
    base_path: Path | None = None  # derived methods: the artifact of the base method


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available; use cpu or auto")
    return torch.device(device)


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


def _up_to_date(job: Job) -> bool:
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


def _chunk_size(setting: GridSetting, targets: int, batch_size: int) -> int:
    return batch_size if setting.disconnected else max(1, batch_size // targets)


def _compute_chunk(
    setting: GridSetting, x: torch.Tensor, labels: torch.Tensor, cells: list[int], jobs: list[Job],
    batch_size: int, seed: int,
) -> dict[int, np.ndarray]:
    """Maps ``(B, T, h, w)`` of one chunk for each job (keyed by ``id(job)``)."""
    targets = setting.targets(labels, cells)
    out: dict[int, np.ndarray] = {}
    by_pass: dict[bool, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.method.kind == "gradient":
            by_pass[job.method.guided].append(job)
    for guided, group in by_pass.items():
        grads = gradient_pass(setting, x, targets, [j.layer_index for j in group], guided=guided)
        for job in group:
            a, g = grads[job.layer_index]
            out[id(job)] = job.method.from_gradients(a, g).float().cpu().numpy()
    contexts: dict[int, AttributionContext] = {}
    for job in jobs:
        if job.method.kind != "model":
            continue
        ctx = contexts.get(job.layer_index)
        if ctx is None:
            ctx = contexts[job.layer_index] = AttributionContext(
                setting=setting, x=x, targets=targets, layer=job.layer,
                layer_index=job.layer_index, batch_size=batch_size, seed=seed,
            )
        out[id(job)] = job.method.attribute(ctx).float().cpu().numpy()
    return out


def attribute(
    *,
    grids: Path | str,
    setting: str,
    model: str | ModelAdapter,
    layers: str | list[str] = "input,middle,final",
    methods: str | list[str] = "grad",
    heads: str | list[int] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    force: bool = False,
    wait: bool = False,
    cache_root: Path | str = Path("cache"),
    weights: str | Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[AttributeResult]:
    """Compute (or reuse) one attribution artifact per (layer, method) for a grid file.

    Everything is validated before anything is written. Artifacts that are up to date (same
    grid file, weights and config) are skipped unless ``force``; a run killed after some chunks
    resumes from its checkpoints.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    cache_root = Path(cache_root)
    dev = resolve_device(device)
    SETTINGS.get(setting)
    grid_file = load_grid_file(grids)
    specs = resolve_methods(methods)
    if isinstance(model, ModelAdapter):
        adapter = model
    else:
        from attrcli.models import create_model

        adapter = create_model(model, weights=weights, device=dev, cache_dir=cache_root)
    adapter.to(dev)
    grid_setting = create_setting(setting, adapter, grid_file.n)
    check_fit(grid_file, setting_name=setting, variant=grid_setting.variant, model=adapter)
    cells = grid_setting.resolve_cells(heads)
    layer_names = adapter.resolve_layers(layers)

    jobs, derived = _plan(grid_file, grid_setting, adapter, layer_names, specs, cells, cache_root)
    results: list[AttributeResult] = []
    todo = []
    for job in jobs + derived:
        if not force and _up_to_date(job):
            results.append(AttributeResult(job.key, job.path, "up to date"))
        else:
            todo.append(job)
    if not todo:
        return results
    with ExitStack() as stack:
        for job in todo:
            stack.enter_context(artifact_lock(job.path, wait=wait))
        compute = [j for j in todo if j.method.kind != "derived"]
        results += _run_jobs(grid_file, grid_setting, compute, cells, dev, batch_size, seed, progress)
        results += _run_derived([j for j in todo if j.method.kind == "derived"], progress)
    return results


def _job(grid_file, setting: GridSetting, model: ModelAdapter, layer: str, spec: MethodSpec, cells, cache_root) -> Job:
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
    return Job(key, key.path(cache_root), layer, model.layer_index(layer), spec, method, identity, inputs)


def _plan(grid_file, setting, model, layers, specs, cells, cache_root) -> tuple[list[Job], list[Job]]:
    jobs: list[Job] = []
    derived: list[Job] = []
    for layer in layers:
        for spec in specs:
            job = _job(grid_file, setting, model, layer, spec, cells, cache_root)
            if job.method.kind == "derived":
                base = MethodSpec(job.method.base)
                base_job = next((j for j in jobs if j.spec == base and j.layer == layer), None)
                if base_job is None:
                    base_job = _job(grid_file, setting, model, layer, base, cells, cache_root)
                    jobs.append(base_job)
                job.base_path = base_job.path
                derived.append(job)
            else:
                jobs.append(job)
    return jobs, derived


def _run_jobs(grid_file: GridFile, setting: GridSetting, jobs: list[Job], cells, dev, batch_size, seed, progress) -> list[AttributeResult]:
    if not jobs:
        return []
    chunk = _chunk_size(setting, len(cells), batch_size)
    chunks = -(-grid_file.count // chunk)
    checkpoints = {
        id(job): Checkpoint(job.path, {**job.identity, **job.inputs, "chunk": chunk, "count": grid_file.count})
        for job in jobs
    }
    resumed = {id(job) for job in jobs if checkpoints[id(job)].done()}
    started = time.perf_counter()
    label = f"{setting.name}/{setting.model.name}"
    for c in range(chunks):
        pending = [job for job in jobs if not checkpoints[id(job)].has(c)]
        if pending:
            rows = slice(c * chunk, min((c + 1) * chunk, grid_file.count))
            x = torch.from_numpy(grid_file.images[rows]).to(dev)
            labels = torch.from_numpy(grid_file.labels[rows]).to(dev)
            maps = _compute_chunk(setting, x, labels, cells, pending, batch_size, seed)
            for job in pending:
                checkpoints[id(job)].save(c, maps[id(job)])
        if progress:
            progress(f"attribute {label}", c + 1, chunks)
    seconds = time.perf_counter() - started
    results = []
    for job in jobs:
        checkpoint = checkpoints[id(job)]
        maps = np.concatenate([checkpoint.load(c) for c in range(chunks)])
        _write(job, maps, grid_file, setting, cells, seconds, dev, batch_size, seed)
        checkpoint.remove()
        status = "resumed" if id(job) in resumed else "computed"
        results.append(AttributeResult(job.key, job.path, status))
    return results


def _write(job: Job, maps: np.ndarray, grid_file: GridFile, setting: GridSetting, cells, seconds, dev, batch_size, seed) -> None:
    if not np.isfinite(maps).all():
        raise RuntimeError(f"{job.key.label()}: maps hold NaN or inf; nothing written")
    labels = grid_file.labels
    heads = [setting.head_of_cell(c) for c in cells]
    write_artifact(
        job.path,
        data={
            "maps": maps.astype(np.float32),
            "grid_index": np.arange(grid_file.count, dtype=np.int64),
            "cells": np.asarray(cells, dtype=np.int64),
            "heads": np.asarray(heads, dtype=np.int64),
            "classes": labels[:, cells].astype(np.int64),
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
            device=str(dev),
            seconds=seconds,
        ),
    )


def _run_derived(derived: list[Job], progress) -> list[AttributeResult]:
    from attrcli.store import read_artifact

    results = []
    for i, job in enumerate(derived):
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
        results.append(AttributeResult(job.key, job.path, "computed"))
        if progress:
            progress("derive", i + 1, len(derived))
    return results
