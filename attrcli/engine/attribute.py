"""The attribution engine's compute core: maps of planned jobs, chunk by chunk.

:func:`compute_maps` computes one chunk of grid images for several jobs of one setting: the
gradient methods share one forward and one backward per target across all their layers
(:mod:`attrcli.engine.gradients`; guided backprop shares the forward and adds one backward), and
methods that run the model share the layer's prefix (:class:`AttributionContext`).
:func:`run_setting` goes through a setting's chunks, checkpointing each finished chunk so a
killed run resumes (:mod:`attrcli.engine.checkpoint`), and hands each job's maps to a writer.
:func:`computing` is the numeric set-up maps are computed under. Planning the jobs, freshness,
locks and writing artifacts are the ``attribute`` stage's (:mod:`attrcli.stages.attribute`).
"""

from __future__ import annotations

import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from attrcli.engine.allocator import retain_freed_memory
from attrcli.engine.checkpoint import Checkpoint, InMemory
from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import GUIDED, PLAIN, shared_gradients
from attrcli.engine.precision import DEFAULT as FP32
from attrcli.engine.precision import cuda_tf32, precision_context
from attrcli.progress import Progress
from attrcli.threads import forward_macs, threads_for, torch_threads

if TYPE_CHECKING:
    from attrcli.data.gridfile import GridFile
    from attrcli.models.adapter import ModelAdapter
    from attrcli.settings import GridSetting
    from attrcli.stages.plan import Job

__all__ = ["batch_macs", "channels_last", "compute_maps", "computing", "exact_float32", "run_setting"]

#: ``write(job, maps, counts, seconds)``: store a job's finished maps ``(rows, T, h, w)`` and its
#: method's diagnostic counts; ``seconds`` the time the setting's chunks took.
Writer = Callable[["Job", np.ndarray, dict[str, int], float], None]


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


def exact_float32() -> AbstractContextManager[None]:
    """Full float32 matrix products and convolutions on CUDA while maps are computed
    (:func:`~attrcli.engine.precision.cuda_tf32` off: fp32's setting)."""
    return cuda_tf32(False)


@contextmanager
def computing(
    module: torch.nn.Module, device: torch.device, macs: float | None = None, *,
    precision: str = FP32, model: ModelAdapter | None = None,
) -> Iterator[None]:
    """The set-up maps are computed under: the ``precision``
    (:func:`~attrcli.engine.precision.precision_context`; ``fp32``, the default, is exact float32
    on CUDA as :func:`exact_float32`, ``bf16`` instruments the modules of ``model``, the adapter
    of ``module``); on the CPU channels-last frozen weights (:func:`channels_last`), freed memory
    kept for the next chunk (:func:`~attrcli.engine.allocator.retain_freed_memory`) and as many
    threads as a forward pass of ``macs`` multiply-accumulates pays for
    (:func:`attrcli.threads.threads_for`)."""
    with ExitStack() as stack:
        stack.enter_context(precision_context(precision, device, model))
        stack.enter_context(channels_last(module, device))
        if device.type == "cpu":
            retain_freed_memory()
            stack.enter_context(torch_threads(threads_for(macs)))
        yield


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


def batch_macs(adapter: ModelAdapter, n: int, batch_size: int) -> float | None:
    """Multiply-accumulates of one forward pass of ``batch_size`` grid images of n×n cells,
    from one cell through the model (on the meta device for a registered model's weightless
    copy: no arithmetic)."""
    param = next(adapter.module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    cell = adapter.cell_size
    known = _MACS.setdefault(adapter.module, {})
    if (cell, dtype) not in known:  # per module and input: the count only steers the thread policy
        macs = None
        if device.type != "meta":  # the module's shapes on the meta device: no arithmetic
            macs = forward_macs(_MetaState(adapter.module), torch.zeros(1, 3, cell, cell, device="meta", dtype=dtype))
        if macs is None:  # a module that cannot run on meta tensors runs once for real
            macs = forward_macs(adapter.module, torch.zeros(1, 3, cell, cell, device=device, dtype=dtype))
        known[cell, dtype] = macs
    macs = known[cell, dtype]
    return None if macs is None else float(macs) * n * n * batch_size


_MACS: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


class _MetaState(torch.nn.Module):
    """``module`` run with meta copies of its parameters and buffers (``torch.func.functional_call``):
    the same layers and shapes, so :func:`forward_macs`' hooks count the same, for no arithmetic."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module
        self.training = module.training  # forward_macs restores the wrapper's mode onto the module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        state = {name: torch.empty_like(t, device="meta")
                 for name, t in [*self.inner.named_parameters(), *self.inner.named_buffers()]}
        return functional_call(self.inner, state, (x,))


def run_setting(
    grid_file: GridFile, jobs: list[Job], dev: torch.device, batch_size: int, seed: int,
    progress: Progress | None, rows: range | None = None, *, fresh: bool = False, write: Writer,
) -> dict[Job, bool]:
    """Compute the jobs of one setting chunk by chunk, checkpointing each, then ``write`` them;
    for each job whether it resumed checkpointed chunks.

    Chunks an earlier run checkpointed are used only if they pass :meth:`Checkpoint.verified`
    and have the spatial size of the maps computed now; the others are computed again.
    ``fresh`` (``--force``) discards every checkpoint first. A job's checkpoint is removed only
    after ``write`` returned.
    """
    if not jobs:
        return {}
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
    results: dict[Job, bool] = {}
    for job in jobs:
        checkpoint = checkpoints[job]
        maps = np.concatenate([checkpoint.load(c) for c in range(chunks)])
        counts: dict[str, int] = {}
        for c in range(chunks):
            for name, value in checkpoint.counts(c).items():
                counts[name] = counts.get(name, 0) + value
        write(job, maps, counts, seconds)
        checkpoint.remove()
        results[job] = job in resumed
    return results
