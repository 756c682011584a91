"""Localization score (supplement H.3): exact values on synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrcli.errors import UserError
from attrcli.metrics.localization import localization_scores, upsample_positive


def scores_of(maps, *, cells=None, n=2, image_size=64, **kw):
    maps = np.asarray(maps, dtype=np.float32)
    cells = list(range(maps.shape[1])) if cells is None else cells
    return localization_scores(maps, cells=np.array(cells), n=n, image_size=image_size, **kw)


def test_all_positive_mass_in_target_cell_scores_exactly_one():
    rng = np.random.default_rng(0)
    maps = -rng.random((3, 4, 64, 64)).astype(np.float32)  # negatives everywhere else
    for t in range(4):
        r, c = divmod(t, 2)
        maps[:, t, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32] = rng.random((3, 32, 32)) + 0.1
    scores, numerators = scores_of(maps)
    assert (scores == 1.0).all()
    expected = [
        maps[:, t, 32 * (t // 2) :, 32 * (t % 2) :][:, :32, :32].astype(np.float64).sum((1, 2))
        for t in range(4)
    ]
    np.testing.assert_allclose(numerators, np.stack(expected, 1), rtol=1e-6)


def test_mass_away_from_cell_borders_at_layer_resolution_scores_one():
    maps = np.zeros((1, 1, 8, 8))
    maps[0, 0, 1, 1] = 3.0  # upsampling spreads it by one layer pixel: still inside cell 0
    scores, _ = scores_of(maps, cells=[0])
    assert scores[0, 0] == 1.0


@pytest.mark.parametrize("n,value", [(2, 1.0), (3, 1.0), (2, 2.5), (4, 0.5)])
def test_uniform_map_scores_one_over_n_squared(n, value):
    maps = np.full((2, n * n, 7, 7), value)
    scores, numerators = scores_of(maps, n=n, image_size=32 * n)
    assert (scores == 1.0 / n**2).all()
    assert (numerators == value * 32 * 32).all()


def test_uniform_inexact_value_is_within_rounding_of_one_over_n_squared():
    scores, _ = scores_of(np.full((1, 4, 7, 7), 0.3))
    np.testing.assert_allclose(scores, 0.25, rtol=1e-6)


def test_all_negative_and_zero_maps_score_zero_without_nan():
    maps = np.stack([-np.ones((4, 5, 5)), np.zeros((4, 5, 5))])
    scores, numerators = scores_of(maps)
    assert not np.isnan(scores).any()
    assert (scores == 0).all() and (numerators == 0).all()


def test_upsampling_happens_before_negatives_are_dropped():
    # Columns +1 | -1: upsampled to 8 px the values along a row are 1, 1, .75, .25, -.25, ...
    # Dropping negatives afterwards keeps 3 per left-half row: score of top-left = 12 / 24.
    # Dropping them first would give rows of 1, 1, .875, .625, .375, .125: score 14 / 32.
    maps = np.array([[[[1.0, -1.0], [1.0, -1.0]]]])
    scores, numerators = scores_of(maps, cells=[0], image_size=8)
    assert scores[0, 0] == 0.5
    assert numerators[0, 0] == 12.0
    clamped_first = np.clip(maps, 0, None)
    assert scores_of(clamped_first, cells=[0], image_size=8)[0][0, 0] == 14 / 32


def test_upsample_positive_matches_bilinear_pixel_centres():
    up = upsample_positive(torch.tensor([[[[0.0, 4.0]]]]), 4)  # 1x2 -> 4x4
    np.testing.assert_allclose(up[0, 0, 0].numpy(), [0.0, 1.0, 3.0, 4.0])
    assert (upsample_positive(torch.tensor([[[[-1.0]]]]), 3) == 0).all()


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((9, 4, 7, 7))
    whole = scores_of(maps)
    chunked = scores_of(maps, rows=2)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    assert ((whole[0] >= 0) & (whole[0] <= 1)).all()


def test_scores_of_all_cells_sum_to_one_when_grid_divides_evenly():
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((5, 1, 6, 6)).repeat(9, axis=1)  # same map, every cell a target
    scores, _ = scores_of(maps, n=3, image_size=48)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-12)


def test_progress_reports_every_chunk():
    calls = []
    scores_of(
        np.ones((5, 4, 3, 3)), rows=2, progress=lambda d, done, total: calls.append((done, total))
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_non_finite_maps_and_bad_cells_are_user_errors():
    maps = np.ones((2, 4, 3, 3))
    maps[1, 2, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        scores_of(maps)
    with pytest.raises(UserError, match="do not fit"):
        scores_of(np.ones((1, 2, 3, 3)), cells=[0, 4])
