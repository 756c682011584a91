"""The identical work both sides of ``bench_baseline.py`` do, and the floors it is measured against.

- grid files: random normalised grids for the ImageNet-sized models (timing does not depend on
  the content), the real digits pipeline (``make_grids``) for the digits models;
- method specs: attrcli's presets, or the reduced ``--quick`` values (both sides get the spec);
- :func:`capped`: a view of a model whose layer keeps its first ``k`` channels, so Score-CAM and
  Ablation-CAM make ``k`` perturbations instead of one per channel, each of unchanged cost;
- :class:`Floors`: the passes a method cannot avoid, timed alone.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrcli.engine.gradients import target_logits
from attrcli.methods.occlusion import window_starts
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import GridSetting
from attrcli.store import write_artifact

GRADIENT = ("grad", "guided-backprop", "ixg", "gradcam", "gradcam++", "layercam")
CHANNEL_METHODS = ("scorecam", "ablationcam")  # one perturbation per channel of the layer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], Any], device: torch.device, *, repeats: int = 3, cheap: float = 1.0) -> tuple[float, Any]:
    """Wall time of ``run()`` and its result; repeated (median) when one run takes under ``cheap`` s."""
    times, result = [], None
    for i in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        out = run()
        sync(device)
        times.append(time.perf_counter() - start)
        if i == 0:
            result = out
            if times[0] >= cheap:
                break
    return statistics.median(times), result


# --- grids ------------------------------------------------------------------------------------
def random_labels(count: int, n: int, classes: int, variant: str, rng: np.random.Generator) -> np.ndarray:
    """Distinct classes per grid, or (corners) the first and last cell sharing one."""
    labels = np.stack([rng.permutation(classes)[: n * n] for _ in range(count)])
    if variant == "corners":
        labels[:, -1] = labels[:, 0]
    return labels.astype(np.int64)


def random_grid_file(path: Path, adapter: ModelAdapter, *, variant: str, count: int, n: int = 2, seed: int = 0) -> Path:
    """A grid file (docs/artifacts.md) of random normalised images with valid labels."""
    rng = np.random.default_rng(seed)
    size = n * adapter.cell_size
    images = rng.standard_normal((count, 3, size, size), dtype=np.float32)
    write_artifact(
        path,
        data={
            "images": images,
            "labels": random_labels(count, n, adapter.num_classes, variant, rng),
            "sources": np.arange(count * n * n, dtype=np.int64).reshape(count, n * n),
        },
        attrs={
            "dataset": "random", "variant": variant, "n": n, "cell_size": adapter.cell_size,
            "mean": list(adapter.mean), "std": list(adapter.std), "seed": seed, "min_conf": 0.0,
            "models": [adapter.name], "per_model": True, "reused": 0,
            "class_names": [str(c) for c in range(adapter.num_classes)],
        },
    )
    return path


def digits_grid_files(model: str, *, count: int, cache_dir: Path, out_dir: Path, seed: int, device) -> dict[str, Path]:
    """Distinct and corners grids of the held-out digits that ``model`` classifies confidently."""
    from attrcli.data.grids import make_grids

    paths = make_grids(
        dataset="digits", variant="both", count=count, models=[model], seed=seed, out_dir=out_dir,
        cache_dir=cache_dir, device=device,
    )
    out = {}
    for path in paths:
        from attrcli.engine.grids import load_grid_file

        out[load_grid_file(path).variant] = path
    return out


# --- what each side computes ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reduced:
    """``--quick`` values for the ImageNet-sized models (``None``: attrcli's preset)."""

    steps: int | None = None  # intgrad steps
    masks: int | None = None  # rise masks
    windows: int | None = None  # occlusion windows per axis: k = s = ceil(map size / windows)
    channels: int | None = None  # scorecam / ablationcam: first channels of the layer


def method_spec(method: str, map_size: int, reduced: Reduced) -> str:
    """The attrcli method spec one (method, layer) is run with, on both sides."""
    if method == "intgrad" and reduced.steps:
        return f"intgrad:steps={reduced.steps}"
    if method == "rise" and reduced.masks:
        return f"rise:masks={reduced.masks}"
    if method == "occlusion" and reduced.windows:
        k = ceil(map_size / reduced.windows)
        return f"occlusion:k={k},s={k}"
    return method


class _Narrow(nn.Module):
    """A block whose output keeps its first ``k`` channels."""

    def __init__(self, block: nn.Module, k: int) -> None:
        super().__init__()
        self.block, self.k = block, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)[:, : self.k]


