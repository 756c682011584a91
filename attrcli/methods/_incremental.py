"""Incremental re-evaluation of occluded windows: only what a window can change (exact).

An occluded window changes a layer's activations only inside its receptive-field cone: one block
further the changed region is the window grown by the block's kernel and divided by its stride,
and everything outside it equals the unperturbed pass. So the unperturbed activations after every
block are computed once per network row, and each window runs every block on a crop of the
block's input around the cone only, wide enough that the crop's outputs over the cone are exact;
those outputs are the window's new *patch* of the block's output, which elsewhere is the
unperturbed one (Nakandala, Kumar & Papakonstantinou, "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019; their exact mode).

How a block's cone is computed and cropped, with its padding kept exact, is in
:mod:`attrcli.methods._cones`; what is understood (:func:`~attrcli.methods._cones.receptive_field`):
convolutions, max and average pooling, eval-mode batch norm, dropout in eval mode, point-wise
activations, ``Sequential`` and torchvision's ``BasicBlock`` and ``Bottleneck``. From a block that
is not understood, or whose crop would cover most of its map, on, the blocks run on the whole
patched map, as the plain path does. The heads: GridPG's sliding head re-runs only the windows of
the final map that overlap the patch, with VGG's first classifier layer applied to the patch alone
(:mod:`attrcli.methods._sliding_head`); DiPart re-runs only the target parts that the patch
overlaps; the other heads (DiFull's, a global-average-pooling head) run on the patched final map.
Where nothing would be saved (:attr:`IncrementalSuffix.saves_work`) occlusion takes the plain path.

Each chunk's plan (crop positions, head terms) depends only on its windows, so it is made once and
run on every grid image's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attrcli.methods._cones import (
    FULL_FRACTION,
    POINT,
    Index,
    Move,
    Region,
    _index,
    expand,
    plan_move,
    receptive_field,
    run_move,
    take,
)
from attrcli.methods._sliding_head import RowWindows, SlidingHead, SlidingPlan
from attrcli.settings.grid import DiPart, GridPG

if TYPE_CHECKING:
    from attrcli.engine.context import AttributionContext
    from attrcli.settings.base import GridSetting


@dataclass
class Plan:
    """Everything about a chunk of windows that does not depend on the row: where the zeroed
    boxes lie, each block's move and what the head re-runs. Made once per chunk, run per row."""

    start: Index  # the windows' patches in the layer's map
    hidden: torch.Tensor  # (R, 1, h, w): zeroed positions of the patches
    expand: Index | None  # the patches are most of the map: run whole from the start
    moves: list[Move]
    final: Region
    head: SlidingPlan | None = None  # GridPG's sliding head, unless the final patches are whole
    hits: list[torch.Tensor] | None = None  # DiPart: the windows whose patch overlaps each target part


def _head_kind(setting: GridSetting) -> str:
    if setting.disconnected:
        return "whole"
    heads = type(setting).heads
    if heads is GridPG.heads and not setting.model.gap_head:
        return "sliding"
    return "parts" if heads is DiPart.heads else "whole"


@dataclass
class _Row:
    """One network row's unperturbed pass: each block's output and what its head needs."""

    outs: list[torch.Tensor]  # the layer's activations, then each block's output
    cached: RowWindows | torch.Tensor | None  # GridPG's windows; DiPart's part logits (heads, K)


