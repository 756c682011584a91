"""Bootstrap intervals, paired tests and Holm's correction on arrays (no artifacts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm, wilcoxon

from attrcli.errors import UserError
from attrcli.metrics.correlation import spearman, spearman_batched, spearman_weighted
from attrcli.metrics.intervals import (
    BootstrapConfig,
    compare_keys,
    draws,
    holm,
    score_intervals,
    spearman_intervals,
    wilcoxon_test,
)

REPEATS = 200
FAST = dict(resamples=500, method="percentile")


def coverage_bounds(repeats: int = REPEATS, level: float = 0.95) -> tuple[float, float]:
    """Expected count of covering intervals +- 3 binomial standard deviations."""
    sd = math.sqrt(repeats * level * (1 - level))
    return repeats * level - 3 * sd, repeats * level + 3 * sd


def test_interval_covers_the_true_median_about_95_percent_of_the_time():
    truth = beta(2, 5).median()
    covered = 0
    for seed in range(REPEATS):
        scores = np.random.default_rng(seed).beta(2, 5, size=(60, 1))
        low, high = score_intervals(scores, BootstrapConfig(seed=seed, **FAST))[0]
        covered += low <= truth <= high
    lo, hi = coverage_bounds()
    assert lo <= covered <= hi, covered


def test_resampling_grid_images_keeps_coverage_when_heads_are_correlated():
    """Heads of a grid share a grid effect: resampling heads alone gives too narrow intervals.

    score = Phi(u_grid + e_head), u ~ N(0, 1), e ~ N(0, 0.5^2): the median of a score is 0.5.
    """
    grid_level = head_level = 0
    for seed in range(REPEATS):
        rng = np.random.default_rng(seed)
        scores = norm.cdf(rng.normal(0, 1, (40, 1)) + rng.normal(0, 0.5, (40, 4)))
        config = BootstrapConfig(seed=seed, **FAST)
        low, high = score_intervals(scores, config)[0]
        grid_level += low <= 0.5 <= high
        low, high = score_intervals(scores.reshape(-1, 1), config)[0]  # every head its own unit
        head_level += low <= 0.5 <= high
    lo, hi = coverage_bounds()
    assert lo <= grid_level <= hi, grid_level
    assert head_level < lo, head_level


def test_heads_of_a_grid_stay_together():
    # every grid has one perfect head (1.0) and one at 0.0: any resample of whole grids has a
    # mean of exactly 0.5 and half perfect scores; resampling heads separately would not
    scores = np.tile([[0.0, 1.0]], (30, 1))
    intervals = score_intervals(scores, BootstrapConfig())
    assert intervals[1].tolist() == [0.5, 0.5]  # mean
    assert intervals[2].tolist() == [0.5, 0.5]  # share of perfect scores
    separate = score_intervals(scores.reshape(-1, 1), BootstrapConfig())
    assert separate[1, 0] < 0.45 and separate[1, 1] > 0.55


def test_intervals_are_seeded_and_contain_the_estimate():
    scores = np.random.default_rng(3).random((50, 4))
    config = BootstrapConfig(seed=7)
    first = score_intervals(scores, config)
    np.testing.assert_array_equal(first, score_intervals(scores, config))
    assert not np.array_equal(first, score_intervals(scores, BootstrapConfig(seed=8)))
    estimates = [np.median(scores), scores.mean(), 0.0]
    for (low, high), value in zip(first, estimates):
        assert low <= value <= high
    assert first[2].tolist() == [0.0, 0.0]  # no perfect score in any resample


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_constant_scores_give_a_point_interval_not_nan(method):
    # DiFull gradients at the input: every score 1.0 (scipy calls BCa degenerate here)
    intervals = score_intervals(np.ones((20, 2)), BootstrapConfig(method=method))
    assert intervals.tolist() == [[1.0, 1.0]] * 3


def test_too_few_grid_images_have_no_interval():
    assert np.isnan(score_intervals(np.array([[0.3, 0.4]]), BootstrapConfig())).all()
    assert np.isnan(score_intervals(np.zeros((0, 2)), BootstrapConfig())).all()


def test_bca_differs_from_percentile_on_skewed_data():
    scores = np.random.default_rng(0).exponential(size=(80, 1))
    percentile = score_intervals(scores, BootstrapConfig(method="percentile"))
    bca = score_intervals(scores, BootstrapConfig(method="bca"))
    assert np.isfinite(bca).all() and not np.allclose(bca, percentile)
    assert bca[1, 0] <= scores.mean() <= bca[1, 1]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("confidence", 1.0, "between 0 and 1"),
        ("confidence", 0.0, "between 0 and 1"),
        ("resamples", 0, "at least 100"),
        ("method", "basic", "valid: percentile, bca"),
        ("seed", -1, "non-negative"),
    ],
)
def test_bad_config_is_a_user_error(field, value, message):
    with pytest.raises(UserError, match=message):
        BootstrapConfig(**{field: value})


def test_draw_counts():
    index = np.array([[0, 0, 2], [1, 2, 2]])
    assert draws(index, 3).tolist() == [[2, 0, 1], [0, 1, 2]]


def test_weighted_spearman_equals_spearman_of_the_expanded_resample():
    rng = np.random.default_rng(0)
    values = np.round(rng.random((4, 30, 2)), 1)  # many ties
    values[3] = 0.5  # a constant vector: NaN
    index = rng.integers(0, 30, (6, 30))
    weights = np.repeat(draws(index, 30), 2, axis=1)
    expanded = np.moveaxis(values[:, index], 0, 1).reshape(6, 4, -1)
    want = spearman_batched(expanded)
    got = spearman_weighted(values.reshape(4, -1), weights)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    split = spearman_weighted(values.reshape(4, -1), weights, split=1)
    np.testing.assert_allclose(split, want[:, :1, 1:], rtol=0, atol=1e-12)
    flat = values.reshape(4, -1)
    np.testing.assert_allclose(spearman_batched(flat), spearman(flat))


def test_spearman_intervals_square_and_reference_agree():
    rng = np.random.default_rng(1)
    base = rng.random((100, 2))
    keys = np.stack([base, base + 0.3 * rng.random((100, 2)), rng.random((100, 2))])
    config = BootstrapConfig(resamples=400)
    square = spearman_intervals(keys, None, config)
    point = spearman(keys.reshape(3, -1))
    assert square.shape == (3, 3, 2)
    assert (square[..., 0] <= point + 1e-12).all() and (point <= square[..., 1] + 1e-12).all()
    assert np.diagonal(square[..., 0]).tolist() == [1.0, 1.0, 1.0]
    assert square[0, 1, 0] > 0.5 and square[0, 2, 0] < 0 < square[0, 2, 1]
    row = spearman_intervals(keys[:1], keys[1:], config)
    np.testing.assert_allclose(row[0], square[0, 1:], atol=1e-12)


def test_identical_keys_differ_by_exactly_zero_with_p_one():
    scores = np.random.default_rng(0).random((40, 4))
    [pair] = compare_keys(np.stack([scores, scores.copy()]), BootstrapConfig())
    assert (pair.delta_median, pair.delta_mean) == (0.0, 0.0)
    assert pair.delta_median_ci == (0.0, 0.0) and pair.delta_mean_ci == (0.0, 0.0)
    assert (pair.statistic, pair.p_value, pair.p_adjusted) == (0.0, 1.0, 1.0)
    assert (pair.higher, pair.lower) == (0.0, 0.0)
    assert wilcoxon_test(np.zeros(7)) == (0.0, 1.0)


def test_paired_test_uses_per_grid_image_mean_differences():
    rng = np.random.default_rng(2)
    a = rng.random((30, 4))
    b = a - 0.05 + 0.1 * rng.random((30, 4))
    [pair] = compare_keys(np.stack([a, b]), BootstrapConfig())
    expected = wilcoxon(a.mean(axis=1) - b.mean(axis=1))
    assert pair.statistic == expected.statistic and pair.p_value == pytest.approx(expected.pvalue)
    assert pair.delta_median == pytest.approx(np.median(a) - np.median(b))
    assert pair.delta_mean == pytest.approx((a - b).mean())
    assert pair.higher == pytest.approx(((a - b) > 0).mean())
    low, high = pair.delta_mean_ci
    assert low <= pair.delta_mean <= high


def test_matrix_form_corrects_p_values_with_holm():
    rng = np.random.default_rng(4)
    base = rng.random((50, 2))
    keys = np.stack([base, base + 0.2, base + 0.01 * rng.standard_normal((50, 2)), base - 0.2])
    pairs = compare_keys(keys, BootstrapConfig(resamples=300))
    assert [(p.first, p.second) for p in pairs] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    np.testing.assert_allclose([p.p_adjusted for p in pairs], holm([p.p_value for p in pairs]))
    shifted = pairs[0]
    assert shifted.delta_median == pytest.approx(-0.2) and shifted.delta_median_ci[1] < 0
    assert shifted.p_adjusted < 0.001 and shifted.lower == 1.0


def test_holm_step_down():
    adjusted = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    np.testing.assert_allclose(holm([0.02, 0.9]), [0.04, 0.9])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # monotone, capped at 1
