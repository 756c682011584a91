"""AggAtt figure (supplement Fig. 12): rows = method/layer, columns = bins, target cell outlined."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgb

from attrcli.errors import UserError
from attrcli.plots import build_aggatt, plot_aggatt
from attrcli.plots.aggatt import compose_row
from attrcli.plots.common import BIN_LABELS, MAP_CMAP, OUTLINE
from attrcli.store import read_artifact


@pytest.fixture
def study(workdir, helpers, fakes):
    return helpers.aggatt_study(fakes)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _outlines(fig) -> list:
    """The target-cell outlines (red), in row-major order of the panels."""
    (collection,) = [c for c in fig.axes[0].collections
                     if len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0][:3]) == to_rgb(OUTLINE)]
    return [path.get_extents() for path in collection.get_paths()]


def test_rows_are_methods_and_layers_columns_are_bins(study):
    fig = build_aggatt(aggatt_paths=list(study["aggatt"].values()))
    maps, bar = fig.axes
    assert len(maps.images) == 4  # one image per row, not one axes per panel
    texts = _texts(maps)
    assert texts[-6:] == list(BIN_LABELS)
    assert BIN_LABELS[0] == "0–2 %" and BIN_LABELS[-1] == "98–100 %"
    assert [t for t in texts if "\n" in t] == ["grad\ninput", "grad\nfinal", "gradcam\ninput",
                                               "gradcam\nfinal"]
    assert "gridpg · digits-vgg11" in fig.get_suptitle()
    assert bar.get_ylim() == (0.0, 1.0) and bar.get_ylabel() == "attribution / normaliser"
    assert fig.get_layout_engine() is None  # fixed geometry: no layout pass over many axes
    # the colour bar stands right of the panels, inside the figure (not over a panel)
    panels, scale = maps.get_position(), bar.get_position()
    assert panels.x1 < scale.x0 < scale.x1 <= 1.0


def test_each_row_image_is_its_bins_on_one_colour_scale(study):
    """The composed row's pixel block of each bin equals the bin map divided by the normaliser
    and coloured with the figures' colormap from 0 to 1."""
    fig = build_aggatt(aggatt_paths=list(study["aggatt"].values()))
    artifact = read_artifact(study["aggatt"]["final", "gradcam"])
    row = np.asarray(fig.axes[0].images[3].get_array())  # gradcam/final is the last row
    size = artifact.data["bins"].shape[-1]
    gap = (row.shape[1] - 6 * size) // 5
    assert row.shape == (size, 6 * size + 5 * gap, 4) and gap > 0
    cmap = colormaps[MAP_CMAP]
    for b in range(6):
        block = row[:, b * (size + gap) : b * (size + gap) + size]
        values = np.clip(artifact.data["bins"][b] / artifact.attrs["normaliser"], 0, 1)
        np.testing.assert_array_equal(block, cmap(values, bytes=True))
        if b < 5:  # the gap repeats the edges (the resampling filter sees no white) ...
            left, right = b * (size + gap) + size, (b + 1) * (size + gap)
            half = left + gap // 2
            assert (row[:, left:half] == row[:, left - 1 : left]).all()
            assert (row[:, half:right] == row[:, right : right + 1]).all()
    # ... and is covered in white: 5 gaps per row, between the bins.
    (white,) = [c for c in fig.axes[0].collections if len(c.get_facecolor()) and tuple(c.get_facecolor()[0]) == (1, 1, 1, 1)]
    spans = sorted((p.get_extents().x0, p.get_extents().x1) for p in white.get_paths())[::4]
    assert len(white.get_paths()) == 5 * 4
    assert spans == [(b * (size + gap) + size, (b + 1) * (size + gap)) for b in range(5)]
    np.testing.assert_array_equal(compose_row(np.zeros((6, 2, 2)), 1)[:, :2], cmap(np.zeros((2, 2)), bytes=True))


def test_the_target_cell_is_outlined(study):
    fig = build_aggatt(aggatt_paths=[study["aggatt"]["input", "grad"]])
    boxes = _outlines(fig)
    assert len(boxes) == 6
    size = fig.axes[0].images[0].get_array().shape[0]
    for box in boxes:
        assert box.width == box.height == size / 2  # a quarter of a 2 x 2 grid
    assert boxes[0].x0 == 0 and boxes[0].y0 == 0  # top-left cell of the first panel


def test_bottom_right_cell_for_difull_corners(workdir, helpers, fakes):
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=12)
    attribution = fakes.make_attribution(
        helpers.CACHE, helpers.bump_maps(12, targets=2, seed=3), grid_path=grid,
        setting="difull", cells=[0, 3], heads=[0, 3],
    )
    (result,) = aggatt(paths=[attribution], cell=3)
    fig = build_aggatt(aggatt_paths=[result.path])
    first = _outlines(fig)[0]
    assert (first.x0, first.y0, first.width) == (32, 32, 32)
    assert "target cell 3" in fig.get_suptitle()


def test_a_3x3_grid_outlines_a_ninth(workdir, helpers, fakes):
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=12, n=3)
    attribution = fakes.make_attribution(helpers.CACHE, helpers.bump_maps(12, targets=4, size=9, seed=4),
                                         grid_path=grid, n=3, cells=[0, 1, 4, 8])
    (result,) = aggatt(paths=[attribution], cell=4)
    box = _outlines(build_aggatt(aggatt_paths=[result.path]))[0]
    assert (box.x0, box.y0, box.width, box.height) == (32, 32, 32, 32)  # the centre of 96 pixels


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
