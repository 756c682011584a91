"""``run --dry-run``: what a study's run would compute, key by key, without computing anything.

The keys come from the same :func:`attrcli.stages.plan.plan` and the same freshness check
(:func:`~attrcli.stages.plan.up_to_date`) that ``attribute`` uses, on the grid files and weights
the run would use, so the keys listed to compute are the keys the run computes. Where a grid
file is still to be built (or rebuilt), or a model still to be trained, its content is unknown
and every key that depends on it is listed to compute.

The cost is an estimate in multiply-accumulates: the forward pass of one grid image (the
convolutions and linear layers, counted as the engine counts them for its thread policy) times
the passes a key needs per grid image and evaluated head (a backward pass counted as two
forward passes): 3 for a gradient method (shared with the other gradient methods of its layer
in the run), 3 × steps for IntGrad, 3 × samples (× steps) for SmoothGrad, one forward pass per
window, mask or channel for occlusion, RISE, Score-CAM and Ablation-CAM, none for derived keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from attrcli.errors import UserError
from attrcli.stages.studycheck import StudyPlan

__all__ = ["plan_study"]


def _would_train(name: str, weights: str | None, cache_root: Path) -> bool:
    """Whether creating model ``name`` would train it (a digits model not yet in the cache)."""
    from attrcli.models import MODELS
    from attrcli.models.digits import digits_weights, read_record

    spec = MODELS.get(name)
    return (weights is None and getattr(spec, "default_weights", None) is digits_weights
            and read_record(cache_root, name) is None)


def _adapter(name: str, weights: str | None, cache_root: Path):
    """The model with its weights as the run loads them (weights hash set), or None when it would
    first have to be trained."""
    from attrcli.models import create_model, state_dict_hash

    if _would_train(name, weights, cache_root):
        return None
    adapter = create_model(name, weights=weights, cache_dir=cache_root)
    if not adapter.weights_hash:
        adapter.weights_hash = state_dict_hash(adapter.module.state_dict())
    return adapter


def _grid_statuses(planned: StudyPlan, cache_root: Path, force: bool) -> dict[Path, str]:
    from attrcli.stages.import_grids import import_grids
    from attrcli.stages.make_grids import make_grids

    study = planned.study
    out: dict[Path, str] = {}
    for source in planned.grids:
        if source.kind == "file":
            out[source.path] = "given"
        elif source.kind == "import":
            _, status = import_grids(source.source, variant=source.variant, model=study.models[0].name,
                                     out_dir=source.path.parent, force=force, dry_run=True)
            out[source.path] = status
        elif force or not source.path.exists() or any(_would_train(m.name, m.weights, cache_root)
                                                       for m in study.models if m.name in source.models):
            out[source.path] = "to build"
        else:
            from attrcli.stages.studycheck import make_grids_args

            seen: dict[Path, str] = {}
            make_grids(**make_grids_args(study, source), out_dir=source.path.parent, cache_dir=cache_root,
                       device="cpu", dry_run=True, report=lambda path, status: seen.__setitem__(Path(path), status))
            out[source.path] = seen.get(source.path, "to build")
    return out


def _passes(job, adapter) -> float:
    """Forward-pass equivalents per grid image and evaluated head (module docstring)."""
    method, config = job.method, job.method.config
    if method.kind == "derived":
        return 0.0
    if method.kind == "gradient" or job.spec.name in ("lrp",):
        return 3.0
    steps = getattr(config, "steps", None)
    samples = getattr(config, "samples", None)
    if samples is not None:
        return 3.0 * samples * (steps or 1)
    if steps is not None:
        return 3.0 * steps
    if getattr(config, "masks", None) is not None:
        return float(config.masks)
    h, w = job.setting.map_size(job.layer_index)
    if getattr(config, "k", None) is not None and getattr(config, "s", None) is not None:
        k, s = config.k, config.s
        return float(math.ceil((h + k - 1) / s) * math.ceil((w + k - 1) / s))
    if job.spec.name in ("scorecam", "ablationcam"):
        return float(_channels(adapter, job.layer_index))
    return 3.0


def _channels(adapter, layer_index: int) -> int:
    """Channels of the activations at a layer (3 at the input)."""
    if layer_index == 0:
        return 3
    import torch

    with torch.device("meta"):
        x = torch.zeros(1, 3, adapter.cell_size, adapter.cell_size)
        for _, block in adapter.blocks[:layer_index]:
            x = block(x)
    return int(x.shape[1])


def plan_study(planned: StudyPlan, *, cache_root: Path, force: bool = False) -> dict[str, Any]:
    """The dry run of ``planned`` as data (see :func:`attrcli.stages.run.dry_run`)."""
    from attrcli.data.gridfile import load_grid_file
    from attrcli.engine.attribute import batch_macs
    from attrcli.stages.plan import plan, up_to_date, weightless
    from attrcli.stages.studycheck import stand_in_grid

    study = planned.study
    statuses = _grid_statuses(planned, cache_root, force)
    known = {p: s in ("up to date", "given") for p, s in statuses.items()}
    adapters: dict[str, Any] = {}
    grid_files: dict[Path, Any] = {}
    jobs_out: list[dict[str, Any]] = []
    by_pair: dict[tuple[str, str], dict[str, Any]] = {}
    arrays: list[dict[str, Any]] = []
    for request in planned.requests:
        entry = next(m for m in study.models if m.name == request.model)
        if entry.name not in adapters:  # once a model: its weights, the adapter planned with, MACs
            loaded = _adapter(entry.name, entry.weights, cache_root)
            shown = loaded if loaded is not None else (weightless(entry.name) or _random(entry.name))
            adapters[entry.name] = (loaded, shown,
                                    batch_macs(weightless(entry.name) or shown, study.grids.n, 1) or 0.0)
        adapter, shown, per_image = adapters[entry.name]
        path = Path(request.grids)
        checked = known[path] and adapter is not None
        if checked:
            if path not in grid_files:
                grid_files[path] = load_grid_file(path)
            grid = grid_files[path]
        else:
            source = next(g for g in planned.grids if g.path == path)
            grid = stand_in_grid(path, n=study.grids.n, cell_size=planned.cell_size, variant=source.variant, count=1)
        try:
            planned_jobs = plan(request, adapter=shown, grid_file=grid)
        except UserError as exc:  # checked before; a grid file that changed since is named here
            raise UserError(f"{path}: {exc}") from None
        count = grid.count if checked else None
        pair = by_pair.setdefault((entry.name, str(request.setting)), {
            "model": entry.name, "setting": str(request.setting), "grids": str(path), "to_compute": [],
            "up_to_date": [], "macs": 0.0, "grid_images": count,
        })
        if pair not in jobs_out:
            jobs_out.append(pair)
        todo = 0
        for job in planned_jobs.jobs:
            label = f"{job.key.grids}/{job.key.setting}/{job.key.model}/{job.key.layer}/{job.key.method}"
            fresh = checked and not force and up_to_date(job)
            if fresh:
                pair["up_to_date"].append(label)
                continue
            pair["to_compute"].append(label)
            todo += 1
            images = count if count is not None else _planned_count(study, job.setting.variant)
            pair["macs"] += per_image * _passes(job, shown) * len(job.cells) * (images or 0)
        if todo and study.launcher.kind != "inline":  # one array per request: a task per shard
            arrays.append({"model": entry.name, "setting": str(request.setting), "keys": todo,
                           "tasks": study.launcher.shards, "partition": study.launcher.partition})
    launcher = {"kind": study.launcher.kind, "arrays": arrays}
    return {
        "study": study.name, "source": study.source, "sha256": study.text_hash, "overrides": dict(study.overrides),
        "grids": [{"variant": g.variant, "path": str(g.path), "kind": g.kind, "status": statuses[g.path]}
                  for g in planned.grids],
        "jobs": jobs_out,
        "launcher": launcher,
        "total": {"to_compute": sum(len(j["to_compute"]) for j in jobs_out),
                  "up_to_date": sum(len(j["up_to_date"]) for j in jobs_out),
                  "macs": sum(j["macs"] for j in jobs_out)},
    }


def _random(name: str):
    from attrcli.models import create_model

    adapter = create_model(name, weights="random")
    adapter.weights_hash = ""
    return adapter


def _planned_count(study, variant: str) -> int | None:
    g = study.grids
    return g.count_distinct if variant == "distinct" else g.count_corners
