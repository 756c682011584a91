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
from scipy.stats import rankdata

from attrcli.errors import UserError


@dataclass(frozen=True)
class ScoredAttributions:
    """What identifies the attributions a score vector covers."""

    label: str
    grids_hash: str
    grid_index: np.ndarray
    cells: np.ndarray
    heads: np.ndarray


def check_comparable(items: list[ScoredAttributions]) -> None:
    """Raise :class:`UserError` naming the first difference between ``items[0]`` and another."""
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
                f"cannot correlate {first.label} with {other.label}: they {problem}; "
                "correlate keys that score the same attributions"
            )


def _centred_ranks(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranks = rankdata(vectors, axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    return ranks, np.sqrt((ranks * ranks).sum(axis=1))


def spearman(rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Spearman coefficients between each row vector of ``rows`` and of ``columns``.

    ``rows`` is ``(R, M)``; ``columns`` defaults to ``rows`` (a symmetric matrix with ones on the
    diagonal of non-constant vectors). Returns float64 ``(R, C)``; NaN where a vector is constant.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    same = columns is None
    columns = rows if same else np.atleast_2d(np.asarray(columns, dtype=np.float64))
    if rows.shape[1] != columns.shape[1]:
        raise UserError(f"score vectors differ in length: {rows.shape[1]} vs {columns.shape[1]}")
    if rows.shape[1] < 2:
        return np.full((len(rows), len(columns)), np.nan)
    r, rn = _centred_ranks(rows)
    c, cn = (r, rn) if same else _centred_ranks(columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (r @ c.T) / np.outer(rn, cn)
    out[~np.isfinite(out)] = np.nan
    out = np.clip(out, -1.0, 1.0)
    if same:
        diagonal = np.where(rn > 0, 1.0, np.nan)
        np.fill_diagonal(out, diagonal)
    return out