def _widen(x: torch.Tensor, channels: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


class _Widen(nn.Module):
    """A block fed its input zero-padded back to ``channels`` channels."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.block, self.channels = block, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(_widen(x, self.channels))


def capped(adapter: ModelAdapter, layer: str, k: int, channels: int) -> ModelAdapter:
    """``adapter`` with layer ``layer`` cut to its first ``k`` of ``channels`` channels; the network
    after it sees the others as zeros. Every pass has the shapes and cost of the real model."""
    index = adapter.layer_index(layer)
    blocks = list(adapter.blocks)
    name, block = blocks[index]
    blocks[index] = (name, _Narrow(block, k))
    head = adapter.head
    if index + 1 < len(blocks):
        following, block = blocks[index + 1]
        blocks[index + 1] = (following, _Widen(block, channels))
    else:
        head = lambda features, inner=adapter.head: inner(_widen(features, channels))
    return dataclasses.replace(adapter, blocks=blocks, head=head)


# --- floors -----------------------------------------------------------------------------------
def _touched(setting: GridSetting, cells: list[int], size: tuple[int, int], k: int, s: int) -> int:
    """DiFull occlusion: windows overlapping each target's cell, summed over the targets."""
    n = setting.n
    ys, xs = window_starts(size[0], k, s), window_starts(size[1], k, s)
    ky, kx = min(k, size[0]), min(k, size[1])
    ch, cw = size[0] // n, size[1] // n
    total = 0
    for cell in cells:
        top, left = cell // n * ch, cell % n * cw
        hit_y = sum(1 for y in ys if y < top + ch and y + ky > top)
        hit_x = sum(1 for x in xs if x < left + cw and x + kx > left)
        total += hit_y * hit_x
    return total


def perturbations(method: str, config: Any, setting: GridSetting, cells: list[int], a: torch.Tensor) -> int:
    """Network rows one grid image needs pushed through the network after the layer: grid rows in
    connected settings (one serves every target), cell rows in DiFull (one target each)."""
    size = tuple(setting.to_map(a[: setting.n**2 if setting.disconnected else 1]).shape[-2:])
    T = len(cells) if setting.disconnected else 1
    if method == "occlusion":
        if setting.disconnected:
            return _touched(setting, cells, size, config.k, config.s)
        return len(window_starts(size[0], config.k, config.s)) * len(window_starts(size[1], config.k, config.s))
    if method == "rise":
        return T * config.masks
    if method in CHANNEL_METHODS:
        return T * a.shape[1]
    raise KeyError(method)


class Floors:
    """The passes each method cannot avoid for grid images ``x`` in one setting, timed alone:

    - gradient methods: the prefix, then one forward of the rest of the network over the batch
      and one backward per target (DiFull: one in all); intgrad: ``steps`` times that;
    - perturbation methods: the prefix, then one forward of the rest of the network (Score-CAM:
      the whole network) per perturbation (:func:`perturbations`); the cost of a row is timed on
      one batch of ``--batch-size`` units.

    Measurements are shared by the methods of a layer (they need the same passes).
    """

    def __init__(self, setting: GridSetting, x: torch.Tensor, labels: torch.Tensor, cells: list[int],
                 batch_size: int, device: torch.device) -> None:
        self.setting, self.x, self.cells, self.batch_size, self.device = setting, x, cells, batch_size, device
        self.targets = setting.targets(labels, cells)
        self.units = setting.n**2 if setting.disconnected else 1
        self._prefix: dict[int, tuple[float, torch.Tensor]] = {}
        self._backward: dict[int, float] = {}
        self._row: dict[tuple[int, int], float] = {}

    def prefix(self, index: int) -> tuple[float, torch.Tensor]:
        if index not in self._prefix:
            self._prefix[index] = measure(lambda: self.setting.prefix(self.x, index), self.device)
        return self._prefix[index]

    def backward(self, index: int) -> float:
        """One forward of the network after the layer over the batch, then one backward per target
        (DiFull: one for all, the heads being disconnected): the least autograd can do."""
        if index not in self._backward:
            setting, a = self.setting, self.prefix(index)[1]
            B, T = self.x.shape[0], len(self.cells)
            grid = torch.arange(B, device=self.device)
            passes = [None] if setting.disconnected else [torch.full((B,), t, device=self.device) for t in range(T)]

            def run() -> None:
                with torch.enable_grad():
                    h = a.detach().requires_grad_(True)
                    logits = setting.suffix(h, index)
                    for i, target in enumerate(passes):
                        values = target_logits(logits, self.targets, grid, target)
                        torch.autograd.grad(values.sum(), h, retain_graph=i < len(passes) - 1)

            self._backward[index] = measure(run, self.device)[0]
        return self._backward[index]

    def row(self, start: int, count: int) -> float:
        """Seconds per network row of a forward from layer ``start`` (-1: the whole network), timed
        on one batch of ``count`` rows or of ``--batch-size`` units if fewer (per-row cost on a CPU
        depends on the batch)."""
        u = self.units
        chunk = min(count, self.batch_size * u)
        if (start, chunk) not in self._row:
            setting, model = self.setting, self.setting.model
            source = setting.split(self.x) if start == -1 else self.prefix(start)[1]
            source = source[:u]  # the rows of one grid image (DiFull: its cells)
            rows = source.repeat(ceil(chunk / len(source)), 1, 1, 1)[:chunk]

            def run() -> torch.Tensor:
                with torch.no_grad():
                    if setting.disconnected:
                        return model.head(model.run_blocks(rows, start))
                    return setting.suffix(rows, start)

            self._row[start, chunk] = measure(run, self.device)[0] / chunk
        return self._row[start, chunk]

    def seconds(self, layer: str, method: str, config: Any, channels: int) -> float:
        """The floor of one (layer, method); ``channels``: Score-CAM / Ablation-CAM perturbations."""
        index = self.setting.model.layer_index(layer)
        prefix_s, a = self.prefix(index)
        if method in GRADIENT or method == "intgrad":
            return prefix_s + (config.steps if method == "intgrad" else 1) * self.backward(index)
        if method in CHANNEL_METHODS:
            a = a[:, :channels]
        count = self.x.shape[0] * perturbations(method, config, self.setting, self.cells, a)
        return prefix_s + count * self.row(-1 if method == "scorecam" else index, count)
