"""GridPG's sliding head, re-evaluated for a patched final map (:mod:`attrcli.methods._incremental`).

GridPG slides the model's head over every window of the single-cell size ``d``×``d`` of the
final map at stride 1 and averages the window logits (:meth:`attrcli.settings.grid.GridPG.heads`).
A patch of the final map changes only the windows that overlap it; the others keep their
unperturbed logits, so the mean is the unperturbed sum minus the old and plus the new logits of
those windows. On VGG-style models that is still most windows, and the head's first layer, a
linear map of the whole window (25088 × 4096 on VGG at 224 pixels), is most of the cost: where
the head is recognised as ``rest(linear(flatten(pool(window))))`` (:class:`LinearHead`), a window's
first-layer output is the unperturbed one plus the linear map of the change, which is zero outside
the patch, so only the patch's positions are multiplied (one matrix product per kernel offset),
and only ``rest`` runs again per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attrcli.methods._cones import Axis, Index, Region, _index, cone, put, take
from attrcli.models.adapter import ModelAdapter


@dataclass
class LinearHead:
    """A head that is ``rest(first(flatten(pool(window))))`` with ``first`` linear and ``pool`` the
    identity on the window: VGG's ``avgpool`` and ``classifier``."""

    pool: nn.Module
    first: nn.Linear
    rest: nn.Module
    kernels: torch.Tensor | None = None  # (d·d, out, C): first's weight at each window position

    @classmethod
    def find(cls, model: ModelAdapter, channels: int, d: int) -> LinearHead | None:
        """The model's head in this form, judged by its modules (VGG-style ``avgpool`` and
        ``classifier``); :class:`SlidingHead` also checks it against the head on real windows."""
        classifier, pool = getattr(model.module, "classifier", None), getattr(model.module, "avgpool", None)
        if not isinstance(classifier, nn.Sequential) or type(classifier).forward is not nn.Sequential.forward:
            return None
        first = classifier[0] if len(classifier) else None
        if type(first) is not nn.Linear or first.in_features != channels * d * d:
            return None
        size = getattr(pool, "output_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size or ())
        identity = type(pool) is nn.Identity or (type(pool) is nn.AdaptiveAvgPool2d and size == (d, d))
        return cls(pool, first, classifier[1:]) if identity else None

    def pre(self, windows: torch.Tensor) -> torch.Tensor:
        """First-layer outputs ``(N, out)`` of windows ``(N, C, d, d)``."""
        return self.first(torch.flatten(self.pool(windows), 1))

    def weight_at(self, offset: int, channels: int, d: int) -> torch.Tensor:
        """``(out, C)``: the first layer's weight on window position ``offset`` (row-major)."""
        if self.kernels is None:
            weight = self.first.weight
            self.kernels = weight.view(len(weight), channels, d * d).permute(2, 0, 1).contiguous()
        return self.kernels[offset]


@dataclass
class RowWindows:
    """The unperturbed windows of one row: logits ``(1, K, ny, nx)`` and, with a linear head,
    first-layer outputs ``(1, out, ny, nx)``."""

    logits: torch.Tensor
    pre: torch.Tensor | None


@dataclass
class SlidingPlan:
    """What the head re-runs for a chunk: the windows ``keep`` of the window grid; without a
    linear head the final map's ``crop`` holding them (the patches go at ``paste``); with one,
    per kernel offset, the patch positions ``terms`` (rows, y, x) that reach a kept window, at
    ``slots`` of the kept windows (flattened)."""

    keep: Index
    crop: Index | None = None
    paste: Index | None = None
    terms: list[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] | None = None


class SlidingHead:
    """GridPG's head for patched final maps (module docstring)."""

    def __init__(self, model: ModelAdapter, n: int) -> None:
        self.model = model
        self.n = n
        self.linear: LinearHead | None = None
        self.checked = False

    def cell(self, final: torch.Tensor) -> int:
        """The window side ``d``: one cell's part of the final map, as GridPG computes it."""
        return final.shape[-1] // self.n

    def windows(self, crop: torch.Tensor, d: int) -> torch.Tensor:
        """Every ``d``×``d`` window of ``crop`` at stride 1, ``(R·wy·wx, C, d, d)`` in the order of
        ``F.unfold``, copied once straight into the layout the head reads."""
        view = crop.unfold(2, d, 1).unfold(3, d, 1)  # (R, C, wy, wx, d, d)
        R, C, wy, wx = view.shape[:4]
        return view.permute(0, 2, 3, 1, 4, 5).reshape(R * wy * wx, C, d, d)

    def window_logits(self, crop: torch.Tensor, d: int) -> torch.Tensor:
        """The head on every window of ``crop``: ``(R, K, wy, wx)``."""
        R, (Hc, Wc) = len(crop), crop.shape[-2:]
        logits = self.model.head(self.windows(crop, d))
        return logits.view(R, Hc - d + 1, Wc - d + 1, -1).permute(0, 3, 1, 2)

    def row(self, final: torch.Tensor) -> RowWindows:
        """The unperturbed windows of a final map ``(1, C, Hf, Wf)``. On the first row, a linear
        head found by its modules is kept only if it gives exactly the head's logits."""
        d = self.cell(final)
        ny, nx = final.shape[-2] - d + 1, final.shape[-1] - d + 1
        windows = self.windows(final, d)
        check = not self.checked
        if check:
            self.checked = True
            self.linear = LinearHead.find(self.model, final.shape[1], d)
        if self.linear is None:
            return RowWindows(self.window_logits(final, d), None)
        pre = self.linear.pre(windows)
        logits = self.linear.rest(pre)
        if check and not torch.equal(logits, self.model.head(windows)):
            self.linear = None
            return RowWindows(self.window_logits(final, d), None)
        return RowWindows(logits.view(1, ny, nx, -1).permute(0, 3, 1, 2), pre.view(1, ny, nx, -1).permute(0, 3, 1, 2))

    def plan(self, region: Region, size: tuple[int, int], d: int) -> SlidingPlan:
        """The plan for patches at ``region`` of a final map of ``size`` (not whole)."""
        (Hf, Wf), window = size, Axis(d, 1, 0)
        ny, nx = Hf - d + 1, Wf - d + 1
        ly, my, cy, ch = cone(region.y, region.h, Hf, ny, window)
        lx, mx, cx, cw = cone(region.x, region.w, Wf, nx, window)
        if self.linear is None:
            return SlidingPlan(
                keep=_index(cy, cx, ch - d + 1, cw - d + 1, shared=True),
                crop=_index(cy, cx, ch, cw, shared=True),
                paste=_index(region.y - cy, region.x - cx, region.h, region.w),
            )
        # patch position q reaches window q − k at kernel offset k when that window exists
        k = torch.arange(d, device=region.y.device)
        qy = torch.arange(region.h, device=region.y.device)
        qx = torch.arange(region.w, device=region.y.device)
        wy = region.y[:, None, None] + qy[None, :, None] - k[None, None, :]  # (R, h, d)
        wx = region.x[:, None, None] + qx[None, :, None] - k[None, None, :]  # (R, w, d)
        valid = ((wy >= 0) & (wy < ny))[:, :, None, :, None] & ((wx >= 0) & (wx < nx))[:, None, :, None, :]
        ky, kx, r, y, x = valid.permute(3, 4, 0, 1, 2).nonzero(as_tuple=True)
        slots = (r * my + (region.y[r] + y - ky - ly[r])) * mx + (region.x[r] + x - kx - lx[r])
        offsets = ky * d + kx
        counts = torch.bincount(offsets, minlength=d * d).tolist()
        terms, start = [], 0
        for offset, count in enumerate(counts):
            if count:
                part = slice(start, start + count)
                terms.append((offset, (r[part], y[part], x[part]), slots[part]))
            start += count
        return SlidingPlan(keep=_index(ly, lx, my, mx, shared=True), terms=terms)

    def scores(self, plan: SlidingPlan | None, row: RowWindows, final: torch.Tensor, region: Region,
               values: torch.Tensor) -> torch.Tensor:
        """Mean window logits ``(R, K)`` of the final maps whose patches ``values`` lie at
        ``region`` (``plan`` ``None``: ``values`` are whole maps)."""
        d = self.cell(final)
        if plan is None:
            return self.window_logits(values, d).mean((2, 3))
        if plan.terms is None:
            crop = take(final, plan.crop)
            put(crop, plan.paste, values)
            new = self.window_logits(crop, d).sum((2, 3))
        else:
            base = take(final, _index(region.y, region.x, region.h, region.w, shared=True))
            change = (values - base).permute(0, 2, 3, 1)  # (R, h, w, C)
            kept = take(row.pre, plan.keep)  # (R, out, my, mx)
            R, out, my, mx = kept.shape
            pre = kept.permute(0, 2, 3, 1).reshape(R * my * mx, out)
            for offset, at, slots in plan.terms:
                pre.index_add_(0, slots, change[at] @ self.linear.weight_at(offset, change.shape[-1], d).T)
            new = self.linear.rest(pre).view(R, my * mx, -1).sum(1)
        old = take(row.logits, plan.keep).sum((2, 3))
        return (row.logits.sum((2, 3)) - old + new) / row.logits[0, 0].numel()
