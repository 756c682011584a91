"""Occlusion (Zeiler & Fergus, ECCV 2014), at any layer (ML-Att).

A K×K window of the layer's map slides with stride s; every channel inside it is set to zero
(at ``input``: the normalised image, i.e. the dataset mean colour). Each window's logit drop
``y − y_occluded`` of the explained target is added to every position of the window, and each
position is divided by the number of windows covering it, so a position's attribution is the
mean drop over the windows that cover it (Captum's ``Occlusion`` with a zero baseline). A final
window flush with the border is added when the stride does not reach it, so every position is
covered; a kernel larger than the map is clipped to the map.

Windows live on the grid-layout map in every setting. In DiFull a window only changes the heads
of the cells it touches, so it is evaluated on those cells alone (one cell row each); a window
straddling a cell border therefore spreads the target head's drop a little into the neighbour
cell, less than one kernel width deep (the paper's near-perfect DiFull occlusion, supplement B.2).
Only the network after the layer runs; evaluations are batched under ``--batch-size``.

Presets (supplement H.2 for ImageNet-sized cells; smaller cells scale the window with the cell,
keeping the overlap K/s = 2 at the input, but never below 4×4 at stride 2 there: a 2-pixel
window at stride 1 would cost 16× the evaluations for a window too small to hide a stroke):

============  ===========  ===============
cell size     input        hidden layers
============  ===========  ===============
≥ 224 px      K=16, s=8    K=5, s=2
32 px         K=4, s=2     K=2, s=1
other c       K=max(4, round(16c/224)), s=max(2, round(8c/224)) at the input;
              K=max(2, round(5c/224)), s=max(1, round(2c/224)) deeper
============  ===========  ===============
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.errors import UserError
from attrcli.methods._perturb import (
    cell_offsets,
    gather,
    perturbed_scores,
    reference_scores,
)
from attrcli.methods.base import METHODS, Method

PAPER_CELL = 224
TABLE_BYTES = 8 * 2**20  # window masks made once per call up to this size, else per batch


@dataclass(frozen=True)
class OcclusionConfig:
    k: int = 16  # window size in positions of the layer's map
    s: int = 8  # stride

    def __post_init__(self) -> None:
        if self.k < 1 or self.s < 1:
            raise UserError(f"occlusion needs k >= 1 and s >= 1, got k={self.k}, s={self.s}")


def window_starts(size: int, k: int, s: int) -> list[int]:
    """Start of each window along one axis, with a last window flush with the border."""
    k = min(k, size)
    starts = list(range(0, size - k + 1, s))
    if starts[-1] != size - k:
        starts.append(size - k)
    return starts


def coverage(starts: list[int], k: int, size: int, device=None) -> torch.Tensor:
    """Indicator ``(windows, size)``: which positions each window of size ``k`` covers."""
    first = torch.tensor(starts, device=device)[:, None]
    pos = torch.arange(size, device=device)[None]
    return ((pos >= first) & (pos < first + k)).float()


@METHODS.register("occlusion")
class Occlusion(Method):
    name = "occlusion"
    kind = "model"
    Config = OcclusionConfig

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> OcclusionConfig:
        scale = min(cell_size, PAPER_CELL) / PAPER_CELL
        if layer == "input":  # at least 4×4 at stride 2 on small cells: 1/8 of a 32-pixel cell
            return OcclusionConfig(k=max(4, round(16 * scale)), s=max(2, round(8 * scale)))
        return OcclusionConfig(k=max(2, round(5 * scale)), s=max(1, round(2 * scale)))

    def attribute(self, ctx) -> torch.Tensor:
        a = ctx.evaluated  # in DiFull only the target cells' rows: all that is perturbed
        H, W = ctx.setting.to_map(a[: ctx.units_per_grid]).shape[-2:]
        ky, kx, s = min(self.config.k, H), min(self.config.k, W), self.config.s
        ys, xs = window_starts(H, ky, s), window_starts(W, kx, s)
        cover_y, cover_x = coverage(ys, ky, H, ctx.device), coverage(xs, kx, W, ctx.device)
        touched = None
        if ctx.setting.disconnected:  # a row is a cell: coverage of the target's cell positions
            (h, w), offsets = a.shape[-2:], cell_offsets(ctx, (H, W)).tolist()
            in_row_y = torch.stack([cover_y[:, top : top + h] for top, _ in offsets]).bool()
            in_row_x = torch.stack([cover_x[:, left : left + w] for _, left in offsets]).bool()
            # only windows overlapping target t's cell can move head t
            touched = (in_row_y.any(-1)[:, :, None] & in_row_x.any(-1)[:, None, :]).flatten(1)
        else:
            in_row_y, in_row_x = cover_y[None].bool(), cover_x[None].bool()

        def keep(t, item):  # (R, 1, h, w) row masks: False inside the evaluation's window
            hidden = in_row_y[t, item // len(xs)][:, :, None] & in_row_x[t, item % len(xs)][:, None, :]
            return ~hidden[:, None]

        items, pairs = len(ys) * len(xs), len(in_row_y) * len(ys) * len(xs)
        table = None  # every (target, window) mask at once, when small
        if pairs * in_row_y.shape[-1] * in_row_x.shape[-1] <= TABLE_BYTES:
            every = torch.arange(pairs, device=ctx.device)
            table = keep(every // items, every % items)

        def build(rows, target, item):
            t = 0 if target is None else target
            return gather(a, rows).mul_(keep(t, item) if table is None else table[t * items + item])

        with torch.no_grad():
            y = reference_scores(ctx)
            occluded = perturbed_scores(ctx, items, build, layer_index=ctx.layer_index, touched=touched, fill=y)
            drop = (y[:, :, None] - occluded).view(ctx.grids, ctx.targets.count, len(ys), len(xs))
            cover_y, cover_x = cover_y.to(drop.dtype), cover_x.to(drop.dtype)
            total = torch.einsum("iy,btij,jx->btyx", cover_y, drop, cover_x)
            return total / (cover_y.sum(0)[:, None] * cover_x.sum(0)[None, :])
