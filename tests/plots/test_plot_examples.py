"""Median example per AggAtt bin (supplement Fig. 10): the grid image beside its map."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from attrcli.errors import UserError
from attrcli.metrics import upsample_positive
from attrcli.plots import build_examples, plot_examples
from attrcli.plots.common import BIN_LABELS
from attrcli.plots.examples import example_axes
from attrcli.store import read_artifact


@pytest.fixture
def study(workdir, helpers, fakes):
    # 50 grid images: every bin of the top-left cell has a member (2 % of 50 = 1).
    return helpers.aggatt_study(fakes, layers=("final",), methods=("gradcam", "grad"), count=50)


def test_each_bin_shows_its_median_image_and_map(study):
    path = study["aggatt"]["final", "gradcam"]
    fig = build_examples(aggatt_paths=[path])
    (pairs,) = example_axes(fig)
    assert [image_ax.get_title() for image_ax, _ in pairs] == list(BIN_LABELS)
    agg = read_artifact(path)
    grid = read_artifact(study["grid"])
    maps = read_artifact(study["attributions"]["final", "gradcam"]).data["maps"]
    t = maps.shape[1]
    assert (agg.data["counts"] > 0).all()
    for b, (image_ax, map_ax) in enumerate(pairs):
        row, flat = agg.data["median_row"][b], agg.data["median_index"][b]
        mean = np.asarray(grid.attrs["mean"])[:, None, None]
        std = np.asarray(grid.attrs["std"])[:, None, None]
        expected = np.clip(grid.data["images"][row] * std + mean, 0, 1).transpose(1, 2, 0)
        np.testing.assert_allclose(image_ax.images[0].get_array(), expected, atol=1e-6)
        raw = torch.from_numpy(maps[flat // t, flat % t])[None, None]
        up = upsample_positive(raw, 64)[0, 0].numpy()
        np.testing.assert_allclose(map_ax.images[0].get_array(), up / up.max(), atol=1e-6)
        assert map_ax.get_title() == f"score {agg.data['median_score'][b]:.2f}"
        for ax in (image_ax, map_ax):
            (rect,) = ax.patches
            assert rect.get_xy() == (-0.5, -0.5) and rect.get_width() == 32
    assert pairs[0][0].get_ylabel() == "gradcam\nfinal"


def test_rows_in_display_order_and_png_drawn(study, helpers, workdir):
    paths = [study["aggatt"]["final", "gradcam"], study["aggatt"]["final", "grad"]]
    fig = build_examples(aggatt_paths=paths)
    rows = example_axes(fig)
    assert [row[0][0].get_ylabel() for row in rows] == ["grad\nfinal", "gradcam\nfinal"]
    assert all(not ax.get_ylabel() for row in rows for pair in row[1:] for ax in pair)
    helpers.assert_drawn(plot_examples(aggatt_paths=paths, out=workdir / "examples.png"))


def test_empty_bins_are_marked(workdir, helpers, fakes):
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=3)
    attribution = fakes.make_attribution(helpers.CACHE, helpers.bump_maps(3, seed=2),
                                         grid_path=grid)
    (result,) = aggatt(paths=[attribution])
    counts = read_artifact(result.path).data["counts"]
    fig = build_examples(aggatt_paths=[result.path])
    (pairs,) = example_axes(fig)
    marked = [b for b, (image_ax, map_ax) in enumerate(pairs)
              if any(t.get_text() == "empty bin" for t in image_ax.texts)]
    assert all(not pairs[b][0].images and not pairs[b][1].images for b in marked)
    assert marked == [b for b in range(6) if counts[b] == 0] and marked


def test_grid_file_is_found_checked_and_can_be_given(study, workdir, fakes):
    path = study["aggatt"]["final", "grad"]
    moved = shutil.move(study["grid"], workdir / "elsewhere.h5")
    with pytest.raises(UserError, match="pass it with --grid-file"):
        build_examples(aggatt_paths=[path])
    assert example_axes(build_examples(aggatt_paths=[path], grid_file=moved))
    other = fakes.make_grid_file(workdir / "other.h5", count=50, seed=5)
    with pytest.raises(UserError, match="not the grid file"):
        build_examples(aggatt_paths=[path], grid_file=other)
