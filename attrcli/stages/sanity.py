"""The ``sanity`` stage: model-parameter randomisation checks on the grids (Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1), cached.

The model's parameters fall into groups: the *head* (every parameter outside the feature blocks,
and the blocks after the last stage), then each stage of ``all`` (:attr:`ModelAdapter.stage_layers`:
the blocks after the previous stage up to this one's output). *Cascading* randomisation
re-initialises the head, then the stages from the top down, cumulatively; *independent*
randomisation re-initialises one group at a time. Step ``trained`` is the model as it is.

Re-initialisation is each module's own ``reset_parameters()`` (PyTorch's default initialisation:
Kaiming-uniform convolutions and linear layers, BatchNorm back to weight 1, bias 0 and fresh
running statistics); a parameter no such module owns (a class token, a layer scale) is drawn
from N(0, 0.02²). Each group is drawn on the CPU from its own seed (``--seed`` and the group's
name), so cascading step k+1 holds the weights of step k plus one more group.

The maps of every step are computed by the attribute stage (:func:`run_attribute`) under the
step's own cache folder (:class:`~attrcli.store.keys.SanityKey`), the randomised weights named
by a hash of the trained weights, the groups and the seed: a rerun finds them up to date, and a
killed run resumes from the attribute stage's checkpoints. Each key's similarities to the
trained model's maps (:mod:`attrcli.metrics.similarity`: Spearman signed and absolute, SSIM,
localization score change) with bootstrap intervals of their means (grid images resampled) are
stored in one artifact per key, recomputed only when a map changed. ``region="cell"`` compares
each target's own cell only (:func:`~attrcli.metrics.similarity.cell_crops`): where the setting
fixes the map's support (DiFull, a sliding head's window) the zeros outside the cell are shared
whatever the weights.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from attrcli.data.gridfile import load_grid_file
from attrcli.devices import resolve_device
from attrcli.errors import UserError
from attrcli.metrics.intervals import BootstrapConfig, mean_interval
from attrcli.metrics.localization import chunk_rows
from attrcli.metrics.selection import inspect_attribution
from attrcli.metrics.similarity import SIMILARITY_CONFIG, cell_crops, spearman_maps, ssim_maps
from attrcli.models import ModelAdapter, create_model
from attrcli.progress import Progress
from attrcli.stages.attribute import run_attribute
from attrcli.stages.caching import UP_TO_DATE, status_of
from attrcli.stages.plan import AttributeRequest, AttributeResult, plan, weightless
from attrcli.stages.score import score_one
from attrcli.store import artifact_lock, content_hash, file_hash, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.keys import SANITY_MODES, SANITY_REGIONS, SanityKey

__all__ = ["MEASURES", "SanityResult", "randomisation_steps", "randomise", "run_sanity", "sanity"]

TRAINED = "trained"
HEAD = "head"
#: The similarity measures, in the order of a sanity artifact's rows.
MEASURES = ("spearman", "spearman_abs", "ssim", "score_change")
TOKEN_STD = 0.02  # N(0, 0.02²) for parameters no module with reset_parameters owns
REINIT_VERSION = 1


@dataclass
class SanityResult:
    """One key's similarities to the trained model's maps, step by step (trained first)."""

    path: Path
    key: str  # setting/model/layer/method of the trained model's attribution
    status: str
    mode: str
    steps: list[str]
    randomised: list[list[str]]  # the groups randomised at each step
    means: dict[str, list[float]]  # measure -> mean per step (NaN values left out)
    intervals: dict[str, list[tuple[float, float]]]  # measure -> bootstrap interval per step
    maps: dict[str, str] = field(default_factory=dict)  # step -> status of its attribution
    region: str = "grid"  # the pixels compared: the whole grid, or each target's cell

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if not np.isfinite(value) else float(value)

        out: dict[str, Any] = {
            "path": str(self.path), "key": self.key, "status": self.status, "mode": self.mode,
            "region": self.region, "steps": self.steps, "randomised": self.randomised, "maps": self.maps,
        }
        for name in MEASURES:
            out[name] = [clean(v) for v in self.means[name]]
            out[f"{name}_ci"] = [[clean(lo), clean(hi)] for lo, hi in self.intervals[name]]
        return out


def _groups(adapter: ModelAdapter) -> dict[str, list[nn.Module]]:
    """The modules of each parameter group: ``head``, then the stages top down."""
    ends = [adapter.layer_index(layer) for layer in adapter.stage_layers]
    order = sorted(range(len(ends)), key=lambda i: ends[i])
    stages: dict[str, list[nn.Module]] = {}
    start = 0
    for i in order:
        stages[adapter.stage_layers[i]] = [m for _, m in adapter.blocks[start : ends[i] + 1]]
        start = ends[i] + 1
    in_blocks = {id(p) for _, block in adapter.blocks[:start] for p in block.parameters()}
    rest = [m for _, m in adapter.blocks[start:]]
    loose = [p for p in adapter.module.parameters() if id(p) not in in_blocks]
    head = _HeadParameters(loose) if loose else None
    groups = {HEAD: rest + ([head] if head is not None else [])}
    for name in reversed(list(stages)):
        groups[name] = stages[name]
    return groups


class _HeadParameters(nn.Module):
    """Holds (without owning) the parameters outside the blocks, for :func:`randomise`."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.loose = params


