"""AggAtt: aggregate attribution maps by percentile bins of their localization score (H.4).

One key's maps for one target cell are sorted by score, descending, ties broken by the larger
numerator (then by position, for determinism), and cut into the percentile bins of
:data:`EDGES`. Each bin's map is the mean of its members' positive upsampled maps.

Bin boundaries: the bin between edges ``e_b`` and ``e_(b+1)`` holds sorted positions
``[round(N e_b / 100), round(N e_(b+1) / 100))``, rounding halves up. The boundaries are monotone
and run from 0 to N, so every attribution is in exactly one bin for any N; a bin may be empty for
small N, and then its map is zeros and its count 0.

Normaliser: the 99.5th percentile over all values of the non-empty bin maps of the key, shared by
its six bins so that they stay comparable (the plot divides every bin by it). It falls back to the
maximum if that percentile is 0, and to 1.0 if every map is zero, so dividing is always safe.

Resolution: bins are accumulated at the grid's pixel size and stored at that size when it is at
most ``max_size``; larger grids are stored area-averaged by the smallest integer factor that
fits (448 -> 224), which commutes with the mean over a bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attrcli.errors import UserError
from attrcli.names import AGGATT_MAX_SIZE
from attrcli.metrics.localization import MapSource, iter_positive
from attrcli.progress import Progress

EDGES: tuple[int, ...] = (0, 2, 5, 50, 95, 98, 100)
NORMALISER_PERCENTILE = 99.5
MAX_SIZE = AGGATT_MAX_SIZE


def bin_bounds(count: int, edges: tuple[int, ...] = EDGES) -> np.ndarray:
    """Sorted-position boundaries of the bins, ``len(edges)`` ints from 0 to ``count``.

    ``round(count * e / 100)`` with halves rounded up, in exact integer arithmetic.
    """
    if count < 0:
        raise UserError(f"cannot bin {count} attributions")
    return np.array([(2 * count * e + 100) // 200 for e in edges], dtype=np.int64)


def sort_order(scores: np.ndarray, numerators: np.ndarray) -> np.ndarray:
    """Indices by score descending, then numerator descending, then index ascending."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    numerators = np.asarray(numerators, dtype=np.float64).ravel()
    return np.lexsort((np.arange(scores.size), -numerators, -scores))


def median_positions(bounds: np.ndarray) -> np.ndarray:
    """Sorted position of each bin's median member (the lower one for even counts), -1 if empty."""
    lo, hi = bounds[:-1], bounds[1:]
    return np.where(hi > lo, lo + (hi - lo - 1) // 2, -1)


def normaliser(bins: np.ndarray, counts: np.ndarray, q: float = NORMALISER_PERCENTILE) -> float:
    """The common normalising factor of one key's bin maps (see the module docstring)."""
    filled = bins[np.asarray(counts) > 0]
    if filled.size == 0:
        return 1.0
    value = float(np.percentile(filled, q))
    if value <= 0:
        value = float(filled.max())
    return value if value > 0 else 1.0


def stored_size(image_size: int, max_size: int = MAX_SIZE) -> int:
    """Side of the stored bin maps: the grid size divided by the smallest factor that fits."""
    if max_size < 1:
        raise UserError(f"--max-size must be at least 1, got {max_size}")
    return image_size // math.ceil(image_size / max_size)


@dataclass
class AggAtt:
    """The AggAtt of one key at one target cell.

    ``members`` index the flattened ``N x T`` attribution list (``row * T + slot``) of the
    attributions that target ``cell``; ``median`` gives, per bin, the flattened index of its
    median member (-1 when empty).
    """

    bins: np.ndarray  # float32 (6, S, S): mean positive upsampled map per bin
    edges: np.ndarray  # percentile edges
    bounds: np.ndarray  # sorted-position boundaries
    counts: np.ndarray  # members per bin
    median: np.ndarray  # flattened index of each bin's median member
    median_score: np.ndarray  # its score (NaN when empty)
    normaliser: float
    cell: int
    slots: np.ndarray  # target slots whose cell is ``cell``


def compute_aggatt(
    maps: MapSource,
    *,
    scores: np.ndarray,
    numerators: np.ndarray,
    cells: np.ndarray,
    cell: int,
    image_size: int,
    max_size: int = MAX_SIZE,
    device: torch.device | str = "cpu",
    rows: int | None = None,
    progress: Progress | None = None,
    label: str = "aggatt",
) -> AggAtt:
    """AggAtt of ``(N, T, h, w)`` maps for the targets at ``cell``, with their ``(N, T)`` scores."""
    cells = np.asarray(cells, dtype=np.int64)
    slots = np.flatnonzero(cells == cell)
    if slots.size == 0:
        raise UserError(
            f"no evaluated target at cell {cell}; evaluated cells: {sorted(set(cells.tolist()))}"
        )
    count, t = maps.shape[0], maps.shape[1]
    flat = (np.arange(count)[:, None] * t + slots[None, :]).ravel()
    order = sort_order(np.asarray(scores)[:, slots], np.asarray(numerators)[:, slots])
    bounds = bin_bounds(order.size)
    bin_of = np.empty(order.size, dtype=np.int64)
    for b in range(len(bounds) - 1):
        bin_of[order[bounds[b] : bounds[b + 1]]] = b
    nbins = len(bounds) - 1
    sums = torch.zeros((nbins, image_size, image_size), dtype=torch.float64, device=device)
    for start, positive in iter_positive(
        maps, image_size=image_size, slots=slots, device=device, rows=rows
    ):
        members = positive.reshape(-1, image_size, image_size).double()
        index = torch.from_numpy(bin_of[start * slots.size : start * slots.size + len(members)])
        sums.index_add_(0, index.to(device), members)
        if progress is not None:
            progress(label, start + len(positive), count)
    counts = np.diff(bounds)
    means = sums / torch.from_numpy(np.maximum(counts, 1)).to(sums)[:, None, None]
    size = stored_size(image_size, max_size)
    if size != image_size:
        means = F.adaptive_avg_pool2d(means[:, None], size)[:, 0]
    bins = means.cpu().numpy()
    positions = median_positions(bounds)
    median = np.where(positions >= 0, flat[order[np.maximum(positions, 0)]], -1)
    flat_scores = np.asarray(scores, dtype=np.float64)[:, slots].ravel()
    median_score = np.where(positions >= 0, flat_scores[order[np.maximum(positions, 0)]], np.nan)
    return AggAtt(
        bins=bins.astype(np.float32),
        edges=np.asarray(EDGES, dtype=np.float64),
        bounds=bounds,
        counts=counts,
        median=median.astype(np.int64),
        median_score=median_score,
        normaliser=normaliser(bins, counts),
        cell=cell,
        slots=slots,
    )
