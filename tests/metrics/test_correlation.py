"""Spearman correlation (supplement C) against scipy, and the comparability check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from attrcli.errors import UserError
from attrcli.metrics.correlation import ScoredAttributions, check_comparable, spearman


def test_matrix_equals_scipy_spearmanr_with_ties():
    rng = np.random.default_rng(0)
    vectors = rng.random((5, 400))
    vectors[1] = np.round(vectors[1], 1)  # many ties
    vectors[2] = 1.0 - vectors[0] + 0.05 * rng.random(400)
    vectors[3, :300] = 1.0  # a block of perfect scores, as in DiFull
    ours = spearman(vectors)
    theirs = spearmanr(vectors.T).statistic
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert ours[0, 2] < -0.9


def test_cross_matrix_equals_the_block_of_the_full_one():
    rng = np.random.default_rng(1)
    vectors = rng.random((4, 100))
    cross = spearman(vectors[:1], vectors[1:])
    np.testing.assert_allclose(cross, spearman(vectors)[:1, 1:], rtol=1e-12)
    for j in range(3):
        assert cross[0, j] == pytest.approx(
            spearmanr(vectors[0], vectors[j + 1]).statistic, abs=1e-12
        )


def test_constant_vector_gives_nan_never_an_error():
    vectors = np.array([[1.0, 1.0, 1.0, 1.0], [0.1, 0.4, 0.2, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = spearman(vectors)
    assert np.isnan(out[0]).all() and np.isnan(out[:, 0]).all()
    assert out[1, 1] == 1.0
    assert np.isnan(spearman(np.ones((2, 1)))).all()


def identity(label, **changes):
    base = dict(
        label=label,
        grids_hash="abc",
        grid_index=np.arange(4),
        cells=np.array([0, 3]),
        heads=np.array([0, 3]),
    )
    base.update(changes)
    return ScoredAttributions(**base)


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"grids_hash": "def"}, "different grid files"),
        ({"grid_index": np.arange(5)}, "different grid images"),
        ({"grid_index": np.arange(4)[::-1].copy()}, "different grid images"),
        ({"cells": np.array([0, 1])}, "different cells"),
        ({"heads": np.array([0, 0])}, "different heads"),
    ],
)
def test_mismatched_keys_name_the_difference(change, reason):
    check_comparable([identity("a"), identity("b")])
    with pytest.raises(UserError, match=f"cannot correlate a with b: they .*{reason}"):
        check_comparable([identity("a"), identity("b", **change)])