def randomisation_steps(adapter: ModelAdapter, mode: str) -> list[tuple[str, list[str]]]:
    """``(step, groups randomised)`` of each step, ``trained`` first: cascading from the head
    down through the stages, or each group alone (independent)."""
    if mode not in SANITY_MODES:
        raise UserError(f"unknown randomisation mode {mode!r}; valid: {', '.join(SANITY_MODES)}")
    names = list(_groups(adapter))
    steps = [(TRAINED, [])]
    for i, name in enumerate(names):
        steps.append((name, names[: i + 1] if mode == "cascading" else [name]))
    return steps


def _group_seed(seed: int, group: str) -> int:
    digest = hashlib.sha256(f"attrcli-sanity:{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def randomise(adapter: ModelAdapter, groups: list[str], *, seed: int) -> None:
    """Re-initialise the parameters of ``groups`` in place (on the CPU; see the module text)."""
    known = _groups(adapter)
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise UserError(f"model {adapter.name} has no parameter group {unknown[0]!r}; valid: {', '.join(known)}")
    module_of: dict[int, nn.Module] = {}
    for module in adapter.module.modules():
        if callable(getattr(module, "reset_parameters", None)):
            for p in module.parameters(recurse=False):
                module_of[id(p)] = module
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for group in groups:
            torch.manual_seed(_group_seed(seed, group))
            params = []
            for module in known[group]:
                params += module.loose if isinstance(module, _HeadParameters) else list(module.parameters())
            done: set[int] = set()
            for p in params:
                owner = module_of.get(id(p))
                if owner is not None and id(owner) not in done:
                    owner.reset_parameters()
                    done.add(id(owner))
                elif owner is None:
                    p.normal_(0.0, TOKEN_STD)
            for module in known[group]:  # fresh running statistics too (BatchNorm)
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._NormBase) and id(sub) not in done:
                        sub.reset_running_stats()


def sanity(*, progress: Progress | None = None, mode: str = "cascading", region: str = "grid",
           bootstrap: BootstrapConfig | None = None, **fields: Any) -> list[SanityResult]:
    """:func:`run_sanity` of ``AttributeRequest(**fields)``: the library's keyword form
    (``sanity(grids=..., model="digits-vgg11", layers="input,final", methods="grad,gradcam",
    mode="cascading")``)."""
    return run_sanity(AttributeRequest(**fields), mode=mode, region=region, bootstrap=bootstrap, progress=progress)


