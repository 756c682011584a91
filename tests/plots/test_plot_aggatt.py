"""AggAtt figure (supplement Fig. 12): rows = method/layer, columns = bins, target cell outlined."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from attrcli.errors import UserError
from attrcli.plots import build_aggatt, plot_aggatt
from attrcli.plots.common import BIN_LABELS
from attrcli.store import read_artifact


@pytest.fixture
def study(workdir, helpers, fakes):
    return helpers.aggatt_study(fakes)


def test_rows_are_methods_and_layers_columns_are_bins(study):
    fig = build_aggatt(aggatt_paths=list(study["aggatt"].values()))
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 4 * 6
    assert [ax.get_title() for ax in maps[:6]] == list(BIN_LABELS)
    assert BIN_LABELS[0] == "0–2 %" and BIN_LABELS[-1] == "98–100 %"
    labels = [ax.get_ylabel() for ax in maps[::6]]
    assert labels == ["grad\ninput", "grad\nfinal", "gradcam\ninput", "gradcam\nfinal"]
    assert "gridpg · digits-vgg11" in fig.get_suptitle()


def test_each_bin_is_divided_by_the_normaliser_on_one_colour_scale(study):
    fig = build_aggatt(aggatt_paths=list(study["aggatt"].values()))
    maps = [ax for ax in fig.axes if ax.images]
    artifact = read_artifact(study["aggatt"]["final", "gradcam"])
    row = maps[3 * 6 : 4 * 6]  # gradcam/final is the last row
    for b, ax in enumerate(row):
        shown = np.asarray(ax.images[0].get_array())
        np.testing.assert_allclose(shown, artifact.data["bins"][b] / artifact.attrs["normaliser"])
    assert {ax.images[0].get_clim() for ax in maps} == {(0.0, 1.0)}
    assert len({ax.images[0].get_cmap().name for ax in maps}) == 1
    colourbar = [ax for ax in fig.axes if not ax.images]
    assert len(colourbar) == 1 and colourbar[0].get_ylim() == (0.0, 1.0)


def _outline(ax) -> Rectangle:
    (rect,) = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    return rect


def test_the_target_cell_is_outlined(study):
    fig = build_aggatt(aggatt_paths=[study["aggatt"]["input", "grad"]])
    for ax in fig.axes[:6]:
        rect = _outline(ax)
        assert rect.get_xy() == (-0.5, -0.5) and rect.get_width() == rect.get_height() == 32


def test_bottom_right_cell_for_difull_corners(workdir, helpers, fakes):
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=12)
    attribution = fakes.make_attribution(
        helpers.CACHE, helpers.bump_maps(12, targets=2, seed=3), grid_path=grid,
        setting="difull", cells=[0, 3], heads=[0, 3],
    )
    (result,) = aggatt(paths=[attribution], cell=3)
    fig = build_aggatt(aggatt_paths=[result.path])
    assert _outline(fig.axes[0]).get_xy() == (31.5, 31.5)
    assert "target cell 3" in fig.get_suptitle()


def test_png_is_drawn_and_score_paths_find_their_aggatt(study, helpers, workdir):
    from attrcli.stages.score import score

    scores = score(attribution_paths=list(study["attributions"].values()))
    out = plot_aggatt(aggatt_paths=[r.path for r in scores], out=workdir / "aggatt.png")
    helpers.assert_drawn(out)


def test_missing_aggatt_names_the_stage_to_run(workdir, helpers, fakes):
    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5")
    attribution = fakes.make_attribution(helpers.CACHE, np.ones((2, 4, 4, 4)), grid_path=grid)
    with pytest.raises(UserError, match="run attrcli aggatt first"):
        build_aggatt(aggatt_paths=[attribution])
