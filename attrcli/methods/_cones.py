"""Receptive-field cones: how far a change of one map spreads through a block, and the crops of
the block's input that recompute the changed outputs exactly (:mod:`attrcli.methods._incremental`).

A block runs unchanged on its crops, so its own padding must mean what it means on the whole map:
a crop starts at a multiple of the block's total stride (its outputs fall on the whole map's
grid) and ends at the map's border wherever the cone reaches the border (padded there as the map
is); outputs that read the crop's padding anywhere else are not kept. All windows of a chunk get
crops of one size, shifted inside the map at its borders, so that a chunk is one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

FULL_FRACTION = 0.9  # a crop above this share of its map runs on the whole map instead


@dataclass(frozen=True)
class Axis:
    """Along one axis, output ``o`` of a module reads input positions ``[o·s − p, o·s − p + k)``."""

    k: int
    s: int
    p: int

    def then(self, after: Axis) -> Axis:
        """This module followed by ``after``."""
        return Axis((after.k - 1) * self.s + self.k, self.s * after.s, after.p * self.s + self.p)

    def union(self, other: Axis) -> Axis | None:
        """Two parallel branches whose outputs are added (``None`` if their strides differ)."""
        if self.s != other.s:
            return None
        p = max(self.p, other.p)
        return Axis(max(self.k - self.p, other.k - other.p) + p, self.s, p)


Field = tuple[Axis, Axis]  # (rows, columns)
POINT: Field = (Axis(1, 1, 0), Axis(1, 1, 0))
POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Identity,
)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _chain(modules) -> Field | None:
    field = POINT
    for module in modules:
        step = receptive_field(module)
        if step is None:
            return None
        field = (field[0].then(step[0]), field[1].then(step[1]))
    return field


def receptive_field(module: nn.Module) -> Field | None:
    """Field of one output of ``module`` on ``(B, C, H, W)`` maps, or ``None`` if it is not known
    to be a local, translation-equivariant map whose border outputs depend only on the distance
    to the border (global pooling, attention, training-mode batch norm, unknown modules)."""
    kind = type(module)
    if kind in POINTWISE:
        return POINT
    if kind in (nn.Dropout, nn.Dropout2d):
        return POINT if not module.training or module.p == 0 else None
    if kind is nn.BatchNorm2d:
        return POINT if not module.training and module.running_mean is not None else None
    if kind is nn.Conv2d:
        padding = module.padding
        if module.padding_mode != "zeros" or padding == "same":
            return None
        padding = (0, 0) if padding == "valid" else _pair(padding)
        (ky, kx), (sy, sx), (dy, dx) = module.kernel_size, module.stride, module.dilation
        return Axis(dy * (ky - 1) + 1, sy, padding[0]), Axis(dx * (kx - 1) + 1, sx, padding[1])
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        if getattr(module, "return_indices", False):
            return None
        (ky, kx), (sy, sx), (py, px) = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        dy, dx = _pair(getattr(module, "dilation", 1))
        return Axis(dy * (ky - 1) + 1, sy, py), Axis(dx * (kx - 1) + 1, sx, px)
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        return _chain(module)
    if kind in (BasicBlock, Bottleneck):
        names = ["conv1", "bn1", "relu", "conv2", "bn2"] + (["relu", "conv3", "bn3"] if kind is Bottleneck else [])
        main = _chain(getattr(module, name) for name in names)
        shortcut = POINT if module.downsample is None else receptive_field(module.downsample)
        if main is None or shortcut is None:
            return None
        y, x = main[0].union(shortcut[0]), main[1].union(shortcut[1])
        return None if y is None or x is None else (y, x)
    return None


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def cone(
    start: torch.Tensor, n: int, size: int, out_size: int, axis: Axis
) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """One axis of one block: an input patch ``[start, start + n)`` (per window) changes outputs
    ``[lo, lo + m)``; the crop ``[first, first + length)`` of the input computes them exactly.

    ``m`` and ``length`` are one size for all windows (ranges shifted inside the map at the
    end); ``first`` is a multiple of the stride and the crop contains the input patch.
    """
    k, s, p = axis.k, axis.s, axis.p
    lo = (-_floor_div(-(start + p - k + 1), s)).clamp(min=0)
    hi = (_floor_div(start + n - 1 + p, s) + 1).clamp(max=out_size)
    m = min(max(int((hi - lo).max()), 1), out_size)
    lo = torch.minimum(lo, torch.full_like(lo, out_size - m))
    first = _floor_div(torch.minimum(lo * s - p, start).clamp(min=0), s) * s
    last = torch.maximum((lo + m - 1) * s - p + k, start + n).clamp(max=size)
    length = int((last - first).max())
    length = size - (size - length) // s * s  # so that a crop flush with the end starts on the grid
    first = torch.minimum(first, torch.full_like(first, size - length))
    return lo, m, first, length


Index = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, map rows, map columns (broadcasting)


def _index(y: torch.Tensor, x: torch.Tensor, h: int, w: int, *, shared: bool = False) -> Index:
    """Positions of ``h``×``w`` windows at corners ``(y, x)`` ``(R,)``: of row r of a map with R
    rows, or of its only row when ``shared``."""
    rows = torch.arange(len(y), device=y.device)[:, None, None]
    ys = (y[:, None] + torch.arange(h, device=y.device))[:, :, None]
    xs = (x[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return (torch.zeros_like(rows) if shared else rows), ys, xs


def take(src: torch.Tensor, index: Index) -> torch.Tensor:
    """A copy ``(R, C, h, w)`` of the windows ``index`` of ``src``, gathered channels-last (whole
    channel vectors at a time)."""
    return src.permute(0, 2, 3, 1)[index].permute(0, 3, 1, 2)


def put(dst: torch.Tensor, index: Index, values: torch.Tensor) -> None:
    """Write ``values`` ``(R, C, h, w)`` into the windows ``index`` of ``dst``."""
    dst.permute(0, 2, 3, 1)[index] = values.permute(0, 2, 3, 1)


def expand(base: torch.Tensor, index: Index, values: torch.Tensor) -> torch.Tensor:
    """Whole maps ``(R, C, H, W)``: the unperturbed row ``base`` with each patch pasted in."""
    layout = torch.channels_last if not base.is_contiguous() else torch.contiguous_format
    full = base.expand(len(values), -1, -1, -1).clone(memory_format=layout)
    put(full, index, values)
    return full


@dataclass
class Region:
    """Where the patches of a chunk of windows lie in a map: ``h``×``w`` at corners ``(y, x)``
    ``(R,)``, or the whole ``h``×``w`` map."""

    y: torch.Tensor
    x: torch.Tensor
    h: int
    w: int
    whole: bool = False

    def index(self) -> Index:
        return _index(self.y, self.x, self.h, self.w)

    def whole_map(self, size: tuple[int, int]) -> Region:
        zero = torch.zeros_like(self.y)
        return Region(zero, zero, size[0], size[1], True)

    def overlaps(self, top: int, left: int, size: int) -> torch.Tensor:
        """Which patches overlap the ``size``×``size`` square at ``(top, left)``: ``(R,)``."""
        return (self.y < top + size) & (self.y + self.h > top) & (self.x < left + size) & (self.x + self.w > left)


@dataclass
class Move:
    """How one block's output patches follow from its input patches, for a chunk of windows:
    ``point``: the block runs on the patches; ``crop``: on ``crop`` of its unperturbed input with
    the patches pasted at ``paste``, keeping the outputs ``keep``; ``whole``: on whole maps (the
    patches pasted into the unperturbed input at ``expand`` first, unless they are whole already)."""

    mode: str
    expand: Index | None = None
    crop: Index | None = None
    paste: Index | None = None
    keep: Index | None = None


def plan_move(
    region: Region, field: Field | None, size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[Move, Region]:
    """The move through one block whose input and output maps have ``size`` and ``out_size``, and
    the region of the output patches."""
    if region.whole:
        return Move("whole"), region.whole_map(out_size)
    if field == POINT:
        return Move("point"), region
    if field is not None:
        ly, my, cy, ch = cone(region.y, region.h, size[0], out_size[0], field[0])
        lx, mx, cx, cw = cone(region.x, region.w, size[1], out_size[1], field[1])
        if ch * cw < FULL_FRACTION * size[0] * size[1]:
            move = Move(
                "crop",
                crop=_index(cy, cx, ch, cw, shared=True),
                paste=_index(region.y - cy, region.x - cx, region.h, region.w),
                keep=_index(ly - cy // field[0].s, lx - cx // field[1].s, my, mx),
            )
            return move, Region(ly, lx, my, mx)
    return Move("whole", expand=region.index()), region.whole_map(out_size)


def run_move(move: Move, block: nn.Module, src: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The output patches of ``block`` from its input patches ``values`` and unperturbed input ``src``."""
    if move.mode == "point":
        return block(values)
    if move.mode == "whole":
        return block(values if move.expand is None else expand(src, move.expand, values))
    crop = take(src, move.crop)
    put(crop, move.paste, values)
    return take(block(crop), move.keep)
