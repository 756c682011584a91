"""The identical work both sides of ``bench_baseline.py`` do, and the floors it is measured against.

- grid files: random normalised grids for the ImageNet-sized models (timing does not depend on
  the content), the real digits pipeline (``make_grids``) for the digits models;
- method specs: attrcli's presets, or the reduced ``--quick`` values (both sides get the spec);
- :func:`capped`: a view of a model whose layer keeps its first ``k`` channels, so Score-CAM and
  Ablation-CAM make ``k`` perturbations instead of one per channel, each of unchanged cost;
- :class:`Floors`: the passes a method cannot avoid, timed alone with the kernels attrcli uses
  (channels-last convolutions on the CPU); in DiFull over the target cells alone, plus the other
  cells' prefix for the maps that weigh the whole stitched map.
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

from attrcli.engine.attribute import channels_last
from attrcli.engine.gradients import target_logits
from attrcli.methods.occlusion import window_starts
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import GridSetting
from attrcli.store import write_artifact

GRADIENT = ("grad", "guided-backprop", "ixg", "gradcam", "gradcam++", "layercam")
CHANNEL_METHODS = ("scorecam", "ablationcam")  # one perturbation per channel of the layer
REFERENCE_METHODS = ("occlusion", "ablationcam")  # a drop from the unperturbed score: one row more
WHOLE = ("gradcam", "gradcam++", "scorecam", "ablationcam")  # DiFull maps weighing every cell


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
    from attrcli.stages.make_grids import make_grids

    paths = make_grids(
        dataset="digits", variant="both", count=count, models=[model], seed=seed, out_dir=out_dir,
        cache_dir=cache_dir, device=device,
    )
    out = {}
    for path in paths:
        from attrcli.data.gridfile import load_grid_file

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
    if method == "occlusion":  # Captum's windows (inside the image) on both sides
        if reduced.windows:
            k = ceil(map_size / reduced.windows)
            return f"occlusion:k={k},s={k},scheme=inside"
        return "occlusion:scheme=inside"
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
def _touched(setting: GridSetting, cells: list[int], size: tuple[int, int], k: int, s: int, scheme: str) -> int:
    """DiFull occlusion: windows overlapping each target's cell, summed over the targets."""
    n = setting.n
    ys, xs = window_starts(size[0], k, s, scheme), window_starts(size[1], k, s, scheme)
    ky, kx = min(k, size[0]), min(k, size[1])
    ch, cw = size[0] // n, size[1] // n
    total = 0
    for cell in cells:
        top, left = cell // n * ch, cell % n * cw
        hit_y = sum(1 for y in ys if y < top + ch and y + ky > top)
        hit_x = sum(1 for x in xs if x < left + cw and x + kx > left)
        total += hit_y * hit_x
    return total


def perturbations(method: str, config: Any, setting: GridSetting, cells: list[int], channels: int,
                  size: tuple[int, int]) -> int:
    """Network rows one grid image needs pushed through the network after the layer, whose map
    (grid layout) is ``size``: grid rows in connected settings (one serves every target), cell
    rows in DiFull (one target each). Occlusion and Ablation-CAM also score the unperturbed rows,
    as their maps are drops from that score."""
    T = len(cells) if setting.disconnected else 1
    reference = T if method in REFERENCE_METHODS else 0
    if method == "occlusion":
        if setting.disconnected:
            return reference + _touched(setting, cells, size, config.k, config.s, config.scheme)
        windows = (len(window_starts(size[0], config.k, config.s, config.scheme))
                   * len(window_starts(size[1], config.k, config.s, config.scheme)))
        return reference + windows
    if method == "rise":
        return T * config.masks
    if method in CHANNEL_METHODS:
        return reference + T * channels
    raise KeyError(method)


