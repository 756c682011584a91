"""``attribute``: compute attribution maps for a grid file, one artifact per key.

One invocation takes several settings, layers and methods. Everything is validated first, on a
weightless copy of the model where possible, so bad input fails before any weights are loaded
or trained and before anything is written. Grid images are then processed in chunks of
``batch_size``: per chunk the gradient methods share one forward and one backward per target
across all their layers (:mod:`attrcli.engine.gradients`; guided backprop shares the forward
and adds one backward), methods that run the model share the layer's prefix, and derived
methods (smoothing) are computed afterwards from the cached maps of their base method.
Finished chunks are checkpointed, so a killed run resumes (:mod:`attrcli.engine.checkpoint`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from attrcli.engine.allocator import retain_freed_memory
from attrcli.engine.checkpoint import Checkpoint, InMemory
from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import GUIDED, PLAIN, shared_gradients
from attrcli.engine.grids import GridFile, check_fit, load_grid_file
from attrcli.engine.jobs import (
    AttributeResult,
    Job,
    plan_jobs,
    resolve_methods,
    up_to_date,
    wants_all,
    write_derived,
    write_maps,
)
from attrcli.errors import UserError
from attrcli.models import MODELS, ModelAdapter, ModelSpec, create_model, state_dict_hash
from attrcli.models import resolve_device as resolve_model_device
from attrcli.settings import SETTINGS, GridSetting, create_setting
from attrcli.store import artifact_lock
from attrcli.threads import forward_macs, threads_for, torch_threads

__all__ = ["AttributeResult", "attribute", "compute_maps", "resolve_device", "resolve_methods"]

Progress = Callable[[str, int, int], None]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N``."""
    if isinstance(device, torch.device):
        return device
    return resolve_model_device(device)


@contextmanager
def channels_last(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Convolution weights in channels-last layout, and frozen, while maps are computed on the CPU.

    oneDNN's channels-last convolutions are faster on this kind of CPU (measured: the forward of
    VGG11 on a 448-pixel grid 1.5-1.7× faster, ResNet18 1.4×, their backwards 1.1-1.6×); the
    activations follow the weights' layout, so inputs need no change. All parameters are frozen
    (``requires_grad`` off) meanwhile: attribution never differentiates them, and on torch 2.14
    a backward into the parameters of channels-last digits-resnet18 on 64-pixel grids corrupts
    memory (gradients with respect to activations, all the engine asks for, are unaffected).
    The original tensors and flags are put back on exit. Not applied on CUDA, where it was not
    measured.
    """
    saved = []
    if device.type == "cpu":
        for param in module.parameters():
            saved.append((param, param.data, param.requires_grad))
            param.requires_grad_(False)
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for param, data, requires_grad in saved:
            param.data = data
            param.requires_grad_(requires_grad)


@contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 matrix products and convolutions on CUDA while maps are computed.

    PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa); on an H200 that moved
    float32 maps of a random VGG by up to 11 % of their maximum against the CPU, without it
    1e-6. The previous settings are restored on exit.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _setting_names(setting: str | list[str]) -> list[str]:
    names = [s.strip() for s in setting.split(",")] if isinstance(setting, str) else list(setting)
    names = list(dict.fromkeys(s for s in names if s))
    if not names:
        raise UserError(f"no setting given; valid: {', '.join(SETTINGS.names())}")
    for name in names:
        SETTINGS.get(name)
    return names


def _weightless(model: str) -> ModelAdapter | None:
    """The registered model's adapter on the meta device (no weights), or None for a factory."""
    spec = MODELS.get(model)
    if not isinstance(spec, ModelSpec):
        return None
    with torch.device("meta"):
        return spec.adapter(spec.factory())