def run_sanity(
    request: AttributeRequest, *, mode: str = "cascading", region: str = "grid",
    bootstrap: BootstrapConfig | None = None, progress: Progress | None = None,
) -> list[SanityResult]:
    """Randomise the model step by step (``mode``: cascading or independent, seeded by
    ``request.seed``), compute every key's maps on each randomised model through the attribute
    stage, and compare them with the trained model's maps (over the whole grid, or with
    ``region="cell"`` over each target's cell); one result per key of ``request``.

    Everything is validated before weights are loaded or anything is written; maps, scores and
    similarities are cached (a rerun computes nothing; a killed run resumes).
    """
    key = SanityKey(mode, int(request.seed))  # checks the mode and seed
    if region not in SANITY_REGIONS:
        raise UserError(f"unknown region {region!r}; valid: {', '.join(SANITY_REGIONS)}")
    if request.shard is not None or request.shards > 1:
        raise UserError("sanity runs inline: drop --shard/--shards")
    bootstrap = bootstrap or BootstrapConfig(seed=int(request.seed))
    dev = resolve_device(request.device)
    grid_file = load_grid_file(request.grids)
    model = request.model
    preview = None if isinstance(model, ModelAdapter) else weightless(model)
    if preview is not None:
        plan(request, adapter=preview, grid_file=grid_file)
    adapter = model if isinstance(model, ModelAdapter) else create_model(
        model, weights=request.weights, device="cpu", cache_dir=request.cache_root, progress=progress
    )
    home = next(adapter.module.parameters(), torch.empty(0)).device  # where a given adapter goes back to
    adapter.to("cpu")
    if not adapter.weights_hash:
        from attrcli.models import state_dict_hash

        adapter.weights_hash = state_dict_hash(adapter.module.state_dict())
    planned = plan(request.replace(model=adapter), adapter=adapter, grid_file=grid_file)  # bad input first
    steps = randomisation_steps(adapter, mode)
    trained_hash = adapter.weights_hash
    trained_state = {k: v.detach().clone() for k, v in adapter.module.state_dict().items()}
    per_step: dict[str, list[AttributeResult]] = {}
    try:
        for step, groups in steps:
            adapter.to("cpu")
            adapter.module.load_state_dict(trained_state)
            adapter.weights_hash = trained_hash
            root = request.cache_root
            if groups:
                randomise(adapter, groups, seed=key.seed)
                adapter.weights_hash = content_hash("randomised", trained_hash, groups, key.seed, REINIT_VERSION)
                root = key.step_root(request.cache_root, step)
            per_step[step] = run_attribute(request.replace(model=adapter, cache_root=root), progress=progress)
    finally:
        adapter.to("cpu")
        adapter.module.load_state_dict(trained_state)
        adapter.weights_hash = trained_hash
        adapter.to(home)
    by_key = {step: {r.key: r for r in found} for step, found in per_step.items()}
    results = []
    for job in planned.jobs:
        trained = by_key[TRAINED][job.key]
        paths = {step: by_key[step][trained.key].path for step, _ in steps}
        statuses = {step: by_key[step][trained.key].status for step, _ in steps}
        results.append(_similarity(
            key, request.cache_root, trained, paths, statuses, steps, bootstrap, dev, progress, request.wait,
            request.force, region,
        ))
    return results


def _config(key: SanityKey, steps: list[tuple[str, list[str]]], bootstrap: BootstrapConfig, region: str) -> dict:
    return {
        "stage": "sanity", "mode": key.mode, "seed": key.seed, "region": region, "steps": [s for s, _ in steps],
        "randomised": [g for _, g in steps], "reinit": REINIT_VERSION, "measures": SIMILARITY_CONFIG,
        "intervals": bootstrap.to_dict(), "version": 1,
    }


