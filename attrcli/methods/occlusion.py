"""Occlusion (Zeiler & Fergus, ECCV 2014), at any layer (ML-Att).

A K×K window of the layer's map slides with stride s; every channel inside it is set to zero
(at ``input``: the normalised image, i.e. the dataset mean colour), and the window's drop
``y − y_occluded`` of the explained target's logit is spread over the positions it covers. Two
schemes place the windows and spread the drops:

- ``scheme=paper`` (default): the scheme of the GridPG paper's code, which the paper used
  (supplement H.2). Windows overhang the borders and are clipped to the map. For even K they
  start at ``(i − (K/s − 1))·s``, i = 0, 1, …, while the start is at most ``H − s`` (``H/s +
  K/s − 1`` windows per axis when s divides H and K: 57 on a 448-pixel grid with K=16, s=8);
  for odd K they are centred on every multiple of s from 0 to H inclusive and span ±(K−1)/2.
  Each window's drop is divided by the number of positions of the clipped window and *added*
  to each of them: a position's attribution is a sum over the windows covering it.
- ``scheme=inside``: Captum's ``Occlusion`` with a zero baseline. Windows lie inside the map
  (a last one flush with the border when the stride does not reach it) and a position's
  attribution is the *mean* drop over the windows covering it.

A window larger than the layer's map is refused when the job is planned.

Windows live on the grid-layout map in every setting. In DiFull a window only changes the heads
of the cells it touches, so it is evaluated on those cells alone (one cell row each); a window
straddling a cell border therefore spreads the target head's drop a little into the neighbour
cell, less than one kernel width deep (the paper's near-perfect DiFull occlusion, supplement B.2).
Only the network after the layer runs; evaluations are batched under ``--batch-size``.

The network after the layer runs incrementally (:mod:`attrcli.methods._incremental`, after
Nakandala et al., SIGMOD 2019): the unperturbed pass is computed once per grid image, and each
window recomputes only its receptive-field cone, block by block, reusing the unperturbed
activations elsewhere; GridPG's sliding head re-runs only the windows the cone reaches. The maps
equal those of the plain path (every occluded map through the whole network after the layer) up
to floating-point rounding; blocks that are not understood run the plain way. ``INCREMENTAL =
False`` forces the plain path (the benchmark's reference; not part of the artifact's identity).

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
from attrcli.methods._incremental import IncrementalSuffix, window_scores
from attrcli.methods._perturb import (
    cell_offsets,
    gather,
    perturbed_scores,
    reference_scores,
)
from attrcli.methods.base import METHODS, Method, MethodTesting

PAPER_CELL = 224
TABLE_BYTES = 8 * 2**20  # window masks made once per call up to this size, else per batch
INCREMENTAL = True  # re-run only each window's cone; False: the plain path (maps are equal)
SCHEMES = ("paper", "inside")


@dataclass(frozen=True)
class OcclusionConfig:
    k: int = 16  # window size in positions of the layer's map
    s: int = 8  # stride
    scheme: str = "paper"  # "paper": overhanging windows, drops summed; "inside": Captum's

    def __post_init__(self) -> None:
        if self.k < 1 or self.s < 1:
            raise UserError(f"occlusion needs k >= 1 and s >= 1, got k={self.k}, s={self.s}")
        if self.scheme not in SCHEMES:
            raise UserError(f"occlusion has no scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}")


def window_starts(size: int, k: int, s: int, scheme: str = "inside") -> list[int]:
    """Start of each window along one axis of ``size`` positions (see the module docstring).

    ``inside``: windows within the map, with a last one flush with the border. ``paper``:
    overhanging windows (starts may be negative or leave the window partly past the end).
    """
    if scheme == "paper":
        if k % 2:  # centred on 0, s, 2s, ..., up to size inclusive
            return [centre - (k - 1) // 2 for centre in range(0, size + 1, s)]
        return list(range(s - k, size - s + 1, s))
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
    testing = MethodTesting(tiny="k=4,s=4")
    kind = "model"
    Config = OcclusionConfig

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> OcclusionConfig:
        scale = min(cell_size, PAPER_CELL) / PAPER_CELL
        if layer == "input":  # at least 4×4 at stride 2 on small cells: 1/8 of a 32-pixel cell
            return OcclusionConfig(k=max(4, round(16 * scale)), s=max(2, round(8 * scale)))
        return OcclusionConfig(k=max(2, round(5 * scale)), s=max(1, round(2 * scale)))

    def check(self, *, layer: str, map_size: tuple[int, int]) -> None:
        if self.config.k > min(map_size):
            raise UserError(
                f"occlusion:k={self.config.k} is larger than the {map_size[0]}×{map_size[1]} map "
                f"at layer {layer}; valid: k <= {min(map_size)}"
            )

    def attribute(self, ctx) -> torch.Tensor:
        a = ctx.evaluated  # in DiFull only the target cells' rows: all that is perturbed
        H, W = ctx.setting.to_map(a[: ctx.units_per_grid]).shape[-2:]
        ky, kx, s, scheme = min(self.config.k, H), min(self.config.k, W), self.config.s, self.config.scheme
        ys, xs = window_starts(H, ky, s, scheme), window_starts(W, kx, s, scheme)
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

        with torch.no_grad():
            suffix = IncrementalSuffix.of(ctx) if INCREMENTAL else None
            if suffix is not None:
                y, occluded = window_scores(ctx, suffix, _boxes(in_row_y), _boxes(in_row_x), touched)
            else:
                y = reference_scores(ctx)
                occluded = _plain_scores(ctx, in_row_y, in_row_x, touched, y)
            drop = (y[:, :, None] - occluded).view(ctx.grids, ctx.targets.count, len(ys), len(xs))
            cover_y, cover_x = cover_y.to(drop.dtype), cover_x.to(drop.dtype)
            if scheme == "paper":  # each drop shared over its clipped window, summed over windows
                share_y, share_x = cover_y / cover_y.sum(1, keepdim=True), cover_x / cover_x.sum(1, keepdim=True)
                return torch.einsum("iy,btij,jx->btyx", share_y, drop, share_x)
            total = torch.einsum("iy,btij,jx->btyx", cover_y, drop, cover_x)
            return total / (cover_y.sum(0)[:, None] * cover_x.sum(0)[None, :])


def _boxes(covered: torch.Tensor) -> torch.Tensor:
    """``[start, stop)`` ``(T, windows, 2)`` of each window's covered positions of a row axis."""
    count = covered.sum(-1)
    start = covered.to(torch.uint8).argmax(-1)  # the first covered position
    return torch.stack([start, start + count], -1)


def _plain_scores(ctx, in_row_y: torch.Tensor, in_row_x: torch.Tensor, touched, y: torch.Tensor) -> torch.Tensor:
    """Scores ``(B, T, items)`` with each window zeroed, every occluded row run through the whole
    network after the layer (the path :data:`INCREMENTAL` replaces)."""
    a, nx = ctx.evaluated, in_row_x.shape[1]

    def keep(t, item):  # (R, 1, h, w) row masks: False inside the evaluation's window
        hidden = in_row_y[t, item // nx][:, :, None] & in_row_x[t, item % nx][:, None, :]
        return ~hidden[:, None]

    items, pairs = in_row_y.shape[1] * nx, len(in_row_y) * in_row_y.shape[1] * nx
    table = None  # every (target, window) mask at once, when small
    if pairs * in_row_y.shape[-1] * in_row_x.shape[-1] <= TABLE_BYTES:
        every = torch.arange(pairs, device=ctx.device)
        table = keep(every // items, every % items)

    def build(rows, target, item):
        t = 0 if target is None else target
        return gather(a, rows).mul_(keep(t, item) if table is None else table[t * items + item])

    return perturbed_scores(ctx, items, build, layer_index=ctx.layer_index, touched=touched, fill=y)