class Floors:
    """The passes each method cannot avoid for grid images ``x`` in one setting, timed alone with
    the kernels attrcli uses (convolution weights in :func:`channels_last` layout on the CPU):

    - the prefix up to the layer over the rows the targets depend on: every row in connected
      settings, the target cells' rows in DiFull (:meth:`GridSetting.target_rows`); in DiFull the
      methods whose map weighs the whole stitched map (:data:`WHOLE`) also need the other cells'
      prefix (free at the input);
    - gradient methods: then one forward of the rest of the network over those rows and one
      backward per target (DiFull: one in all), per batch of ``--batch-size`` grid images;
      intgrad: the same per batch of ``--batch-size`` (grid image, step) pairs, as attrcli
      batches them (a batch of 4 steps costs less than 4 batches of one on a CPU);
    - perturbation methods: then one forward of the rest of the network (Score-CAM: the whole
      network) per perturbation (:func:`perturbations`); the cost of a row is timed on one batch
      of ``--batch-size`` units.

    Measurements are shared by the methods of a layer (they need the same passes).
    """

    def __init__(self, setting: GridSetting, x: torch.Tensor, labels: torch.Tensor, cells: list[int],
                 batch_size: int, device: torch.device) -> None:
        self.setting, self.x, self.cells, self.batch_size, self.device = setting, x, cells, batch_size, device
        self.targets = setting.targets(labels, cells)
        self.units = setting.n**2 if setting.disconnected else 1
        self.rows = setting.target_rows(self.targets, x.shape[0])  # None: every row
        every = torch.arange(x.shape[0] * self.units, device=device)
        self.other_rows = every[:0] if self.rows is None else every[~torch.isin(every, self.rows)]
        self._prefix: dict[tuple[int, bool], tuple[float, torch.Tensor]] = {}
        self._backward: dict[tuple[int, int], float] = {}
        self._row: dict[tuple[int, int], float] = {}

    def prefix(self, index: int, others: bool = False) -> tuple[float, torch.Tensor]:
        """Seconds and activations of the prefix over the rows the targets depend on (``others``:
        over DiFull's other cells)."""
        if (index, others) not in self._prefix:
            rows = self.other_rows if others else self.rows

            def run() -> torch.Tensor:
                with torch.no_grad():
                    net = self.setting.split(self.x)
                    return self.setting.model.run_blocks(net if rows is None else net[rows], -1, index)

            self._prefix[index, others] = measure(run, self.device)
        return self._prefix[index, others]

    def backward(self, index: int, units: int) -> float:
        """One forward of the network after the layer over ``units`` grid images (the prefix's rows,
        repeated), then one backward per target (DiFull: one for all, each target cell's row scored
        by its own head): the least autograd can do for one batch."""
        if (index, units) not in self._backward:
            setting, model, a = self.setting, self.setting.model, self.prefix(index)[1]
            B, T = self.x.shape[0], len(self.cells)
            source = torch.cat([a] * ceil(units / B))[: units * len(a) // B]
            grid = torch.arange(units, device=self.device) % B

            def run() -> None:
                with torch.enable_grad():
                    h = source.detach().requires_grad_(True)
                    if self.rows is not None:  # row r: target r % T of grid image r // T
                        logits = model.head(model.run_blocks(h, index))
                        torch.autograd.grad(logits.gather(1, self.targets.classes[grid].reshape(-1, 1)).sum(), h)
                        return
                    logits = setting.suffix(h, index)
                    for t in range(T):
                        values = target_logits(logits, self.targets, grid, torch.full_like(grid, t))
                        torch.autograd.grad(values.sum(), h, retain_graph=t < T - 1)

            self._backward[index, units] = measure(run, self.device)[0]
        return self._backward[index, units]

    def row(self, start: int, count: int) -> float:
        """Seconds per network row of a forward from layer ``start`` (-1: the whole network), timed
        on one batch of ``count`` rows or of ``--batch-size`` units if fewer (per-row cost on a CPU
        depends on the batch)."""
        chunk = min(count, self.batch_size * self.units)
        if (start, chunk) not in self._row:
            setting, model = self.setting, self.setting.model
            source = self.prefix(start)[1]  # start -1: the input rows
            rows = torch.cat([source] * ceil(chunk / len(source)))[:chunk]

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
        with channels_last(self.setting.model.module, self.device):
            prefix_s, a = self.prefix(index)
            if method in WHOLE and len(self.other_rows) and index >= 0:
                prefix_s += self.prefix(index, others=True)[0]
            if method in GRADIENT or method == "intgrad":  # intgrad: (grid image, step) pairs
                units = self.x.shape[0] * (config.steps if method == "intgrad" else 1)
                batch = min(units, self.batch_size)
                return prefix_s + units / batch * self.backward(index, batch)
            scale = self.setting.n if self.setting.disconnected else 1
            size = (a.shape[-2] * scale, a.shape[-1] * scale)
            count = self.x.shape[0] * perturbations(method, config, self.setting, self.cells, channels, size)
            return prefix_s + count * self.row(-1 if method == "scorecam" else index, count)
