"""Shared machinery of the perturbation methods (occlusion, RISE, Score-CAM, Ablation-CAM).

A perturbation method scores many perturbed copies of a layer's activations (or of the image).
:func:`perturbed_scores` batches those evaluations under ``--batch-size`` and runs only the
network after the perturbed layer. What one evaluation is depends on the setting:

- connected settings (GridPG, DiPart): one evaluation perturbs the whole grid image (one
  network row) and a single forward pass scores every target at once, since all heads see it;
- DiFull: a change inside cell j cannot move head i ≠ j (supplement F), so an evaluation
  perturbs one cell row and is scored for the head of that cell only. Methods may also skip
  perturbations that do not touch a target's cell (``touched``): their score is the unperturbed
  one by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from attrcli.engine.context import AttributionContext
    from attrcli.methods.base import Method

Build = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]  # (rows, target, item)
SKIP_KNOWN = True  # skip the passes whose result is known without them (False: evaluate every one)


def row_index(ctx: AttributionContext, grid: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Network-layout row that an evaluation perturbs: the grid image, or in DiFull the target's cell."""
    if target is None:
        return grid
    return grid * ctx.units_per_grid + ctx.targets.cells[target]


def gather(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of rows ``a[rows]`` in ``a``'s memory layout: one block copy per row (plain or
    channels-last), several times faster than advanced indexing on the CPU."""
    if a.is_contiguous():
        return a.index_select(0, rows)
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last):
        return a.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return a[rows]


def cell_offsets(ctx: AttributionContext, size: tuple[int, int]) -> torch.Tensor:
    """Top-left corner ``(T, 2)`` of each target's cell in a grid-layout map of ``size``."""
    n = ctx.setting.n
    h, w = size[0] // n, size[1] // n
    cells = ctx.targets.cells
    return torch.stack([(cells // n) * h, (cells % n) * w], 1)


def evaluate(
    ctx: AttributionContext, rows: torch.Tensor, classes: torch.Tensor, *, layer_index: int, softmax: bool = False
) -> torch.Tensor:
    """Target scores of perturbed rows at a layer: ``(R, T)`` in connected settings, ``(R,)`` in DiFull.

    ``classes``: each row's target classes, ``(R, T)`` or ``(R,)``. DiFull rows are single cells:
    head i of DiFull is the model's head applied to cell i alone, so a cell row is scored
    without its n² − 1 neighbours.
    """
    if not ctx.setting.disconnected:
        logits = ctx.setting.suffix(rows, layer_index)  # (R, heads, classes)
        if softmax:
            logits = logits.softmax(-1)
        picked = torch.arange(len(rows), device=rows.device)[:, None]
        return logits[picked, ctx.targets.heads[None], classes]
    model = ctx.setting.model
    logits = model.head(model.run_blocks(rows, layer_index))  # (R, classes)
    if softmax:
        logits = logits.softmax(-1)
    return logits.gather(1, classes[:, None])[:, 0]


def plan(
    ctx: AttributionContext, items: int, touched: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Flat ``(grid, target, item)`` indices of every evaluation (target ``None`` when connected).

    ``touched`` ``(T, items)``: in DiFull only these (target, item) pairs are evaluated.
    """
    B, T, device = ctx.grids, ctx.targets.count, ctx.device
    if not ctx.setting.disconnected:
        grid = torch.arange(B, device=device).repeat_interleave(items)
        return grid, None, torch.arange(items, device=device).repeat(B)
    if touched is None:
        touched = torch.ones(T, items, dtype=torch.bool)
    target, item = touched.nonzero(as_tuple=True)
    per_grid = len(target)
    grid = torch.arange(B, device=device).repeat_interleave(per_grid)
    return grid, target.to(device).repeat(B), item.to(device).repeat(B)


def perturbed_scores(
    ctx: AttributionContext,
    items: int,
    build: Build,
    *,
    layer_index: int,
    softmax: bool = False,
    touched: torch.Tensor | None = None,
    fill: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores ``(B, T, items)`` of ``items`` perturbations of every grid image.

    ``build(rows, target, item)`` returns the perturbed network-layout rows of a chunk of
    evaluations, given their indices (see :func:`row_index`); builders copy the rows with
    :func:`gather` and mask them in place, as an out-of-place broadcast product is several
    times slower on the CPU. A forward pass holds at most ``--batch-size`` units (in DiFull
    ``batch_size · n²`` cell rows). Row indices and target classes are made once for the whole
    plan. Pairs left out by ``touched`` get ``fill`` ``(B, T)``, the unperturbed score.
    ``keep`` (boolean, ``(B, items)`` in connected settings, ``(B, T, items)`` in DiFull) leaves
    out evaluations whose score the method knows without a pass (:data:`SKIP_KNOWN`); they get
    ``fill`` too, or 0.
    """
    B, T = ctx.grids, ctx.targets.count
    grid, target, item = plan(ctx, items, touched)
    if keep is not None and SKIP_KNOWN:
        chosen = keep[grid, item] if target is None else keep[grid, target, item]
        grid, item = grid[chosen], item[chosen]
        target = None if target is None else target[chosen]
    rows = row_index(ctx, grid, target)
    classes = ctx.targets.classes[grid] if target is None else ctx.targets.classes[grid, target]
    if fill is not None:
        out = fill[:, :, None].expand(B, T, items).clone()
    else:
        out = torch.zeros(B, T, items, device=ctx.device, dtype=ctx.evaluated.dtype)
    step = ctx.batch_size * ctx.units_per_grid
    scores = out.new_empty((len(grid), T) if target is None else (len(grid),))  # in plan order
    with torch.inference_mode():  # the perturbed rows and their logits are never differentiated
        for start in range(0, len(grid), step):
            chunk = slice(start, start + step)
            perturbed = build(rows[chunk], None if target is None else target[chunk], item[chunk])
            scores[chunk] = evaluate(ctx, perturbed, classes[chunk], layer_index=layer_index, softmax=softmax)
    if target is None:
        out[grid, :, item] = scores
    else:
        out[grid, target, item] = scores
    return out


def per_evaluation(ctx: AttributionContext, a: torch.Tensor, stat: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``stat`` ``(R, C, h, w) -> (R, C)`` of the rows a channel method perturbs, shaped as
    :func:`perturbed_scores`' ``keep``: ``(B, C)`` connected, ``(B, T, C)`` of the target cells'
    rows in DiFull."""
    if not ctx.setting.disconnected:
        return stat(a)
    rows = a.view(ctx.grids, ctx.units_per_grid, *a.shape[1:])[:, ctx.targets.cells]
    return stat(rows.reshape(-1, *a.shape[1:])).view(ctx.grids, ctx.targets.count, a.shape[1])


def first_duplicates(a: torch.Tensor) -> torch.Tensor:
    """For rows ``a`` ``(R, C, h, w)``: per row and channel the first channel bitwise equal to it
    ``(R, C)`` (itself when it is the first)."""
    R, C = a.shape[:2]
    first = torch.arange(C, device=a.device).repeat(R, 1)
    flat = a.detach().reshape(R, C, -1)
    for r in range(R):
        _, inverse = torch.unique(flat[r], dim=0, return_inverse=True)
        if int(inverse.max()) + 1 == C:
            continue  # every channel is different
        lowest = torch.full((C,), C, dtype=torch.long, device=a.device)
        lowest.scatter_reduce_(0, inverse, first[r], reduce="amin")
        first[r] = lowest[inverse]
    return first


def reference_scores(ctx: AttributionContext, *, softmax: bool = False) -> torch.Tensor:
    """Unperturbed target scores ``(B, T)`` of the layer's activations."""
    a = ctx.evaluated
    return perturbed_scores(
        ctx, 1, lambda rows, t, i: gather(a, rows), layer_index=ctx.layer_index, softmax=softmax
    )[..., 0]


def channel_map(ctx: AttributionContext, weights: torch.Tensor) -> torch.Tensor:
    """CAM map ``(B, T, h, w)``: channel weights ``(B, T, C)`` times the grid-layout activations.

    In DiFull the weights of target t come from head t alone, but they weigh the whole stitched
    map, as for Grad-CAM: a scalar per channel cannot tell the two same-class corners apart.
    """
    a = ctx.setting.to_map(ctx.activations)
    return torch.einsum("btc,bchw->bthw", weights.to(a.dtype), a)


def gradient_maps(method: Method, ctx: AttributionContext) -> torch.Tensor:
    """Maps ``(B, T, h, w)`` of a gradient-kind method from the activations held by ``ctx``.

    The same activations and gradients as the engine's shared gradient pass, but for whatever
    activations the context holds (SmoothGrad's noisy copies) and batched under ``--batch-size``.
    """
    grid, target = ctx.explained_units()
    per = ctx.units_per_grid
    a = ctx.unit_rows(grid)
    grads = torch.empty_like(a)
    for start in range(0, len(grid), ctx.batch_size):
        stop = min(start + ctx.batch_size, len(grid))
        rows = slice(start * per, stop * per)
        _, grads[rows] = ctx.gradients(
            a[rows], grid[start:stop], None if target is None else target[start:stop]
        )
    a, g = ctx.setting.to_map(a), ctx.setting.to_map(grads)
    B, T = ctx.grids, ctx.targets.count
    if target is None:
        mask = ctx.setting.cell_mask(ctx.targets.cells, g.shape[-2:], ctx.device).to(g.dtype)
        return method.from_gradients(a[:, None], g[:, None] * mask[None, :, None])
    return method.from_gradients(a.view(B, T, *a.shape[1:]), g.view(B, T, *g.shape[1:]))
