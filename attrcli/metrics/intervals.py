"""Confidence intervals and paired tests for localization scores (issue 16).

The unit of every resampling is the *grid image*: a bootstrap resample draws grid images with
replacement and keeps all evaluated heads of each drawn grid together, because the scores of
one grid's heads are not independent (they share the grid's images and, in GridPG, its
feature map). Intervals come from :func:`scipy.stats.bootstrap`, run on the array of grid-image
indices with a vectorised statistic that gathers the heads of the drawn grids; the generator is
seeded, so an interval is reproducible.

- :func:`score_intervals`: intervals of one key's median score, mean score and share of perfect
  scores; :func:`mean_interval`: the interval of a mean of per-attribution values (the
  pointing game's hit rate, a sanity check's similarity);
- :func:`spearman_intervals`: intervals of Spearman coefficients, the same grid images drawn for
  both keys of a pair (paired resampling of the same attributions);
- :func:`compare_keys`: paired differences between keys covering the same attributions, with
  intervals and Wilcoxon signed-rank tests (:func:`wilcoxon_test`), p-values Holm-corrected
  (:func:`holm`) over the family of comparisons.

Percentile intervals are the default: BCa's acceleration comes from a jackknife, which is not
consistent for the median (``method="bca"`` is available). An interval whose bootstrap
distribution is a single value (every resample gives the same statistic, as for a key whose
scores are all 1.0) is that value, ``[v, v]``; scipy would call it degenerate and return NaN
for BCa. NaN marks an interval that does not exist: fewer than two grid images, or a statistic
that is itself NaN (Spearman of a constant score vector).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import bootstrap, wilcoxon

from attrcli.errors import UserError
from attrcli.names import CORRECTION, INTERVAL_METHODS, PAIRED_TEST
from attrcli.metrics.correlation import spearman_weighted

#: A score counts as perfect when it is at least this (float64 division of equal sums gives 1.0
#: exactly; the tolerance only absorbs rounding in sums of many pixels).
PERFECT = 1.0 - 1e-9
METHODS = INTERVAL_METHODS
#: The statistics of :func:`score_intervals`, in the order of its rows.
SCORE_STATISTICS = ("median", "mean", "perfect")
UNIT = "grid image (all evaluated heads of a drawn grid together)"
TEST = PAIRED_TEST
#: float64 elements gathered per vectorised call (about 64 MiB), whatever the number of scores.
_BATCH_ELEMENTS = 8_000_000
_MIN_RESAMPLES = 100
#: scipy >= 1.15 names the generator ``rng``; older versions ``random_state``.
_RNG = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed; part of every cached artifact's config (freshness check)."""

    confidence: float = 0.95  # two-sided confidence level, in (0, 1)
    resamples: int = 2000  # bootstrap resamples of the grid images
    method: str = "percentile"  # "percentile" or "bca" (scipy.stats.bootstrap's methods)
    seed: int = 0  # seeds numpy's default_rng that draws the resamples

    def __post_init__(self) -> None:
        if not 0.0 < float(self.confidence) < 1.0:
            raise UserError(
                f"--confidence {self.confidence}: give a level between 0 and 1, e.g. 0.95"
            )
        if int(self.resamples) < _MIN_RESAMPLES:
            raise UserError(
                f"--resamples {self.resamples}: use at least {_MIN_RESAMPLES} (default 2000)"
            )
        if self.method not in METHODS:
            raise UserError(f"unknown interval method {self.method!r}; valid: {', '.join(METHODS)}")
        if int(self.seed) < 0:
            raise UserError(f"--seed {self.seed}: give a non-negative integer")

    @property
    def alpha(self) -> float:
        """The significance level that matches the confidence level."""
        return 1.0 - self.confidence

    def to_dict(self) -> dict:
        """The config as recorded in artifacts (with the resampling unit, for the reader)."""
        return {**asdict(self), "unit": UNIT}

    def attrs(self) -> dict:
        """The attributes every artifact with intervals carries (read back by
        :func:`attrcli.metrics.summary.summarize`)."""
        return {
            "confidence": self.confidence,
            "interval_method": self.method,
            "resamples": self.resamples,
            "bootstrap_seed": self.seed,
        }