def _settings(
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


def attribute(
    *,
    grids: Path | str,
    setting: str | list[str],
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
    shard: tuple[int, int] | None = None,
) -> list[AttributeResult]:
    """Compute (or reuse) one attribution artifact per (setting, layer, method) for a grid file.

    ``setting`` is one name or several (comma list) that share the grid variant. ``batch_size``
    counts grid images per forward pass. Artifacts that are up to date (same grid file, weights
    and config; for sampling methods also seed and chunking) are skipped unless ``force``, also
    when another process finished them while this one waited for their locks. A run killed
    after some chunks resumes from its checkpoints, which are only kept for identical inputs and
    config; ``force`` starts from scratch. On the CPU, small batches run on one thread
    (:mod:`attrcli.threads`).
    ``shard=(i, N)`` computes only rows ``[i*count//N, (i+1)*count//N)`` of the grid file into
    shard artifacts (:mod:`attrcli.engine.shards`; ``attrcli merge`` joins them).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    cache_root = Path(cache_root)
    dev = resolve_device(device)
    names = _setting_names(setting)
    grid_file = load_grid_file(grids)
    specs = resolve_methods(methods)
    preview = None if isinstance(model, ModelAdapter) else _weightless(model)
    if preview is not None:  # a registered model: fail before any weights are loaded or trained
        _settings(grid_file, names, preview, layers, heads)
    adapter = model if isinstance(model, ModelAdapter) else create_model(
        model, weights=weights, device=dev, cache_dir=cache_root, progress=progress
    )
    adapter.module.eval()
    adapter.to(dev)
    if not adapter.weights_hash:
        adapter.weights_hash = state_dict_hash(adapter.module.state_dict())
    # shapes do not depend on the weights: the weightless copy's geometry check holds for them
    settings, layer_names = _settings(grid_file, names, adapter, layers, heads, geometry=preview is None)

    shards = shard[1] if shard is not None else 1
    plans = [
        plan_jobs(grid_file, s, cells, layer_names, specs, cache_root, seed=seed, batch_size=batch_size, shards=shards,
                  applicable_only=wants_all(methods))
        for s, cells in settings
    ]
    rows = None
    if shard is not None:
        from attrcli.engine.shards import shard_jobs, shard_rows

        rows = shard_rows(grid_file.count, shard)
        plans = [(shard_jobs(jobs, shard, cache_root), shard_jobs(derived, shard, cache_root)) for jobs, derived in plans]
    results: list[AttributeResult] = []
    todo: list[Job] = []
    for job in (job for jobs, derived in plans for job in jobs + derived):
        if not force and up_to_date(job):
            results.append(AttributeResult(job.key, job.path, "up to date"))
        else:
            todo.append(job)
    if not todo:
        return results
    macs = _batch_macs(preview or adapter, grid_file.n, batch_size) if dev.type == "cpu" else None
    with ExitStack() as stack:
        for job in todo:
            stack.enter_context(artifact_lock(job.path, wait=wait))
        if not force:  # another process may have finished some while we waited for their locks
            finished = [job for job in todo if up_to_date(job)]
            results += [AttributeResult(job.key, job.path, "up to date") for job in finished]
            todo = [job for job in todo if job not in finished]
        stack.enter_context(exact_float32())
        stack.enter_context(channels_last(adapter.module, dev))
        if dev.type == "cpu":
            retain_freed_memory()
            stack.enter_context(torch_threads(threads_for(macs)))
        for grid_setting, _ in settings:
            mine = [j for j in todo if j.setting is grid_setting and j.kind != "derived"]
            results += _run_jobs(grid_file, mine, dev, batch_size, seed, progress, rows, fresh=force)
        derived = [j for j in todo if j.kind == "derived"]
        for i, job in enumerate(derived):
            write_derived(job)
            results.append(AttributeResult(job.key, job.path, "computed"))
            if progress:
                progress("derive", i + 1, len(derived))
    return results


def _discard_misfits(
    checkpoints: dict, sizes: dict[Job, dict[int, tuple[int, ...]]], computed: dict[Job, set[int]]
) -> bool:
    """Discard resumed chunks whose maps have another spatial size than this run's (those just
    computed, else the most common); True if any was."""
    discarded = False
    for job, found in sizes.items():
        if not found:
            continue
        fresh = [found[c] for c in sorted(computed[job])]
        reference = fresh[0] if fresh else Counter(found.values()).most_common(1)[0][0]
        for c in [c for c, size in found.items() if size != reference]:
            checkpoints[job].discard(c, f"maps of spatial size {found[c]}, this run's are {reference}")
            del found[c]
            discarded = True
    return discarded


def compute_maps(
    setting: GridSetting,
    x: torch.Tensor,
    labels: torch.Tensor,
    cells: list[int],
    jobs: list[Job],
    *,
    batch_size: int,
    seed: int = 0,
) -> dict[Job, torch.Tensor]:
    """Maps ``(B, T, h, w)`` of one chunk of grid images ``x`` for each job.

    Gradient methods share :func:`~attrcli.engine.gradients.shared_gradients`; model methods get
    an :class:`AttributionContext` per layer (its prefix runs once).
    """
    targets = setting.targets(labels, cells)
    out: dict[Job, torch.Tensor] = {}
    gradient_jobs = [job for job in jobs if job.kind == "gradient"]
    layers: dict[str, list[int]] = defaultdict(list)
    for job in gradient_jobs:
        layers[GUIDED if job.method.guided else PLAIN].append(job.layer_index)
    whole = {job.layer_index for job in gradient_jobs if job.method.whole_grid}
    grads = shared_gradients(setting, x, targets, layers, whole=whole)
    for job in gradient_jobs:
        found = grads[GUIDED if job.method.guided else PLAIN][job.layer_index]
        out[job] = job.method.from_gradients(found.activations, found.gradients)
    contexts: dict[int, AttributionContext] = {}
    for job in jobs:
        if job.kind != "model":
            continue
        if job.layer_index not in contexts:
            contexts[job.layer_index] = AttributionContext(
                setting=setting, x=x, targets=targets, layer=job.layer,
                layer_index=job.layer_index, batch_size=batch_size, seed=seed,
            )
        out[job] = job.method.attribute(contexts[job.layer_index])
    for job, maps in out.items():
        if maps.dim() != 4 or tuple(maps.shape[:2]) != (x.shape[0], targets.count):
            raise RuntimeError(
                f"method {job.spec.canonical()} returned maps of shape {tuple(maps.shape)}, "
                f"expected ({x.shape[0]}, {targets.count}, h, w)"
            )
    return out


def _batch_macs(adapter: ModelAdapter, n: int, batch_size: int) -> float | None:
    """Multiply-accumulates of one forward pass of ``batch_size`` grid images of n×n cells,
    from one cell through the model (on the meta device for a registered model's weightless
    copy: no arithmetic)."""
    param = next(adapter.module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    cell = adapter.cell_size
    macs = forward_macs(adapter.module, torch.zeros(1, 3, cell, cell, device=device, dtype=dtype))
    return None if macs is None else float(macs) * n * n * batch_size


def _run_jobs(
    grid_file: GridFile, jobs: list[Job], dev: torch.device, batch_size: int, seed: int,
    progress: Progress | None, rows: range | None = None, *, fresh: bool = False,
) -> list[AttributeResult]:
    """Compute the jobs of one setting chunk by chunk, checkpointing each, then write them.

    Chunks an earlier run checkpointed are used only if they pass :meth:`Checkpoint.verified`
    and have the spatial size of the maps computed now; the others are computed again.
    ``fresh`` (``--force``) discards every checkpoint first.
    """
    if not jobs:
        return []
    setting, cells = jobs[0].setting, jobs[0].cells
    sharded = {} if rows is None else {"rows": [rows.start, rows.stop]}
    rows = range(grid_file.count) if rows is None else rows
    chunks = -(-len(rows) // batch_size)
    checkpoints = {
        job: InMemory(job.path) if chunks == 1 else Checkpoint(
            job.path, {**job.identity, **job.inputs, "chunk": batch_size, "count": grid_file.count, **sharded},
            fresh=fresh,
        )
        for job in jobs
    }

    def part(c: int) -> slice:
        return slice(rows.start + c * batch_size, min(rows.start + (c + 1) * batch_size, rows.stop))

    sizes: dict[Job, dict[int, tuple[int, ...]]] = {job: {} for job in jobs}  # spatial size per chunk
    computed: dict[Job, set[int]] = {job: set() for job in jobs}
    for job in jobs:
        for c in checkpoints[job].done():
            if c >= chunks:
                checkpoints[job].discard(c, f"this run has {chunks} chunks")
                continue
            maps = checkpoints[job].verified(c, rows=part(c).stop - part(c).start, targets=len(cells))
            if maps is not None:
                sizes[job][c] = maps.shape[2:]
    resumed = {job for job in jobs if sizes[job]}
    label = f"attribute {setting.name}/{setting.model.name}"
    started = time.perf_counter()

    def fill() -> None:
        for c in range(chunks):
            pending = [job for job in jobs if c not in sizes[job]]
            if pending:
                x = torch.from_numpy(grid_file.images[part(c)]).to(dev)
                labels = torch.from_numpy(grid_file.labels[part(c)]).to(dev)
                before = {job: job.method.diagnostics() for job in pending}
                maps = compute_maps(setting, x, labels, cells, pending, batch_size=batch_size, seed=seed)
                for job in pending:
                    counts = {k: v - before[job].get(k, 0) for k, v in job.method.diagnostics().items()}
                    array = maps[job].detach().float().cpu().numpy()
                    checkpoints[job].save(c, array, counts)
                    sizes[job][c] = array.shape[2:]
                    computed[job].add(c)
            if progress:
                progress(label, c + 1, chunks)

    fill()
    while _discard_misfits(checkpoints, sizes, computed):
        fill()
    seconds = time.perf_counter() - started
    results = []
    for job in jobs:
        checkpoint = checkpoints[job]
        maps = np.concatenate([checkpoint.load(c) for c in range(chunks)])
        counts: dict[str, int] = {}
        for c in range(chunks):
            for name, value in checkpoint.counts(c).items():
                counts[name] = counts.get(name, 0) + value
        write_maps(
            job, maps, grid_file, seconds=seconds, device=dev, batch_size=batch_size, seed=seed,
            rows=rows, counts=counts,
        )
        checkpoint.remove()
        results.append(AttributeResult(job.key, job.path, "resumed" if job in resumed else "computed"))
    return results
