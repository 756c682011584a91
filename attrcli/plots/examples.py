"""Median examples of the AggAtt bins (supplement Fig. 10): the grid image beside its map.

For each key (one row) and each bin, the example at the bin's median position (recorded by the
``aggatt`` stage) is shown: the grid image, de-normalised with the grid file's mean and std, and
its attribution map upsampled to the image and clamped at zero (as scored, SPEC §1), scaled to
its own maximum. The target cell is outlined on both. Each row is one composed image
(:func:`compose_examples`) in one axes with fixed geometry, as in the AggAtt figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attrcli.errors import UserError
from attrcli.metrics.localization import upsample_positive
from attrcli.plots.aggatt import (
    Geometry,
    cell_box,
    colour_map,
    cover,
    fill_gaps,
    label_width,
    map_axes,
    row_label,
    sort_rows,
)
from attrcli.plots.common import BIN_LABELS, OUTLINE, as_stage, fixed_figure, save_figure
from attrcli.store import ArtifactKey, file_hash, read_artifact, read_provenance
from attrcli.store.keys import GridFileKey


@dataclass
class ExampleRow:
    """The median example of each bin of one key: images (H, W, 3) and maps (H, W), or None."""

    key: ArtifactKey
    images: list[np.ndarray | None]
    maps: list[np.ndarray | None]
    scores: list[float]
    n: int
    cell: int


def _attribution_path(aggatt_path: Path, attrs: dict) -> Path:
    key = ArtifactKey.from_path(aggatt_path)
    beside = key.sibling("attributions", aggatt_path)
    for candidate in (beside, Path(str(attrs.get("attribution", "")))):
        if candidate.name and candidate.is_file():
            return candidate
    raise UserError(f"{aggatt_path}: its attribution artifact is missing (looked for {beside})")


def _grid_path(key: ArtifactKey, attrs: list[dict], override: Path | None) -> Path:
    if override is not None:
        if not Path(override).is_file():
            raise UserError(f"--grid-file {override}: no such file")
        return Path(override)
    tried = [str(a["grid_path"]) for a in attrs if a.get("grid_path")]
    tried.append(str(GridFileKey(key.grids).path(Path("data") / "grids")))
    for candidate in dict.fromkeys(tried):
        if Path(candidate).is_file():
            return Path(candidate)
    raise UserError(
        f"grid file of {key.label()} not found (tried {', '.join(dict.fromkeys(tried))}); "
        "pass it with --grid-file"
    )


class _GridImages:
    """De-normalised images of grid files, read row by row, each file checked once."""

    def __init__(self) -> None:
        self.hashes: dict[Path, str] = {}

    def check(self, path: Path, expected: str | None, label: str) -> None:
        if path not in self.hashes:
            read_provenance(path)  # schema check
            self.hashes[path] = file_hash(path)
        if expected and self.hashes[path] != expected:
            raise UserError(
                f"{path} is not the grid file {label} was computed from (content differs); "
                "pass the right one with --grid-file"
            )

    def rows(self, path: Path, rows: list[int]) -> dict[int, np.ndarray]:
        attrs = read_artifact(path, names=[]).attrs
        with h5py.File(path, "r") as handle:
            if "images" not in handle:
                raise UserError(f"{path} lacks dataset images; is it a grid file?")
            images = handle["images"]
            channels = images.shape[1]
            mean = np.asarray(attrs.get("mean", [0.0] * channels), dtype=np.float64)
            std = np.asarray(attrs.get("std", [1.0] * channels), dtype=np.float64)
            out = {}
            for row in sorted(set(rows)):
                if not 0 <= row < images.shape[0]:
                    raise UserError(f"{path} has {images.shape[0]} images; row {row} requested")
                pixels = images[row].astype(np.float64) * std[:, None, None] + mean[:, None, None]
                pixels = np.clip(pixels.transpose(1, 2, 0), 0.0, 1.0)
                out[row] = np.repeat(pixels, 3, axis=2) if channels == 1 else pixels
            return out


def _image_size(path: Path, attrs: dict) -> int:
    try:
        return int(attrs["image_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} lacks the attribute image_size") from None


def load_examples(aggatt_paths: list[Path], grid_file: Path | None = None) -> list[ExampleRow]:
    """The median example of every bin of each AggAtt artifact, in display order."""
    grids = _GridImages()
    rows = []
    for path in as_stage(aggatt_paths, "aggatt"):
        agg = read_artifact(path, names=["median_index", "median_row", "median_score", "counts"])
        key = ArtifactKey.from_path(path)
        source = _attribution_path(path, agg.attrs)
        attribution = read_artifact(source, names=["grid_index"])
        grid_path = _grid_path(key, [agg.attrs, attribution.attrs], grid_file)
        grids.check(grid_path, attribution.provenance.get("inputs", {}).get("grids"), key.label())
        index = agg.data["median_index"].astype(np.int64)
        grid_rows = agg.data["median_row"].astype(np.int64)
        images = grids.rows(grid_path, [int(r) for r in grid_rows if r >= 0])
        with h5py.File(source, "r") as handle:
            maps = handle["maps"]
            t = maps.shape[1]
            size = _image_size(source, attribution.attrs)
            shown = []
            for flat in index:
                if flat < 0:
                    shown.append(None)
                    continue
                raw = torch.from_numpy(np.asarray(maps[flat // t, flat % t], dtype=np.float32))
                positive = upsample_positive(raw[None, None], size)[0, 0].numpy()
                peak = positive.max()
                shown.append(positive / peak if peak > 0 else positive)
        rows.append(
            ExampleRow(
                key=key,
                images=[images[int(r)] if r >= 0 else None for r in grid_rows],
                maps=shown,
                scores=[float(s) for s in agg.data["median_score"]],
                n=int(agg.attrs["n"]),
                cell=int(agg.attrs["cell"]),
            )
        )
    if not rows:
        raise UserError("no AggAtt artifacts given: pass paths, '-' for stdin, or --grids")
    return sort_rows(rows)


#: Inches of a panel, between the image and the map of one bin, and between bins.
PANEL, PAIR_GAP, BIN_GAP = 1.05, 0.12, 0.22


def example_gaps(size: int) -> tuple[int, int]:
    """White pixel columns between image and map, and between bins, for ``size``-pixel panels."""
    return int(round(PAIR_GAP * size / PANEL)), int(round(BIN_GAP * size / PANEL))


def _side(item: ExampleRow) -> int:
    """Pixels per side of a row's images (32 for a row whose every bin is empty)."""
    return next((image.shape[0] for image in item.images if image is not None), 32)


