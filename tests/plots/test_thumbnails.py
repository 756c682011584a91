"""The report's per-key PNGs: valid files a decoder reads back to the exact pixels, AggAtt tiles
equal to the normalised bins through the palette, and figures linked above the embedding limit."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from attrcli.plots import thumbnails as th
from attrcli.store import ArtifactKey, write_artifact


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("RGB"))


def test_png_files_decode_to_their_pixels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    assert np.array_equal(decoded(th.png_bytes(rgb)), rgb)
    grey = rng.integers(0, 256, (4, 9)).astype(np.uint8)
    assert np.array_equal(decoded(th.png_bytes(grey)), np.repeat(grey[..., None], 3, axis=2))
    index = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    assert np.array_equal(decoded(th.png_bytes(index, th.palette())), th.palette()[index])
    assert th.png_bytes(rgb) == th.png_bytes(rgb.copy())  # deterministic


def test_shrink_is_an_area_average_and_levels_span_the_map():
    image = np.arange(16, dtype=float).reshape(4, 4)
    assert th.shrink(image, tile=2).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert th.shrink(image, tile=4).tolist() == image.tolist()
    assert th.levels(np.array([0.0, 0.5, 1.0, 2.0, np.nan])).tolist() == [0, 126, 253, 253, 0]
    assert th.palette().shape == (256, 3) and th.palette()[th.WHITE].tolist() == [255] * 3


def test_the_aggatt_strip_shows_the_normalised_bins(tmp_path):
    rng = np.random.default_rng(1)
    bins = rng.random((6, 64, 64)).astype(np.float32) * 2
    counts = np.array([3, 0, 5, 5, 1, 2])
    key = ArtifactKey("aggatt", "toy", "gridpg", "m", "input", "grad")
    path = write_artifact(key.path(tmp_path), data={"bins": bins, "counts": counts}, attrs={"normaliser": 1.5})
    data, got = th.aggatt_strip(path)
    assert got == counts.tolist()
    pixels = decoded(data)
    assert pixels.shape == (32, 6 * 32 + 5 * th.GAP, 3)
    for b in range(6):
        tile = pixels[:, b * (32 + th.GAP):b * (32 + th.GAP) + 32]
        if counts[b] == 0:
            assert (tile == 235).all()  # an empty bin is grey
            continue
        want = th.palette()[th.levels(th.shrink(np.clip(bins[b].astype(np.float64) / 1.5, 0, 1)))]
        assert np.array_equal(tile, want)
    assert (pixels[:, 32:32 + th.GAP] == 255).all()  # white gaps


def test_figures_over_the_limit_are_linked_not_embedded(tmp_path):
    from attrcli.stages.html import figure_html

    small, large = tmp_path / "a.png", tmp_path / "b.png"
    small.write_bytes(th.png_bytes(np.zeros((2, 2, 3), dtype=np.uint8)))
    large.write_bytes(th.png_bytes(np.random.default_rng(0).integers(0, 256, (300, 300, 3)).astype(np.uint8)))
    assert 'src="data:image/png;base64,' in figure_html(small, tmp_path, embed_limit=10_000)
    linked = figure_html(large, tmp_path, embed_limit=10_000)
    assert 'href="b.png"' in linked and "data:" not in linked and "0.3 MB" in linked
