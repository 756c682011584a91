"""Planning of attribution: the request, the keys it computes and whether they are up to date.

:func:`plan` is the one planning function that ``attribute``, ``launch``, ``plan`` and ``status``
share: it validates an :class:`AttributeRequest` against its grid file and model (on a weightless
copy of a registered model unless an adapter is given) and lists the :class:`Job` of every key.
:func:`up_to_date` says whether a job's artifact is fresh (:func:`attrcli.store.freshness`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attrcli.data.gridfile import GridFile, check_fit, load_grid_file
from attrcli.engine.precision import DEFAULT as FP32
from attrcli.engine.precision import (
    check_device,
    key_suffix,
    split_key_method,
    validate_precision,
)
from attrcli.engine.shards import shard_jobs, shard_rows
from attrcli.errors import UserError
from attrcli.methods import METHODS, Method, MethodSpec, parse_method, split_methods
from attrcli.methods.applicability import check_method
from attrcli.models import MODELS, ModelSpec, create_model
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import SETTINGS, GridSetting, create_setting
from attrcli.store import ArtifactKey, file_hash
from attrcli.store.freshness import Freshness, freshness
from attrcli.store.keys import glob_escape, root_of


@dataclass(frozen=True, kw_only=True)
class AttributeRequest:
    """What one ``attribute`` call (inline, launched, planned or asked the status of) computes.

    ``setting``: one name, a comma list or a list (all of one grid variant); ``layers`` and
    ``methods``: comma lists or lists (``methods="all"``: every method that applies); ``heads``:
    the evaluated cells. ``batch_size`` counts grid images per forward pass (the chunking of
    checkpoints and of sampling methods). ``shard=(i, N)`` computes rows of shard ``i`` only;
    ``shards`` is the shard count of a launched run (both shape sampling methods' identity).
    ``wait``: wait for another process's artifact lock instead of failing. ``precision``
    (:mod:`attrcli.engine.precision`): ``fp32`` (exact, the default; keys as ever), ``bf16`` or
    ``tf32`` (CUDA), which key their artifacts ``method@bf16`` apart from fp32's.
    """

    grids: Path | str
    setting: str | list[str] = "gridpg"
    model: str | ModelAdapter = "digits-vgg11"
    layers: str | list[str] = "input,middle,final"
    methods: str | list[str] = "grad"
    heads: str | list[int] | None = None
    weights: str | Path | None = None
    cache_root: Path | str = field(default=Path("cache"))
    seed: int = 0
    batch_size: int = 32
    device: str | torch.device = "cpu"
    force: bool = False
    wait: bool = False
    shard: tuple[int, int] | None = None
    shards: int = 1
    precision: str = FP32

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", validate_precision(self.precision))
        kind = str(self.device).partition(":")[0]
        if kind in ("cpu", "cuda"):  # "auto" is checked once resolved (run_attribute, launch)
            check_device(self.precision, kind)
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.shards < 1:
            raise UserError(f"--shards must be at least 1, got {self.shards}")
        if self.shard is not None:
            index, count = self.shard
            if not (count >= 1 and 0 <= index < count):
                raise UserError(f"invalid shard {index}/{count}: need 0 <= i < N")
        object.__setattr__(self, "cache_root", Path(self.cache_root))

    @property
    def shard_count(self) -> int:
        """The number of shards the grid rows are cut into (1: not sharded)."""
        return self.shard[1] if self.shard is not None else self.shards

    def replace(self, **changes: Any) -> AttributeRequest:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)


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
        check_method(setting, spec.method_class, layer)
    except UserError:
        return False
    return True


def _job(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layer: str, spec: MethodSpec,
    cache_root: Path, sampling: dict[str, int], precision: str = FP32,
) -> Job:
    model: ModelAdapter = setting.model
    spec = spec.canonical_for(cell_size=model.cell_size, layer=layer)
    method = spec.build(cell_size=model.cell_size, layer=layer)
    check_method(setting, method, layer)  # model, layer and method fit (e.g. no ViT token-layer occlusion)
    method.check(layer=layer, map_size=setting.map_size(model.layer_index(layer)))
    key = ArtifactKey(
        "attributions", grid_file.name, setting.name, model.name, layer, spec.canonical() + key_suffix(precision)
    )
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
    if precision != FP32:  # fp32 identities stay as they were, so fp32 artifacts stay fresh
        identity["precision"] = precision
    inputs = {"grids": grid_file.hash, "model": model.weights_hash}
    return Job(
        key, key.path(cache_root), setting, list(cells), layer, model.layer_index(layer), spec,
        method, identity, inputs,
    )


def plan_jobs(
    grid_file: GridFile, setting: GridSetting, cells: list[int], layers: list[str],
    specs: list[MethodSpec], cache_root: Path, *, seed: int = 0, batch_size: int = 32,
    shards: int = 1, applicable_only: bool = False, precision: str = FP32,
) -> tuple[list[Job], list[Job]]:
    """Jobs that run the model, and derived jobs (each after the job of its base method).

    ``seed``, ``batch_size`` and ``shards`` (the shard count of a sharded run) enter the identity
    of sampling methods only (:func:`sampling_identity`). ``applicable_only`` (``--method all``)
    skips the methods the setting refuses at a layer instead of failing on them (guided backprop
    on a GELU model, say). ``precision`` keys and identifies every job, derived ones too: a
    smoothed key derives from the base artifact of its own precision (``s-ixg:k=3@bf16`` from
    ``ixg@bf16``).
    """
    precision = validate_precision(precision)
    sampling = sampling_identity(seed=seed, batch_size=batch_size, count=grid_file.count, shards=shards)
    jobs: list[Job] = []
    derived: list[Job] = []
    for layer in layers:
        for spec in specs:
            if applicable_only and not _applies(setting, spec, layer):
                continue
            job = _job(grid_file, setting, cells, layer, spec, cache_root, sampling, precision)
            if job.kind != "derived":
                if not any(j.spec == job.spec and j.layer == layer for j in jobs):
                    jobs.append(job)
                continue
            base = MethodSpec(job.method.base)
            base_job = next((j for j in jobs if j.spec == base and j.layer == layer), None)
            if base_job is None:
                base_job = _job(grid_file, setting, cells, layer, base, cache_root, sampling, precision)
                jobs.append(base_job)
            job.base_path = base_job.path
            if not any(d.spec == job.spec and d.layer == layer for d in derived):
                derived.append(job)
    return jobs, derived




def setting_names(setting: str | list[str]) -> list[str]:
    """The registered settings a ``--setting`` value names (comma list or list), deduplicated."""
    names = [s.strip() for s in setting.split(",")] if isinstance(setting, str) else list(setting)
    names = list(dict.fromkeys(s for s in names if s))
    if not names:
        raise UserError(f"no setting given; valid: {', '.join(SETTINGS.names())}")
    for name in names:
        SETTINGS.get(name)
    return names


def weightless(model: str) -> ModelAdapter | None:
    """The registered model's adapter on the meta device (no weights), or None for a factory."""
    spec = MODELS.get(model)
    if not isinstance(spec, ModelSpec):
        return None
    with torch.device("meta"):
        return spec.adapter(spec.factory())


def resolve_settings(
    grid_file: GridFile, names: list[str], model: ModelAdapter, layers: str | list[str],
    heads: str | list[int] | None, *, geometry: bool = True,
) -> tuple[list[tuple[GridSetting, list[int]]], list[str]]:
    """Each setting with its evaluated cells, and the layers; raises UserError on any misfit.

    ``geometry=False`` skips the feature-map check, for a model whose weightless copy passed it.
    """
    layer_names = model.resolve_layers(layers)
    out = []
    for name in names:
        setting = create_setting(name, model, grid_file.n)
        check_fit(grid_file, setting_name=name, variant=setting.variant, model=model)
        if geometry:
            setting.check_geometry()
        out.append((setting, setting.resolve_cells(heads)))
    return out, layer_names


@dataclass
class Plan:
    """What a request computes: its grid file, settings (with cells) and layers, the jobs that
    run the model and the derived jobs, per setting in order (shard jobs for ``shard``)."""

    grid_file: GridFile
    adapter: ModelAdapter
    settings: list[tuple[GridSetting, list[int]]]
    layers: list[str]
    model_jobs: list[Job]
    derived: list[Job]
    rows: range | None = None  # the grid rows of the request's shard

    @property
    def jobs(self) -> list[Job]:
        """Every job: per setting its model jobs, then its derived jobs."""
        order = {id(s): i for i, (s, _) in enumerate(self.settings)}
        both = self.model_jobs + self.derived
        return sorted(both, key=lambda j: (order[id(j.setting)], j.kind == "derived"))


def plan(
    request: AttributeRequest, *, adapter: ModelAdapter | None = None, grid_file: GridFile | None = None,
    geometry: bool = True,
) -> Plan:
    """The jobs of ``request``, validated; bad input is a one-line UserError before any weights
    are loaded or anything is written.

    Without ``adapter`` a registered model is built on the meta device (no weights) and a
    ``module:attr`` factory is called with random weights (its jobs then do not compare
    weights); an adapter given as the request's model is used as is. ``geometry=False`` skips
    the feature-map check for an adapter whose weightless copy passed it.
    """
    names = setting_names(request.setting)
    grid_file = grid_file if grid_file is not None else load_grid_file(request.grids)
    specs = resolve_methods(request.methods)
    if adapter is None and isinstance(request.model, ModelAdapter):
        adapter = request.model
    if adapter is None:
        adapter = weightless(request.model)
    if adapter is None:
        adapter = create_model(request.model, weights="random")
        adapter.weights_hash = ""
    settings, layer_names = resolve_settings(
        grid_file, names, adapter, request.layers, request.heads, geometry=geometry
    )
    model_jobs: list[Job] = []
    derived: list[Job] = []
    for grid_setting, cells in settings:
        jobs, more = plan_jobs(
            grid_file, grid_setting, cells, layer_names, specs, Path(request.cache_root),
            seed=request.seed, batch_size=request.batch_size, shards=request.shard_count,
            applicable_only=wants_all(request.methods), precision=request.precision,
        )
        model_jobs += jobs
        derived += more
    rows = None
    if request.shard is not None:
        rows = shard_rows(grid_file.count, request.shard)
        model_jobs = shard_jobs(model_jobs, request.shard, request.cache_root)
        derived = shard_jobs(derived, request.shard, request.cache_root)
    return Plan(grid_file, adapter, settings, layer_names, model_jobs, derived, rows)


def _expected(job: Job) -> tuple[dict[str, Any], Any] | None:
    """What the artifact of ``job`` must record, and how its method spec is read (an artifact of
    an earlier version may spell its spec with default parameters); None when a derived job's
    base artifact is missing."""
    inputs = dict(job.inputs)
    if job.base_path is not None:
        if not job.base_path.exists():
            return None
        inputs["base"] = file_hash(job.base_path)

    def recorded(prov: dict) -> dict:
        identity = dict(prov.get("config", {}).get("identity") or {})
        stored = str(identity.get("method", ""))  # a plugin's name holds a colon: module:Class[:k=v]
        same_name = stored == job.spec.name or stored.startswith(job.spec.name + ":")
        identity["method"] = job.identity["method"] if same_name else None
        return {**prov, "config": {**prov.get("config", {}), "identity": identity}}

    return {"inputs": inputs, "config.identity": job.identity}, recorded


def _fresh_at(job: Job, path: Path) -> bool:
    """``path`` holds ``job``'s computation: same inputs and identity."""
    expected = _expected(job)
    if expected is None:
        return False
    fields, recorded = expected
    return freshness(path, fields, recorded=recorded).fresh


def up_to_date(job: Job) -> bool:
    """The artifact exists and was made from the same inputs and config."""
    if not job.path.exists():
        adopt_legacy(job)
    return job.path.exists() and _fresh_at(job, job.path)


def key_freshness(job: Job) -> Freshness:
    """Where ``job``'s artifact stands for ``status`` and ``plan``: the grid file, the weights
    (when the job knows their hash) and the config are compared, in that order."""
    fields: dict[str, Any] = {"inputs.grids": job.inputs["grids"]}
    if job.inputs.get("model"):
        fields["inputs.model"] = job.inputs["model"]
    fields["config.identity"] = job.identity
    labels = {"inputs.grids": "grid file", "inputs.model": "weights", "config.identity": "config"}
    return freshness(job.path, fields, labels=labels)


def adopt_legacy(job: Job) -> None:
    """Move an artifact written under a non-canonical spelling of the job's spec (earlier versions
    keyed ``intgrad:steps=20`` apart from ``intgrad``) to the job's canonical key, when it holds
    the same computation; its content is unchanged. Only keys of the job's own precision are
    considered."""
    key = job.key
    root = root_of(job.path)
    _, precision = split_key_method(key.method)
    parts = {name: glob_escape(getattr(key, name)) for name in ("grids", "setting", "model", "layer")}
    for found in ArtifactKey.glob(root, key.stage, **parts):
        try:
            text, found_precision = split_key_method(found.method)
            spec = parse_method(text)
        except UserError:
            continue
        if spec.name != job.spec.name or found.method == key.method or found_precision != precision:
            continue
        try:
            same = spec.canonical_for(cell_size=job.setting.model.cell_size, layer=job.layer) == job.spec
        except UserError:
            continue
        path = found.path(root)
        if same and _fresh_at(job, path):
            path.replace(job.path)
            return
