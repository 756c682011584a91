"""Median example per AggAtt bin (supplement Fig. 10): the grid image beside its map."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgb

from attrcli.errors import UserError
from attrcli.metrics import upsample_positive
from attrcli.plots import build_examples, plot_examples
from attrcli.plots.common import BIN_LABELS, MAP_CMAP, OUTLINE
from attrcli.plots.examples import example_gaps
from attrcli.store import read_artifact


@pytest.fixture
def study(workdir, helpers, fakes):
    # 50 grid images: every bin of the top-left cell has a member (2 % of 50 = 1).
    return helpers.aggatt_study(fakes, layers=("final",), methods=("gradcam", "grad"), count=50)


def _blocks(row: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per bin the image block, the gap and the map block of a composed examples row."""
    pair_gap, bin_gap = example_gaps(size)
    width = 6 * (2 * size + pair_gap) + 5 * bin_gap
    assert row.shape[:2] == (size, width)
    out = []
    for b in range(6):
        x = b * (2 * size + pair_gap + bin_gap)
        out.append((row[:, x : x + size], row[:, x + size : x + size + pair_gap],
                    row[:, x + size + pair_gap : x + 2 * size + pair_gap]))
        for left, right in ((x + size, x + size + pair_gap),
                            (x + 2 * size + pair_gap, x + 2 * size + pair_gap + bin_gap)):
            if right < width:  # the gaps repeat the panels' edges (covered in white)
                half = left + (right - left) // 2
                assert (row[:, left:half] == row[:, left - 1 : left]).all()
                assert (row[:, half:right] == row[:, right : right + 1]).all()
    return out


def test_each_bin_shows_its_median_image_and_map(study):
    path = study["aggatt"]["final", "gradcam"]
    fig = build_examples(aggatt_paths=[path])
    (ax,) = fig.axes
    assert fig.get_layout_engine() is None and len(ax.images) == 1  # one image for the row
    texts = [t.get_text() for t in ax.texts]
    assert texts[-6:] == list(BIN_LABELS)
    agg = read_artifact(path)
    assert [t for t in texts if t.startswith("score")] == [f"score {s:.2f}" for s in agg.data["median_score"]]
    assert "gradcam\nfinal" in texts
    grid = read_artifact(study["grid"])
    maps = read_artifact(study["attributions"]["final", "gradcam"]).data["maps"]
    t = maps.shape[1]
    assert (agg.data["counts"] > 0).all()
    row = np.asarray(ax.images[0].get_array())
    for b, (image, gap, shown) in enumerate(_blocks(row, 64)):
        r, flat = agg.data["median_row"][b], agg.data["median_index"][b]
        mean = np.asarray(grid.attrs["mean"])[:, None, None]
        std = np.asarray(grid.attrs["std"])[:, None, None]
        expected = np.clip(grid.data["images"][r] * std + mean, 0, 1).transpose(1, 2, 0)
        np.testing.assert_array_equal(image, np.round(expected * 255).astype(np.uint8))
        raw = torch.from_numpy(maps[flat // t, flat % t])[None, None]
        up = upsample_positive(raw, 64)[0, 0].numpy()
        np.testing.assert_array_equal(shown, colormaps[MAP_CMAP](up / up.max(), bytes=True)[..., :3])
        assert gap.size
    (outlines,) = [c for c in ax.collections if len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0][:3]) == to_rgb(OUTLINE)]
    boxes = [p.get_extents() for p in outlines.get_paths()]
    assert len(boxes) == 12 and all(b.width == b.height == 32 for b in boxes)
    assert (boxes[0].x0, boxes[0].y0) == (0, 0)  # the top-left cell of the first image


def test_rows_in_display_order_and_png_drawn(study, helpers, workdir):
    paths = [study["aggatt"]["final", "gradcam"], study["aggatt"]["final", "grad"]]
    fig = build_examples(aggatt_paths=paths)
    labels = [t.get_text() for t in fig.axes[0].texts if "\n" in t.get_text()]
    assert labels == ["grad\nfinal", "gradcam\nfinal"]
    assert len(fig.axes[0].images) == 2
    helpers.assert_drawn(plot_examples(aggatt_paths=paths, out=workdir / "examples.png"))


def test_empty_bins_are_marked(workdir, helpers, fakes):
    from attrcli.stages.aggatt import aggatt

    grid = fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5", count=3)
    attribution = fakes.make_attribution(helpers.CACHE, helpers.bump_maps(3, seed=2),
                                         grid_path=grid)
    (result,) = aggatt(paths=[attribution])
    counts = read_artifact(result.path).data["counts"]
    fig = build_examples(aggatt_paths=[result.path])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts].count("empty bin") == int((counts == 0).sum()) > 0
    row = np.asarray(ax.images[0].get_array())
    for b, (image, _, shown) in enumerate(_blocks(row, 64)):
        assert ((image == 255).all() and (shown == 255).all()) == (counts[b] == 0)


def test_grid_file_is_found_checked_and_can_be_given(study, workdir, fakes):
    path = study["aggatt"]["final", "grad"]
    moved = shutil.move(study["grid"], workdir / "elsewhere.h5")
    with pytest.raises(UserError, match="pass it with --grid-file"):
        build_examples(aggatt_paths=[path])
    assert build_examples(aggatt_paths=[path], grid_file=moved).axes[0].images
    other = fakes.make_grid_file(workdir / "other.h5", count=50, seed=5)
    with pytest.raises(UserError, match="not the grid file"):
        build_examples(aggatt_paths=[path], grid_file=other)
