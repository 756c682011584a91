"""Correlation heat map (supplement Fig. 19)."""

from __future__ import annotations

import numpy as np
import pytest

from attrcli.errors import UserError
from attrcli.plots import build_correlation, plot_correlation
from attrcli.stages.correlate import correlate


@pytest.fixture
def scores(workdir, helpers):
    """Four keys with known ranks: equal, reversed, a swap, and a constant vector."""
    base = np.arange(12, dtype=np.float64).reshape(6, 2) / 12
    swapped = base.copy().ravel()
    swapped[[0, 1]] = swapped[[1, 0]]
    write = helpers.write_scores
    return {
        ("final", "gradcam"): write(helpers.CACHE, base, layer="final", method="gradcam",
                                    cells=[0, 3]),
        ("input", "grad"): write(helpers.CACHE, base[::-1, ::-1], layer="input", method="grad",
                                 cells=[0, 3]),
        ("input", "ixg"): write(helpers.CACHE, swapped.reshape(6, 2), layer="input",
                                method="ixg", cells=[0, 3]),
        ("final", "rise"): write(helpers.CACHE, np.full((6, 2), 0.5), layer="final",
                                 method="rise", cells=[0, 3]),
    }


def test_matrix_is_ordered_by_layer_then_method_and_annotated(scores, helpers):
    fig = build_correlation(paths=list(scores.values()))
    heat = fig.axes[0]
    ticks = [t.get_text() for t in heat.get_xticklabels()]
    assert ticks == ["input/grad", "input/ixg", "final/gradcam", "final/rise"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ticks
    shown = np.ma.filled(heat.images[0].get_array().astype(float), np.nan)
    swap = 1 - 6 * 2 / (12 * (144 - 1))  # one adjacent swap in 12 ranks
    expected = np.array([
        [1.0, -swap, -1.0, np.nan],
        [-swap, 1.0, swap, np.nan],
        [-1.0, swap, 1.0, np.nan],
        [np.nan, np.nan, np.nan, np.nan],
    ])
    np.testing.assert_allclose(shown, expected)
    assert heat.images[0].get_clim() == (-1.0, 1.0)
    annotations = [t.get_text() for t in heat.texts]
    assert annotations.count("1.00") == 3 and annotations.count("-1.00") == 2
    assert annotations.count("n/a") == 7
    # One line between the input and the final group, on each axis.
    breaks = [line.get_xdata()[0] for line in heat.get_lines() if line.get_xdata()[0] == 1.5]
    assert len(breaks) == 1
    assert "gridpg · digits-vgg11 · toy (12 attributions)" == heat.get_title()
    colourbar = fig.axes[1]
    assert colourbar.get_ylim() == (-1.0, 1.0)
    assert "Spearman" in colourbar.get_ylabel()


def test_a_stored_correlation_artifact_is_plotted_as_is(workdir, helpers, fakes):
    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=10)
    paths = [
        fakes.make_attribution(helpers.CACHE, helpers.bump_maps(10, strength=s, seed=s),
                               grid_path=grid, layer=layer, method=method)
        for s, (layer, method) in enumerate([("input", "grad"), ("final", "gradcam"),
                                             ("input", "intgrad")])
    ]
    result = correlate(score_paths=paths, reference="final/gradcam")
    fig = build_correlation(paths=[result.path])
    heat = fig.axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["final/gradcam"]
    assert [t.get_text() for t in heat.get_xticklabels()] == [
        "input/grad", "input/intgrad", "final/gradcam",
    ]
    order = [result.columns.index(f"gridpg/digits-vgg11/{c}")
             for c in ("input/grad", "input/intgrad", "final/gradcam")]
    np.testing.assert_allclose(heat.images[0].get_array()[0], result.matrix[0, order])
    assert heat.get_title() == "gridpg · digits-vgg11 (40 attributions)"
    helpers.assert_drawn(plot_correlation(paths=[result.path], out=workdir / "c.png"))


def test_large_matrices_are_not_annotated(workdir, helpers):
    rng = np.random.default_rng(0)
    paths = [helpers.write_scores(helpers.CACHE, rng.random((5, 4)), method=f"m{i}")
             for i in range(13)]
    heat = build_correlation(paths=paths).axes[0]
    assert heat.images[0].get_array().shape == (13, 13) and not heat.texts


def test_keys_over_different_attributions_are_refused(workdir, helpers):
    a = helpers.write_scores(helpers.CACHE, np.ones((3, 2)), method="grad", cells=[0, 3])
    b = helpers.write_scores(helpers.CACHE, np.ones((3, 2)), method="ixg", cells=[0, 1])
    with pytest.raises(UserError, match="target different cells"):
        build_correlation(paths=[a, b])
    with pytest.raises(UserError, match="no such file"):
        build_correlation(paths=[workdir / "nope.h5"])
