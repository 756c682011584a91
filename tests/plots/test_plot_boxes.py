"""Box plots of localization scores (supplement Fig. 9)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.patches import PathPatch

from attrcli.errors import UserError
from attrcli.plots import build_boxes, plot_boxes
from attrcli.plots.common import method_colours
from attrcli.store import read_artifact


@pytest.fixture
def scores(workdir, helpers):
    """2 models x 2 settings x 2 layers x 3 methods; DiFull grad is perfect everywhere."""
    rng = np.random.default_rng(0)
    paths = {}
    for model in ("digits-vgg11", "digits-resnet18"):
        for setting, cells in (("gridpg", [0, 1, 2, 3]), ("difull", [0, 3])):
            for layer in ("input", "final"):
                for method in ("gradcam", "grad", "ixg"):
                    values = rng.random((10, len(cells)))
                    if setting == "difull" and method == "grad":
                        values = np.ones_like(values)
                    paths[model, setting, layer, method] = helpers.write_scores(
                        helpers.CACHE, values, model=model, setting=setting, layer=layer,
                        method=method, cells=cells,
                    )
    return paths


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def _hlines(ax):
    return sorted(
        line.get_ydata()[0] for line in ax.get_lines()
        if line.get_linestyle() == ":" and line.get_ydata()[0] == line.get_ydata()[1]
        and tuple(line.get_xdata()) == (0, 1)
    )


def test_one_panel_per_model_and_setting_with_layer_groups(scores, helpers):
    fig = build_boxes(score_paths=list(scores.values()))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["gridpg · digits-vgg11", "difull · digits-vgg11",
                      "gridpg · digits-resnet18", "difull · digits-resnet18"]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "final"]
        assert ax.get_ylim()[1] == 1.05 and -0.05 < ax.get_ylim()[0] < 0
        assert ax.get_yticks()[0] == 0.0 and ax.get_yticks()[-1] == 1.0
        assert _hlines(ax) == [0.25, 1.0]
    assert fig.axes[0].get_ylabel() == "localization score"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["grad", "ixg", "gradcam"]  # the paper's order, not the input order
    assert "uniform attribution (1/n² = 0.25)" in legend
    assert "perfect localization (1.0)" in legend and "all scores equal" in legend
    assert helpers.texts(fig).count("*") == 4  # DiFull grad, two layers, two models


def test_boxes_sit_at_their_median_in_the_method_colour(scores):
    fig = build_boxes(score_paths=list(scores.values()))
    ax = _panel(fig, "gridpg · digits-vgg11")
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 6  # 2 layers x 3 methods
    colours = method_colours(["grad", "ixg", "gradcam"])
    # Within the input group the boxes run grad, ixg, gradcam from left to right.
    left_to_right = sorted(boxes, key=lambda p: p.get_path().vertices[:, 0].min())[:3]
    assert [tuple(p.get_facecolor()[:3]) for p in left_to_right] == [
        tuple(colours[m][:3]) for m in ("grad", "ixg", "gradcam")
    ]
    expected = {
        float(np.median(read_artifact(scores["digits-vgg11", "gridpg", layer, m]).data["scores"]))
        for layer in ("input", "final") for m in ("grad", "ixg", "gradcam")
    }
    medians = {
        float(line.get_ydata()[0]) for line in ax.get_lines()
        if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]
        and line.get_linestyle() == "-" and np.ptp(line.get_xdata()) > 0
        and line.get_color() == "0.1"
    }
    assert expected == medians


def test_a_collapsed_box_is_a_star_at_its_value(scores, helpers):
    fig = build_boxes(score_paths=list(scores.values()))
    ax = _panel(fig, "difull · digits-vgg11")
    stars = [t for t in ax.texts if t.get_text() == "*"]
    assert len(stars) == 2
    assert [s.get_position()[1] for s in stars] == [1.0, 1.0]
    # grad is the first of three methods in its group: left of the group centre.
    first = -0.4 + 0.8 / 6
    assert sorted(s.get_position()[0] for s in stars) == pytest.approx([first, 1 + first])
    grad = tuple(method_colours(["grad"])["grad"][:3])
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 4 and all(tuple(p.get_facecolor()[:3]) != grad for p in boxes)


def test_chance_line_follows_the_grid_size(workdir, helpers):
    path = helpers.write_scores(helpers.CACHE, np.random.default_rng(1).random((6, 9)), n=3,
                                cells=list(range(9)))
    fig = build_boxes(score_paths=[path])
    assert _hlines(fig.axes[0]) == [pytest.approx(1 / 9), 1.0]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "uniform attribution (1/n² = 0.111)" in legend
    assert "all scores equal" not in legend  # no box collapsed here


def test_the_png_is_written_and_drawn(scores, helpers, workdir):
    out = plot_boxes(score_paths=list(scores.values()), out=workdir / "fig" / "boxes.png")
    assert out == workdir / "fig" / "boxes.png"
    helpers.assert_drawn(out)


def _error_bars(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar in ``ax``."""
    bars = []
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            for segment in collection.get_segments():
                (x0, y0), (x1, y1) = segment
                if x0 == x1:
                    bars.append((float(x0), float(min(y0, y1)), float(max(y0, y1))))
    return bars


def test_the_median_interval_is_an_error_bar_over_the_median(workdir, helpers):
    rng = np.random.default_rng(5)
    values = rng.random((40, 4))
    median = float(np.median(values))
    stored = np.array([[median - 0.04, median + 0.03], [0.4, 0.6], [0.0, 0.0]])
    with_ci = helpers.write_scores(helpers.CACHE, values, method="grad", intervals=stored,
                                   confidence=0.9)
    without = helpers.write_scores(helpers.CACHE, rng.random((40, 4)), method="ixg")
    fig = build_boxes(score_paths=[with_ci, without])
    [(x, low, high)] = _error_bars(fig.axes[0])
    assert (low, high) == pytest.approx((median - 0.04, median + 0.03))
    assert x == pytest.approx(-0.4 + 0.8 / 4)  # the first of two methods in the input group
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "90 % CI of the median (grid images resampled)" in legend


def test_no_error_bar_without_stored_intervals(scores):
    fig = build_boxes(score_paths=list(scores.values()))
    assert all(_error_bars(ax) == [] for ax in fig.axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any("CI of the median" in text for text in legend)


def test_no_scores_is_a_user_error(workdir):
    with pytest.raises(UserError, match="no score artifacts given"):
        build_boxes(score_paths=[])
