"""Spearman rank correlation between the per-attribution scores of keys (supplement C).

Two keys are comparable only when they score the same attributions: the same grid file (by
content hash), the same grid images in the same order, and the same target cells and heads.
The coefficient is the Pearson correlation of average ranks (ties share their mean rank), which
is what ``scipy.stats.spearmanr`` computes. A constant score vector has no ranking: its
coefficients are NaN (as in scipy), stored as such, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from attrcli.errors import UserError


@dataclass(frozen=True)
class ScoredAttributions:
    """What identifies the attributions a score vector covers."""

    label: str
    grids_hash: str
    grid_index: np.ndarray
    cells: np.ndarray
    heads: np.ndarray


def check_comparable(items: list[ScoredAttributions], verb: str = "correlate") -> None:
    """Raise :class:`UserError` naming the first difference between ``items[0]`` and another.

    ``verb`` names what the caller does with the keys (``correlate``, ``compare``).
    """
    if not items:
        return
    first = items[0]
    for other in items[1:]:
        problem = None
        if other.grids_hash != first.grids_hash:
            problem = "were computed on different grid files"
        elif not np.array_equal(other.grid_index, first.grid_index):
            problem = (
                f"cover different grid images ({len(first.grid_index)} vs {len(other.grid_index)}"
                " rows, or a different order)"
            )
        elif not np.array_equal(other.cells, first.cells):
            problem = f"target different cells ({first.cells.tolist()} vs {other.cells.tolist()})"
        elif not np.array_equal(other.heads, first.heads):
            problem = f"evaluate different heads ({first.heads.tolist()} vs {other.heads.tolist()})"
        if problem:
            raise UserError(
                f"cannot {verb} {first.label} with {other.label}: they {problem}; "
                f"{verb} keys that score the same attributions"
            )


def _centred_ranks(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import rankdata  # here: scipy is slow to import, and listings need none

    ranks = rankdata(vectors, axis=-1)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    return ranks, np.sqrt((ranks * ranks).sum(axis=-1))


def spearman_batched(rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Spearman coefficients between the vectors of ``rows`` ``(..., R, M)`` and ``columns``.

    ``columns`` is ``(..., C, M)`` with the same leading shape, or None for ``rows`` itself (then
    the diagonal is 1, NaN for a constant vector). Returns ``(..., R, C)``; NaN where a vector is
    constant or ``M < 2``. The leading axes are independent problems (bootstrap resamples).
    """
    rows = np.asarray(rows, dtype=np.float64)
    same = columns is None
    columns = rows if same else np.asarray(columns, dtype=np.float64)
    if rows.shape[-1] != columns.shape[-1]:
        raise UserError(f"score vectors differ in length: {rows.shape[-1]} vs {columns.shape[-1]}")
    shape = (*rows.shape[:-1], columns.shape[-2])
    if rows.shape[-1] < 2:
        return np.full(shape, np.nan)
    r, rn = _centred_ranks(rows)
    c, cn = (r, rn) if same else _centred_ranks(columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (r @ np.swapaxes(c, -1, -2)) / (rn[..., :, None] * cn[..., None, :])
    out[~np.isfinite(out)] = np.nan
    out = np.clip(out, -1.0, 1.0)
    if same:
        diagonal = np.einsum("...ii->...i", out)
        diagonal[...] = np.where(rn > 0, 1.0, np.nan)
    return out


def spearman(rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Spearman coefficients between each row vector of ``rows`` and of ``columns``.

    ``rows`` is ``(R, M)``; ``columns`` defaults to ``rows`` (a symmetric matrix with ones on the
    diagonal of non-constant vectors). Returns float64 ``(R, C)``; NaN where a vector is constant.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if columns is not None:
        columns = np.atleast_2d(np.asarray(columns, dtype=np.float64))
    return spearman_batched(rows, columns)


def spearman_weighted(
    vectors: np.ndarray, weights: np.ndarray, split: int | None = None
) -> np.ndarray:
    """Spearman coefficients of the vectors ``(K, M)`` with each element repeated ``weights`` times.

    ``weights`` is ``(B, M)`` (non-negative integers: how often a bootstrap resample draws each
    element); the result ``(B, K, K)``, or ``(B, split, K - split)`` between the first ``split``
    vectors and the others, equals :func:`spearman_batched` on the expanded vectors (average
    ranks of ties) without expanding them: each resample's ranks come from cumulative weights
    over the vectors' fixed sort order, in O(M) instead of a sort.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    k, m = vectors.shape
    total = weights.sum(axis=-1)  # elements per resample
    ranks = np.empty((len(weights), k, m))
    for i, vector in enumerate(vectors):
        order = np.argsort(vector, kind="stable")
        ordered = vector[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        group = np.empty(m, dtype=np.intp)
        group[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
        counts = np.add.reduceat(weights[:, order], starts, axis=1)  # (B, groups)
        below = np.cumsum(counts, axis=1) - counts
        ranks[:, i] = (below + (counts + 1) / 2)[:, group]
    ranks -= ((total + 1) / 2)[:, None, None]
    weighted = ranks * weights[:, None, :]
    # Many small products: one BLAS thread each is fastest, and threads oversubscribe a busy host.
    with threadpool_limits(1, user_api="blas"):
        if split is None:
            cov = np.stack([w @ r.T for w, r in zip(weighted, ranks)])
        else:
            cov = np.stack([w[:split] @ r[split:].T for w, r in zip(weighted, ranks)])
    if split is None:
        norms = np.sqrt(np.einsum("bii->bi", cov))
        left, right = norms, norms
    else:
        norms = np.sqrt(np.einsum("bkm,bkm->bk", weighted, ranks))
        left, right = norms[:, :split], norms[:, split:]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = cov / (left[:, :, None] * right[:, None, :])
    out[~np.isfinite(out)] = np.nan
    out = np.clip(out, -1.0, 1.0)
    if split is None:
        np.einsum("bii->bi", out)[...] = np.where(left > 0, 1.0, np.nan)
    return out