def bootstrap_units(
    count: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    config: BootstrapConfig,
    *,
    per_unit: int = 1,
) -> np.ndarray:
    """Intervals ``(..., 2)`` of ``statistic`` when ``count`` grid images are resampled.

    ``statistic(index)`` gets integer grid-image indices of shape ``(..., count)`` (one resample
    per leading position) and returns the statistics with shape ``(k, ...)``. ``per_unit`` is
    the number of float64 elements it gathers per grid image (to bound memory per call).
    """
    point = np.asarray(statistic(np.arange(count)), dtype=np.float64)
    if count < 2:
        return np.full((*point.shape, 2), np.nan)
    batch = max(1, _BATCH_ELEMENTS // max(1, count * per_unit))
    with warnings.catch_warnings():
        # degenerate bootstrap distributions are handled below; scipy warns and returns NaN
        warnings.simplefilter("ignore")
        result = bootstrap(
            (np.arange(count),),
            lambda index, axis=-1: statistic(index),
            n_resamples=int(config.resamples),
            batch=batch,
            vectorized=True,
            confidence_level=float(config.confidence),
            method="BCa" if config.method == "bca" else "percentile",
            **{_RNG: np.random.default_rng(int(config.seed))},
        )
    low = np.asarray(result.confidence_interval.low, dtype=np.float64).reshape(point.shape)
    high = np.asarray(result.confidence_interval.high, dtype=np.float64).reshape(point.shape)
    distribution = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    distribution = distribution.reshape(*point.shape, -1)
    with np.errstate(invalid="ignore"):
        single = np.all(distribution == distribution[..., :1], axis=-1)
    low = np.where(single, distribution[..., 0], low)
    high = np.where(single, distribution[..., 0], high)
    return np.stack([low, high], axis=-1)


def _gathered(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The scores of the drawn grid images, flattened per resample: ``(..., count * T)``."""
    picked = scores[index]
    return picked.reshape(*index.shape[:-1], -1)


def _as_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise UserError(f"scores must be (grid images, targets), got shape {scores.shape}")
    return scores


def score_statistics(values: np.ndarray) -> np.ndarray:
    """Median, mean and share of perfect scores along the last axis: ``(3, ...)``."""
    return np.stack(
        [np.median(values, axis=-1), values.mean(axis=-1), (values >= PERFECT).mean(axis=-1)]
    )


def score_intervals(scores: np.ndarray, config: BootstrapConfig) -> np.ndarray:
    """Intervals ``(3, 2)`` of the median, the mean and the share of perfect scores.

    ``scores`` is ``(N, T)``: N grid images, T evaluated heads; grid images are resampled.
    """
    scores = _as_scores(scores)
    if scores.size == 0:
        return np.full((len(SCORE_STATISTICS), 2), np.nan)
    return bootstrap_units(
        len(scores),
        lambda index: score_statistics(_gathered(scores, index)),
        config,
        per_unit=scores.shape[1],
    )


def mean_interval(values: np.ndarray, config: BootstrapConfig) -> np.ndarray:
    """Interval ``(2,)`` of the mean of ``(N, T)`` per-attribution values (pointing-game hits as
    0/1: the hit rate), grid images resampled; NaN values are left out of each mean."""
    values = _as_scores(values)
    if values.size == 0:
        return np.full(2, np.nan)
    has_nan = bool(np.isnan(values).any())

    def statistic(index: np.ndarray) -> np.ndarray:
        picked = _gathered(values, index)
        if has_nan:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a resample of NaN only: NaN
                return np.nanmean(picked, axis=-1)[None]
        return picked.mean(axis=-1)[None]

    return bootstrap_units(len(values), statistic, config, per_unit=values.shape[1])[0]


def draws(index: np.ndarray, count: int) -> np.ndarray:
    """How often each of ``count`` grid images is drawn: ``(..., count)`` from indices."""
    lead = index.shape[:-1]
    flat = index.reshape(-1, index.shape[-1])
    offsets = (np.arange(len(flat)) * count)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * count)
    return counts.reshape(*lead, count)


def spearman_intervals(
    rows: np.ndarray, columns: np.ndarray | None, config: BootstrapConfig
) -> np.ndarray:
    """Intervals ``(R, C, 2)`` of the Spearman coefficients between score vectors.

    ``rows`` is ``(R, N, T)`` and ``columns`` ``(C, N, T)`` (default: ``rows``): every key scores
    the same N grid images and T heads, and one resample draws the same grid images for all
    (paired resampling). Each resample's coefficients come from
    :func:`~attrcli.metrics.correlation.spearman_weighted` (ranks from draw counts, no sort).
    """
    rows = np.asarray(rows, dtype=np.float64)
    same = columns is None
    columns = rows if same else np.asarray(columns, dtype=np.float64)
    if rows.ndim != 3 or columns.ndim != 3 or columns.shape[1:] != rows.shape[1:]:
        raise UserError(f"score arrays do not match: {rows.shape} vs {columns.shape}")
    count, targets = rows.shape[1:]
    vectors = (rows if same else np.concatenate([rows, columns])).reshape(-1, count * targets)

    def statistic(index: np.ndarray) -> np.ndarray:
        lead = index.shape[:-1]
        weights = np.repeat(draws(index, count).reshape(-1, count), targets, axis=1)
        matrix = spearman_weighted(vectors, weights, None if same else len(rows))
        matrix = matrix.reshape(*lead, *matrix.shape[1:])
        return np.moveaxis(matrix, (-2, -1), (0, 1))  # (R, C, ...)

    return bootstrap_units(count, statistic, config, per_unit=3 * len(vectors) * targets)


def wilcoxon_test(differences: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank statistic and two-sided p-value of paired ``differences``.

    Zero differences are dropped (scipy's ``zero_method="wilcox"``). When every difference is
    zero, there is no evidence of a difference: statistic 0 and p = 1 exactly (scipy refuses
    this case or returns NaN).
    """
    differences = np.asarray(differences, dtype=np.float64).ravel()
    if not np.any(differences != 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "exact p-value unavailable with ties"
        result = wilcoxon(differences, zero_method="wilcox")
    return float(result.statistic), float(result.pvalue)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` (family-wise error); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p.ravel()))
    if finite.size == 0:
        return out
    values = p.ravel()[finite]
    order = np.argsort(values, kind="stable")
    m = len(values)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * values[order])
    flat = out.ravel()
    flat[finite[order]] = np.minimum(adjusted, 1.0)
    return flat.reshape(p.shape)


@dataclass(frozen=True)
class PairedDifference:
    """Key ``first`` against key ``second`` over the same attributions."""

    first: int  # index of the first key
    second: int
    delta_median: float  # median(first) - median(second)
    delta_median_ci: tuple[float, float]
    delta_mean: float  # mean(first - second)
    delta_mean_ci: tuple[float, float]
    statistic: float  # Wilcoxon signed-rank statistic
    p_value: float
    p_adjusted: float  # Holm-corrected over the family of comparisons
    higher: float  # share of attributions where first > second
    lower: float  # share of attributions where first < second


def compare_keys(scores: np.ndarray, config: BootstrapConfig) -> list[PairedDifference]:
    """Every pair ``i < j`` of the keys in ``scores`` ``(K, N, T)``, tested and with intervals.

    One bootstrap draws the same grid images for all keys and yields the differences of
    medians and of means of every pair; the test of each pair is :func:`wilcoxon_test` on the N
    per-grid-image mean differences (grid images are the independent units); p-values are
    Holm-corrected over the K(K-1)/2 pairs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise UserError(f"scores must be (keys, grid images, targets), got shape {scores.shape}")
    k = len(scores)
    first, second = np.triu_indices(k, 1)
    if len(first) == 0:
        return []

    def statistic(index: np.ndarray) -> np.ndarray:
        picked = np.moveaxis(scores[:, index], 0, -3)  # (..., K, N, T)
        values = picked.reshape(*picked.shape[:-2], -1)
        medians, means = np.median(values, axis=-1), values.mean(axis=-1)
        deltas = [
            medians[..., first] - medians[..., second],
            means[..., first] - means[..., second],
        ]
        return np.moveaxis(np.concatenate(deltas, axis=-1), -1, 0)  # (2P, ...)

    flat = scores.reshape(k, -1)
    medians, means = np.median(flat, axis=1), flat.mean(axis=1)
    intervals = bootstrap_units(
        scores.shape[1], statistic, config, per_unit=2 * k * scores.shape[2]
    )
    per_grid = scores.mean(axis=2)
    tests = [wilcoxon_test(per_grid[i] - per_grid[j]) for i, j in zip(first, second)]
    adjusted = holm(np.array([p for _, p in tests]))
    pairs = len(first)
    out = []
    for p, (i, j) in enumerate(zip(first.tolist(), second.tolist())):
        diff = flat[i] - flat[j]
        out.append(
            PairedDifference(
                first=i,
                second=j,
                delta_median=float(medians[i] - medians[j]),
                delta_median_ci=tuple(float(v) for v in intervals[p]),
                delta_mean=float(means[i] - means[j]),
                delta_mean_ci=tuple(float(v) for v in intervals[pairs + p]),
                statistic=tests[p][0],
                p_value=tests[p][1],
                p_adjusted=float(adjusted[p]),
                higher=float((diff > 0).mean()) if diff.size else float("nan"),
                lower=float((diff < 0).mean()) if diff.size else float("nan"),
            )
        )
    return out