class IncrementalSuffix:
    """The network after a layer, re-evaluated for windows zeroed at the layer (module docstring)."""

    def __init__(self, setting: GridSetting, layer_index: int) -> None:
        self.setting = setting
        self.model = setting.model
        self.blocks = [module for _, module in self.model.blocks[layer_index + 1 :]]
        self.fields = [receptive_field(module) for module in self.blocks]
        self.inplace = [any(getattr(m, "inplace", False) for m in b.modules()) for b in self.blocks]
        self.head = _head_kind(setting)
        self.sliding = SlidingHead(self.model, setting.n) if self.head == "sliding" else None

    @classmethod
    def of(cls, ctx: AttributionContext) -> IncrementalSuffix | None:
        """The incremental suffix for ``ctx``'s layer, or ``None`` where it would save nothing."""
        if ctx.evaluated.dim() != 4:
            return None
        suffix = cls(ctx.setting, ctx.layer_index)
        return suffix if suffix.saves_work else None

    @property
    def saves_work(self) -> bool:
        """Whether a block with a real cone comes before any block that is not understood, or,
        all blocks understood, the head re-runs only part of its work."""
        for field in self.fields:
            if field is None:
                return False
            if field != POINT:
                return True
        return self.head != "whole"

    # --- one row ----------------------------------------------------------------------
    def row(self, a: torch.Tensor) -> _Row:
        """The unperturbed pass of one row ``a`` ``(1, C, H, W)`` of the layer's activations."""
        outs = [a]
        for block, inplace in zip(self.blocks, self.inplace):
            outs.append(block(outs[-1].clone() if inplace else outs[-1]))
        final, cached = outs[-1], None
        if self.head == "sliding":
            cached = self.sliding.row(final)
        elif self.head == "parts":
            cached = self.setting.heads(final)[0]
        return _Row(outs, cached)

    def reference(self, row: _Row, heads: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Unperturbed scores of the row: ``(T,)`` for target heads and classes ``(T,)``
        (connected), ``()`` for the class of a DiFull cell row."""
        final = row.outs[-1]
        if self.setting.disconnected:
            return self.model.head(final)[0, classes]
        if self.head == "sliding":
            return row.cached.logits.mean((2, 3))[0, classes]
        if self.head == "parts":
            return row.cached[heads, classes]
        return self.setting.heads(final)[0, heads, classes]

    # --- a chunk of windows -----------------------------------------------------------
    def plan(self, row: _Row, boxes: torch.Tensor, heads: torch.Tensor) -> Plan:
        """The plan of windows that zero boxes ``(R, 4)`` (rows ``[y0, y1)``, columns
        ``[x0, x1)``) of the layer's map, for any row shaped as ``row``."""
        sizes = [tuple(out.shape[-2:]) for out in row.outs]
        H, W = sizes[0]
        h, w = int((boxes[:, 1] - boxes[:, 0]).max()), int((boxes[:, 3] - boxes[:, 2]).max())
        y = torch.minimum(boxes[:, 0], torch.full_like(boxes[:, 0], H - h))
        x = torch.minimum(boxes[:, 2], torch.full_like(boxes[:, 2], W - w))
        _, ys, xs = start = _index(y, x, h, w, shared=True)
        hidden = (ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 1, None, None])
        hidden = (hidden & (xs >= boxes[:, 2, None, None]) & (xs < boxes[:, 3, None, None]))[:, None]
        region, expand_start = Region(y, x, h, w), None
        if h * w >= FULL_FRACTION * H * W:
            expand_start, region = region.index(), region.whole_map((H, W))
        moves = []
        for field, size, out_size in zip(self.fields, sizes, sizes[1:]):
            move, region = plan_move(region, field, size, out_size)
            moves.append(move)
        plan = Plan(start, hidden, expand_start, moves, region)
        if self.head == "sliding" and not region.whole:
            plan.head = self.sliding.plan(region, sizes[-1], self._cell(row.outs[-1]))
        elif self.head == "parts":
            d, n = self._cell(row.outs[-1]), self.setting.n
            plan.hits = [region.overlaps(head // n * d, head % n * d, d).nonzero()[:, 0] for head in heads.tolist()]
        return plan

    def scores(self, row: _Row, plan: Plan, heads: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scores of the plan's windows on ``row``: ``(R, T)`` for target heads and classes ``(T,)``
        (connected), ``(R,)`` for the class of a DiFull cell row."""
        a = row.outs[0]
        values = take(a, plan.start).masked_fill_(plan.hidden, 0)
        if plan.expand is not None:
            values = expand(a, plan.expand, values)
        for move, block, src in zip(plan.moves, self.blocks, row.outs):
            values = run_move(move, block, src, values)
        final = row.outs[-1]
        if self.head == "sliding":
            return self.sliding.scores(plan.head, row.cached, final, plan.final, values)[:, classes]
        full = values if plan.final.whole else expand(final, plan.final.index(), values)
        if self.setting.disconnected:
            return self.model.head(full)[:, classes]
        if self.head == "whole":
            return self.setting.heads(full)[:, heads, classes]
        d, n = self._cell(final), self.setting.n
        out = row.cached[heads, classes].expand(len(full), -1).clone()
        for t, (head, cls, hit) in enumerate(zip(heads.tolist(), classes.tolist(), plan.hits)):
            if len(hit):  # DiPart: only the target parts that a patch overlaps run again
                top, left = head // n * d, head % n * d
                out[hit, t] = self.model.head(full[hit, :, top : top + d, left : left + d])[:, cls]
        return out

    def _cell(self, final: torch.Tensor) -> int:
        """Side of one cell's part of the final map (GridPG's window, DiPart's part)."""
        return final.shape[-1] // self.setting.n


def window_scores(
    ctx: AttributionContext,
    suffix: IncrementalSuffix,
    box_y: torch.Tensor,
    box_x: torch.Tensor,
    touched: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unperturbed scores ``(B, T)`` and scores ``(B, T, items)`` with each window zeroed.

    Window ``item`` zeroes rows ``box_y[t, item // nx]`` and columns ``box_x[t, item % nx]``
    (``[start, stop)`` in network-row coordinates; ``t`` is 0 in connected settings, the target in
    DiFull, whose rows are the target's cell). In DiFull only the ``touched`` ``(T, items)`` pairs
    are evaluated, the others keep the unperturbed score. The unperturbed pass runs once per
    network row; a chunk holds at most ``--batch-size`` units of evaluations, as the plain path,
    and its plan is made once for all rows.
    """
    B, T, device = ctx.grids, ctx.targets.count, ctx.device
    a, nx = ctx.evaluated, box_x.shape[1]
    items = box_y.shape[1] * nx
    heads, step = ctx.targets.heads, ctx.batch_size * ctx.units_per_grid
    reference = a.new_empty(B, T)
    out = a.new_empty(B, T, items)
    plans: dict[tuple[int, int], tuple[torch.Tensor, Plan]] = {}
    with torch.inference_mode():
        for g in range(B):
            every = torch.arange(items, device=device)
            if not ctx.setting.disconnected:
                units = [(None, g, every)]
            else:
                units = [
                    (t, g * ctx.units_per_grid + int(ctx.targets.cells[t]),
                     every if touched is None else touched[t].nonzero()[:, 0].to(device))
                    for t in range(T)
                ]
            for t, row_index, chosen in units:
                target = slice(None) if t is None else t
                classes = ctx.targets.classes[g, target]
                row = suffix.row(a[row_index : row_index + 1])
                reference[g, target] = suffix.reference(row, heads, classes)
                if t is not None:  # pairs left out keep the unperturbed score
                    out[g, t] = reference[g, t]
                box = 0 if t is None else t
                for start in range(0, len(chosen), step):
                    if (box, start) not in plans:
                        item = chosen[start : start + step]
                        boxes = torch.cat([box_y[box, item // nx], box_x[box, item % nx]], 1)
                        plans[box, start] = item, suffix.plan(row, boxes, heads)
                    item, plan = plans[box, start]
                    scores = suffix.scores(row, plan, heads, classes)
                    if t is None:
                        out[g, :, item] = scores.T
                    else:
                        out[g, t, item] = scores
    return reference, out
