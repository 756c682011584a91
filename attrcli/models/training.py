"""Deterministic training of the small digits classifiers.

A plain function: it takes a module and tensors, reports progress through an optional callback and
never prints. Everything random (initialisation is done by the caller; here: data order,
augmentation, dropout) comes from one seed, and deterministic algorithms are switched on for the duration, so
two runs on the same machine give byte-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attrcli.progress import Progress
from attrcli.threads import forward_macs, threads_for, torch_threads


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe (recorded in the cache sidecar, so a change retrains)."""

    epochs: int = 30  # passes over the training split
    batch_size: int = 32
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    max_shift: int = 2  # random translation by up to this many pixels
    max_rotation: float = 10.0  # random rotation, degrees
    max_scale: float = 0.1  # random zoom by a factor in 1 ± max_scale
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports besides the weights."""

    seconds: float
    epochs: int
    final_loss: float
    threads: int = 1  # torch threads it ran on (attrcli.threads: one for models this small)


@contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed everything, force deterministic kernels, and restore the global state afterwards."""
    was_on = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.use_deterministic_algorithms(was_on, warn_only=warn_only)


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: int = 0,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
) -> torch.Tensor:
    """Move each image by a random integer shift, rotation (degrees) and scale (zero fill).

    Shifts are whole pixels in ``[-max_shift, max_shift]``; rotation is uniform in
    ``±max_rotation`` degrees and scale in ``1 ± max_scale``. With no rotation or scale the result
    is an exact pixel copy.
    """
    n, _, h, w = images.shape
    if max_shift <= 0 and max_rotation <= 0 and max_scale <= 0:
        return images
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, -2 * shifts[:, 0] / w], dim=1),
            torch.stack([sin, cos, -2 * shifts[:, 1] / h], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalizer(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x - m) / s


def train_classifier(
    module: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: TrainConfig = TrainConfig(),
    progress: Progress | None = None,
    description: str = "training",
) -> TrainResult:
    """Train ``module`` in place on images in [0, 1] on the CPU with cross-entropy.

    Plain cross-entropy (no label smoothing), so the model becomes confident: grids only use
    images classified with softmax confidence >= 0.99 (supplement I.1). Returns the wall time and the last batch's loss.

    The thread count follows :func:`attrcli.threads.threads_for` for one training batch: the
    digits models train on one thread, which on a busy machine is several times faster than
    torch's default of one per core (issue 19).
    """
    start = time.perf_counter()
    normalize = _normalizer(mean, std)
    n = len(images)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = config.epochs * steps_per_epoch
    loss_value = float("nan")
    macs = forward_macs(module, normalize(images[:1])) if n else None
    threads = threads_for(None if macs is None else macs * config.batch_size)
    with torch_threads(threads), deterministic(config.seed) as generator:
        optimizer = torch.optim.AdamW(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25
        )
        module.train()
        step = 0
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            augmented = random_affine(
                images,
                generator,
                max_shift=config.max_shift,
                max_rotation=config.max_rotation,
                max_scale=config.max_scale,
            )
            for first in range(0, n, config.batch_size):
                idx = order[first : first + config.batch_size]
                loss = F.cross_entropy(module(normalize(augmented[idx])), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                loss_value = float(loss.detach())
                if progress is not None:
                    progress(description, step, total)
        module.eval()
    return TrainResult(
        seconds=time.perf_counter() - start, epochs=config.epochs, final_loss=loss_value,
        threads=threads,
    )


@torch.no_grad()
def predict(
    module: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 256,
) -> torch.Tensor:
    """Softmax probabilities ``(N, classes)`` of images in [0, 1], in eval mode."""
    normalize = _normalizer(mean, std)
    module.eval()
    out = [
        torch.softmax(module(normalize(images[i : i + batch_size])), dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)
