"""AggAtt (supplement H.4): ordering, tie-breaking, bins, medians and the shared normaliser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from attrcli.errors import UserError
from attrcli.metrics.aggatt import (
    EDGES,
    bin_bounds,
    compute_aggatt,
    median_positions,
    normaliser,
    sort_order,
    stored_size,
)
from attrcli.metrics.localization import localization_scores


def run(maps, *, cells=None, cell=0, image_size=None, **kw):
    maps = np.asarray(maps, dtype=np.float32)
    cells = np.arange(maps.shape[1]) if cells is None else np.asarray(cells)
    size = image_size or maps.shape[-1]
    scores, numerators = localization_scores(maps, cells=cells, n=2, image_size=size)
    result = compute_aggatt(
        maps, scores=scores, numerators=numerators, cells=cells, cell=cell, image_size=size, **kw
    )
    return result, scores, numerators


@pytest.mark.parametrize("count", [1, 7, 50, 123, 2000])
def test_bins_follow_percentile_edges_and_cover_every_position_once(count):
    bounds = bin_bounds(count)
    assert bounds[0] == 0 and bounds[-1] == count
    counts = np.diff(bounds)
    assert (counts >= 0).all() and counts.sum() == count
    ideal = count * np.diff(EDGES) / 100
    assert (np.abs(counts - ideal) < 1).all()
    positions = np.concatenate([np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])])
    np.testing.assert_array_equal(positions, np.arange(count))


@given(st.integers(min_value=0, max_value=10**7))
def test_bin_bounds_partition_any_count(count):
    bounds = bin_bounds(count)
    counts = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == count and (counts >= 0).all()
    assert (np.abs(counts - count * np.diff(EDGES) / 100) < 1).all()


def test_bin_counts_exact_for_known_sizes():
    assert np.diff(bin_bounds(2000)).tolist() == [40, 60, 900, 900, 60, 40]
    assert np.diff(bin_bounds(50)).tolist() == [1, 2, 22, 23, 1, 1]  # 2.5 and 47.5 round up
    assert np.diff(bin_bounds(1)).tolist() == [0, 0, 1, 0, 0, 0]


def test_sort_order_breaks_ties_by_numerator_then_index():
    scores = np.array([0.5, 1.0, 1.0, 0.5, 1.0])
    numerators = np.array([3.0, 1.0, 2.0, 3.0, 2.0])
    assert sort_order(scores, numerators).tolist() == [2, 4, 1, 0, 3]


def test_median_positions():
    assert median_positions(np.array([0, 0, 3, 7])).tolist() == [-1, 1, 4]


def test_perfect_scores_are_ordered_by_strength_in_the_target_cell():
    # DiFull-like: every map has all its mass in the top-left cell (score 1.0 for all).
    count = 50
    strength = np.random.default_rng(0).permutation(count) + 1.0
    maps = np.zeros((count, 1, 8, 8))
    maps[:, 0, :4, :4] = strength[:, None, None]
    result, scores, _ = run(maps, cells=[0])
    assert (scores == 1.0).all()
    strongest = int(np.argmax(strength))
    assert result.counts[0] == 1 and result.median[0] == strongest
    np.testing.assert_allclose(result.bins[0], maps[strongest, 0])
    assert result.median_score[0] == 1.0
    # the last bin holds the weakest map
    assert result.median[-1] == int(np.argmin(strength))


def test_every_attribution_lands_in_exactly_one_bin():
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((123, 4, 16, 16))
    result, _, _ = run(maps)
    positive = np.clip(maps[:, 0], 0, None).astype(np.float64)
    aggregated = (result.bins.astype(np.float64) * result.counts[:, None, None]).sum(0)
    np.testing.assert_allclose(aggregated, positive.sum(0), rtol=1e-5)
    assert result.counts.sum() == 123


def test_bin_maps_are_means_in_score_order():
    rng = np.random.default_rng(4)
    maps = rng.standard_normal((60, 2, 8, 8))
    result, scores, numerators = run(maps, cells=[0, 3])
    order = sort_order(scores[:, 0], numerators[:, 0])
    positive = np.clip(maps[:, 0], 0, None)
    for b, (lo, hi) in enumerate(zip(result.bounds[:-1], result.bounds[1:])):
        np.testing.assert_allclose(result.bins[b], positive[order[lo:hi]].mean(0), rtol=1e-5)
    # bins run from best to worst localization
    means = [
        scores[order[lo:hi], 0].mean() for lo, hi in zip(result.bounds[:-1], result.bounds[1:])
    ]
    assert means == sorted(means, reverse=True)


def test_other_cell_uses_its_own_target_slot_and_flattened_indices():
    rng = np.random.default_rng(5)
    maps = rng.standard_normal((10, 2, 8, 8))
    result, scores, numerators = run(maps, cells=[0, 3], cell=3)
    assert result.slots.tolist() == [1]
    order = sort_order(scores[:, 1], numerators[:, 1])
    row = order[result.bounds[2] + (result.bounds[3] - result.bounds[2] - 1) // 2]
    assert result.median[2] == row * 2 + 1  # row * T + slot
    with pytest.raises(UserError, match="evaluated cells: \\[0, 3\\]"):
        run(maps, cells=[0, 3], cell=1)


def test_empty_bins_are_zero_not_nan():
    result, _, _ = run(np.ones((1, 1, 4, 4)), cells=[0])
    assert not np.isnan(result.bins).any()
    assert result.counts.tolist() == [0, 0, 1, 0, 0, 0]
    assert (result.bins[[0, 1, 3, 4, 5]] == 0).all()
    assert result.median.tolist() == [-1, -1, 0, -1, -1, -1]


def test_normaliser_is_one_percentile_shared_by_all_bins():
    rng = np.random.default_rng(6)
    maps = rng.standard_normal((40, 1, 8, 8))
    result, _, _ = run(maps, cells=[0])
    filled = result.bins[result.counts > 0]
    assert result.normaliser == pytest.approx(np.percentile(filled, 99.5))
    assert np.isscalar(result.normaliser)
    assert normaliser(np.zeros((6, 2, 2)), np.ones(6)) == 1.0
    sparse = np.zeros((6, 20, 20))
    sparse[0, 0, 0] = 2.0
    assert normaliser(sparse, np.ones(6)) == 2.0  # percentile 0 falls back to the maximum


def test_large_grids_are_stored_area_averaged():
    assert stored_size(448) == 224 and stored_size(64) == 64 and stored_size(100, 64) == 50
    rng = np.random.default_rng(7)
    maps = rng.standard_normal((12, 1, 4, 4))
    full, _, _ = run(maps, cells=[0], image_size=16)
    small, _, _ = run(maps, cells=[0], image_size=16, max_size=8)
    pooled = F.avg_pool2d(torch.from_numpy(full.bins)[:, None], 2)[:, 0].numpy()
    np.testing.assert_allclose(small.bins, pooled, rtol=1e-5, atol=1e-7)
    assert small.bins.shape == (6, 8, 8)


def test_chunking_does_not_change_bins():
    rng = np.random.default_rng(8)
    maps = rng.standard_normal((30, 4, 8, 8))
    whole, _, _ = run(maps, image_size=16)
    chunked, _, _ = run(maps, image_size=16, rows=4)
    np.testing.assert_allclose(whole.bins, chunked.bins, rtol=1e-6)
    np.testing.assert_array_equal(whole.median, chunked.median)