def _similarity(
    key: SanityKey, cache_root: Path, trained: AttributeResult, paths: dict[str, Path],
    statuses: dict[str, str], steps: list[tuple[str, list[str]]], bootstrap: BootstrapConfig,
    device: torch.device, progress: Progress | None, wait: bool, force: bool, region: str,
) -> SanityResult:
    out = key.similarity_path(cache_root, trained.key, region)
    inputs = {step: file_hash(path) for step, path in paths.items()}
    config = _config(key, steps, bootstrap, region)
    status = status_of(out, inputs, config, force)
    names = [s for s, _ in steps]
    if status != UP_TO_DATE:
        with artifact_lock(out, wait=wait):
            start = time.perf_counter()
            values = _measures(paths, names, device, progress, wait, region)
            means = np.stack([[_nanmean(values[m][s]) for s in range(len(names))] for m in MEASURES])
            bounds = np.stack([[mean_interval(values[m][s], bootstrap) for s in range(len(names))]
                               for m in MEASURES])
            write_artifact(
                out,
                data={**values, "means": means, "intervals": bounds},
                attrs={"key": trained.key.label(), "mode": key.mode, "seed": key.seed, "region": region,
                       "steps": names,
                       "randomised": [g for _, g in steps], "measures": list(MEASURES),
                       "attribution": str(trained.path), **bootstrap.attrs()},
                provenance=make_provenance(config=config, inputs=inputs, seed=key.seed, device=str(device),
                                           seconds=time.perf_counter() - start),
            )
    stored = read_artifact(out, names=["means", "intervals"])
    means, bounds = stored.data["means"], stored.data["intervals"]
    return SanityResult(
        path=out, key=trained.key.label(), status=status, mode=key.mode, steps=names,
        randomised=[list(g) for _, g in steps],
        means={m: [float(v) for v in means[i]] for i, m in enumerate(MEASURES)},
        intervals={m: [(float(lo), float(hi)) for lo, hi in bounds[i]] for i, m in enumerate(MEASURES)},
        maps=statuses, region=region,
    )


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _measures(
    paths: dict[str, Path], names: list[str], device: torch.device, progress: Progress | None, wait: bool,
    region: str = "grid",
) -> dict[str, np.ndarray]:
    """``(steps, N, T)`` values of every measure, maps read a chunk of grid images at a time."""
    sources = {step: inspect_attribution(path) for step, path in paths.items()}
    reference = sources[TRAINED]
    count, targets = len(reference.identity.grid_index), len(reference.identity.cells)
    cells = np.asarray(reference.identity.cells) if region == "cell" else None

    def crop(maps: np.ndarray) -> np.ndarray:
        return maps if cells is None else cell_crops(maps, cells, reference.n)

    scores = {}
    for step, source in sources.items():
        if not np.array_equal(source.identity.grid_index, reference.identity.grid_index):
            raise UserError(f"{paths[step]} covers other grid images than {paths[TRAINED]}")
        result, _ = score_one(source, source.root, force=False, device=device, progress=None, wait=wait)
        scores[step] = np.asarray(read_artifact(result.path, names=["scores"]).data["scores"], dtype=np.float64)
    values = {m: np.zeros((len(names), count, targets)) for m in ("spearman", "spearman_abs", "ssim")}
    with h5py.File(paths[TRAINED], "r") as handle:
        base = handle["maps"]
        rows = max(1, chunk_rows(base.shape, reference.image_size) // 2)
        for start in range(0, count, rows):
            stop = min(count, start + rows)
            first = np.asarray(base[start:stop])
            for s, step in enumerate(names):
                with h5py.File(paths[step], "r") as other:
                    second = np.asarray(other["maps"][start:stop])
                values["spearman"][s, start:stop] = spearman_maps(crop(first), crop(second))
                values["spearman_abs"][s, start:stop] = spearman_maps(crop(first), crop(second), absolute=True)
                values["ssim"][s, start:stop] = ssim_maps(
                    first, second, image_size=reference.image_size, cells=cells, n=reference.n
                )
            if progress is not None:
                progress(f"sanity {reference.key.label()}", stop, count)
    values["score_change"] = np.stack([scores[step] - scores[TRAINED] for step in names])
    return values