def compose_examples(item: ExampleRow, gap: int, bin_gap: int) -> tuple[np.ndarray, list[int]]:
    """One key's examples as one RGB image: per bin the grid image, ``gap`` columns, the map
    (coloured 0 to 1), then ``bin_gap`` columns (the gaps filled by :func:`fill_gaps`); an empty
    bin stays white. Returns the image and each bin's first column."""
    size = _side(item)
    bins = len(BIN_LABELS)
    width = bins * (2 * size + gap) + (bins - 1) * bin_gap
    row = np.full((size, width, 3), 255, dtype=np.uint8)
    starts = [b * (2 * size + gap + bin_gap) for b in range(bins)]
    for x, image, shown in zip(starts, item.images, item.maps):
        if image is None:
            continue
        row[:, x : x + size] = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        row[:, x + size + gap : x + 2 * size + gap] = colour_map(shown)[..., :3]
    fill_gaps(row, [(left, left + size) for x in starts for left in (x, x + size + gap)])
    return row, starts


def build_examples(*, aggatt_paths: list[Path], grid_file: Path | None = None) -> Figure:
    """Per key (row) and bin (column pair): the median example's image and attribution map.

    One axes holds one image per row (:func:`compose_examples`), placed with fixed geometry;
    ``fig.axes[0].images[r]`` is row ``r``.
    """
    rows = load_examples(aggatt_paths, grid_file)
    context = len({(r.key.grids, r.key.setting, r.key.model) for r in rows}) > 1
    labels = [row_label(item.key, context) for item in rows]
    bins = len(BIN_LABELS)
    geometry = Geometry(panel=PANEL, left=max(0.7, label_width(labels)), right=0.15, top=0.62,
                        bottom=0.06, row_gap=0.24)
    width = bins * (2 * geometry.panel + PAIR_GAP) + (bins - 1) * BIN_GAP
    fig = fixed_figure(*geometry.size(width, len(rows)))
    size = max(_side(item) for item in rows)
    per_inch = size / geometry.panel
    gap, bin_gap = example_gaps(size)
    step = (geometry.panel + geometry.row_gap) * per_inch
    total = bins * (2 * size + gap) + (bins - 1) * bin_gap
    ax = map_axes(fig, geometry, width, (total, (len(rows) - 1) * step + size))
    frames, outlines, gaps = [], [], []
    for r, item in enumerate(rows):
        y = r * step
        row, starts = compose_examples(item, gap, bin_gap)
        ax.imshow(row, interpolation="antialiased", extent=(0, total, y + size, y))
        for b, x in enumerate(starts):
            gaps.append(Rectangle((x + size, y), gap, size))
            if b < bins - 1:
                gaps.append(Rectangle((x + 2 * size + gap, y), bin_gap, size))
            if item.images[b] is None:
                ax.text(x + size + gap / 2, y + size / 2, "empty bin", ha="center", va="center",
                        fontsize=7, color="0.4")
                continue
            for left in (x, x + size + gap):
                frames.append(Rectangle((left, y), size, size))
                outlines.append(cell_box(item.cell, item.n, size, left, y))
            ax.text(x + 1.5 * size + gap, y - 0.03 * per_inch, f"score {item.scores[b]:.2f}",
                    ha="center", va="bottom", fontsize=7)
        ax.text(-0.1 * per_inch, y + size / 2, labels[r], ha="right", va="center", fontsize=8)
    cover(ax, gaps)
    for boxes, colour, line in ((frames, "black", 0.8), (outlines, OUTLINE, 1.4)):
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour,
                                          linewidth=line, clip_on=False))
    for b, label in enumerate(BIN_LABELS):
        x = b * (2 * size + gap + bin_gap)
        ax.text(x + size + gap / 2, -0.2 * per_inch, label, ha="center", va="bottom", fontsize=9)
    key = rows[0].key
    title = "Median example per AggAtt bin: image | attribution"
    fig.suptitle(title if context else f"{title} · {key.setting} · {key.model}", fontsize=10,
                 y=1 - 0.1 / fig.get_figheight(), va="top")
    return fig


def plot_examples(
    *, aggatt_paths: list[Path], out: Path, fmt: str = "png", grid_file: Path | None = None
) -> Path:
    """Write the examples figure to ``out``; returns the path."""
    return save_figure(build_examples(aggatt_paths=aggatt_paths, grid_file=grid_file), out, fmt)
