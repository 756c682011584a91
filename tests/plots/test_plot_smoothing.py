"""Smoothing sweep (supplement Tabs. 1-2, Fig. 26)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from attrcli.errors import UserError
from attrcli.plots import build_smoothing, plot_smoothing
from attrcli.plots.common import method_colour
from attrcli.plots.smoothing import DODGE, kernel_size
from attrcli.store import ArtifactKey, write_artifact
from attrcli.store.artifacts import make_provenance


@pytest.fixture
def sweep(workdir, helpers):
    """Grad-CAM at the final layer, IntGrad, S-IntGrad at K=9 and 33, two SmoothGrad configs."""
    rng = np.random.default_rng(0)
    reference = rng.random((30, 4))
    noise = rng.random((30, 4))
    values = {
        ("final", "gradcam"): reference,
        ("input", "intgrad"): noise,
        ("input", "s-intgrad:k=9"): 0.5 * noise + 0.5 * reference,
        ("input", "s-intgrad:k=33"): reference,
        ("input", "smoothgrad-intgrad:noise=0.1"): np.full((30, 4), 0.3) + 0.01 * noise,
        ("input", "smoothgrad-intgrad:noise=0.2"): np.full((30, 4), 0.6) + 0.01 * noise,
    }
    paths = {k: helpers.write_scores(helpers.CACHE, v, layer=k[0], method=k[1])
             for k, v in values.items()}
    return values, paths


def _line(ax, colour, marker):
    return next(line for line in ax.get_lines()
                if line.get_color() == colour and line.get_marker() == marker)


def test_localization_and_correlation_against_k(sweep):
    values, paths = sweep
    fig = build_smoothing(score_paths=list(paths.values()))
    loc, rho = fig.axes
    colour = method_colour("intgrad")
    assert loc.get_xscale() == "log" and rho.get_xscale() == "log"
    assert [t.get_text() for t in loc.get_xticklabels()] == ["original", "9", "33"]
    smoothed = _line(loc, colour, "o")
    assert list(smoothed.get_xdata()) == [9, 33]
    np.testing.assert_allclose(
        smoothed.get_ydata(),
        [np.median(values["input", f"s-intgrad:k={k}"]) for k in (9, 33)],
    )
    original = _line(loc, colour, "s")
    assert list(original.get_xdata()) == [1]
    assert original.get_ydata()[0] == pytest.approx(np.median(values["input", "intgrad"]))
    ref = values["final", "gradcam"].ravel()
    expected = [spearmanr(values["input", m].ravel(), ref)[0]
                for m in ("s-intgrad:k=9", "s-intgrad:k=33")]
    np.testing.assert_allclose(_line(rho, colour, "o").get_ydata(), expected)
    assert expected[1] == pytest.approx(1.0)
    assert _line(rho, colour, "s").get_ydata()[0] == pytest.approx(
        spearmanr(values["input", "intgrad"].ravel(), ref)[0])
    assert "1.00" in [t.get_text() for t in rho.texts]
    assert "correlation with final/gradcam" in rho.get_title()
    assert loc.get_ylabel() == "localization score"


def test_each_correlation_has_its_bootstrap_interval_as_an_error_bar(sweep):
    from matplotlib.collections import LineCollection

    from attrcli.metrics.intervals import BootstrapConfig, spearman_intervals

    values, paths = sweep
    config = BootstrapConfig(resamples=300, seed=2)
    fig = build_smoothing(score_paths=list(paths.values()), bootstrap=config)
    rho = fig.axes[1]
    bars = sorted(
        (float(a[0]), float(min(a[1], b[1])), float(max(a[1], b[1])))
        for c in rho.collections if isinstance(c, LineCollection)
        for a, b in c.get_segments() if a[0] == b[0]
    )
    specs = ("intgrad", "s-intgrad:k=9", "s-intgrad:k=33")
    expected = spearman_intervals(values["final", "gradcam"][None],
                                  np.stack([values["input", m] for m in specs]), config)[0]
    # the only family's bars sit just left of their points (dodged from a second family's)
    assert [b[0] for b in bars] == pytest.approx([k * 2**-DODGE for k in (1, 9, 33)])
    np.testing.assert_allclose([b[1:] for b in bars], expected, atol=1e-12)
    assert bars[2][1:] == pytest.approx((1.0, 1.0))  # identical to the reference: always 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "95 % CI of the correlation (grid images resampled)" in legend


def test_smoothgrad_is_the_best_configuration_as_a_dashed_line(sweep):
    values, paths = sweep
    fig = build_smoothing(score_paths=list(paths.values()))
    loc = fig.axes[0]
    dashed = [line for line in loc.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert dashed[0].get_ydata()[0] == pytest.approx(
        np.median(values["input", "smoothgrad-intgrad:noise=0.2"]))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "smoothgrad-intgrad:noise=0.2" in legend and "s-intgrad (median)" in legend


def test_without_the_reference_the_correlation_panel_is_left_out(sweep, helpers, workdir):
    _, paths = sweep
    fig = build_smoothing(score_paths=[p for k, p in paths.items() if k[1] != "gradcam"])
    assert len(fig.axes) == 1 and "localization at input" in fig.axes[0].get_title()
    assert not any("correlation" in t for t in helpers.texts(fig))
    helpers.assert_drawn(plot_smoothing(score_paths=list(paths.values()),
                                        out=workdir / "smoothing.png"))


def test_nothing_smoothed_is_a_user_error(workdir, helpers):
    path = helpers.write_scores(helpers.CACHE, np.ones((2, 4)), method="intgrad")
    with pytest.raises(UserError, match="no s-intgrad or s-ixg scores at layer input"):
        build_smoothing(score_paths=[path])


def test_kernel_size_from_the_spec_or_the_recorded_config(workdir, helpers):
    from attrcli.plots.common import load_scores

    spec = helpers.write_scores(helpers.CACHE, np.ones((2, 4)), method="s-ixg:k=65")
    bare = helpers.write_scores(helpers.CACHE, np.ones((2, 4)), method="s-ixg")
    assert kernel_size(load_scores([spec])[0]) == 65
    with pytest.raises(UserError, match="cannot tell the kernel size K"):
        kernel_size(load_scores([bare])[0])
    key = ArtifactKey("attributions", "toy", "gridpg", "digits-vgg11", "input", "s-ixg")
    write_artifact(key.path(Path("cache")), data={"maps": np.zeros((2, 4, 2, 2))},
                   provenance=make_provenance(
                       config={"identity": {"method_config": {"k": 17, "sigma": 4.25}}},
                       inputs={}))
    assert kernel_size(load_scores([bare])[0]) == 17
