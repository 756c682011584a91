"""How many CPU threads torch may use for a piece of work.

Torch starts one thread per core and splits every operation across them. For the small digits
models that split saves little on a quiet machine and costs a great deal on a busy one: each
operation waits for its slowest thread, and a thread that shares its core with another process
is slow (issue 19: training digits-vgg11 with 2 threads next to other work did not finish in
400 s; with 1 thread it took 102 s). So work below :data:`SMALL_WORK` multiply-accumulates per
forward pass runs on one thread, and no work ever gets more threads than the cores this process
may run on (``os.sched_getaffinity``: a SLURM task, a ``taskset``, a container's CPU set). The
environment variable ``ATTRCLI_THREADS`` overrides the choice (``benchmarks/bench_threads.py``
measures it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Multiply-accumulates per forward pass below which one thread is used. A batch of 32 digits
#: grids (2×2 cells of 32 pixels) through digits-vgg11 is about 1.2e9, a training batch 0.3e9;
#: one 448-pixel grid through torchvision's VGG11 is about 3e10.
SMALL_WORK = 4e9
ENV = "ATTRCLI_THREADS"


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(macs: float | None) -> int:
    """Threads for work of ``macs`` multiply-accumulates per forward pass (None: unknown).

    ``ATTRCLI_THREADS`` wins when set; otherwise one thread for small work, else torch's own
    count capped at the usable cores.
    """
    forced = os.environ.get(ENV, "").strip()
    if forced.isdigit() and int(forced) >= 1:
        return int(forced)
    if macs is not None and macs < SMALL_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), usable_cores()))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def forward_macs(module: nn.Module, example: torch.Tensor) -> int | None:
    """Multiply-accumulates of the convolutions and linear layers in one forward pass of
    ``module`` on ``example``; None when the forward fails.

    The module runs in eval mode under ``no_grad`` (no dropout draws, no batch-norm updates) and
    its mode is restored. A module on the ``meta`` device costs no arithmetic at all.
    """
    total = 0

    def count(layer: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(layer, nn.modules.conv._ConvNd):
            per_output = layer.in_channels // layer.groups
            for size in layer.kernel_size:
                per_output *= size
            total += output.numel() * per_output
        elif isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(example)
    except Exception:  # noqa: BLE001 - a user's module may not run on this input: no estimate
        return None
    finally:
        module.train(training)
        for hook in hooks:
            hook.remove()
    return total
