"""Median examples of the AggAtt bins (supplement Fig. 10): the grid image beside its map.

For each key (one row) and each bin, the example at the bin's median position (recorded by the
``aggatt`` stage) is shown: the grid image, de-normalised with the grid file's mean and std, and
its attribution map upsampled to the image and clamped at zero (as scored, SPEC §1), scaled to
its own maximum. The target cell is outlined on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from matplotlib.figure import Figure

from attrcli.errors import UserError
from attrcli.metrics.localization import upsample_positive
from attrcli.plots.aggatt import outline_cell, row_label, sort_rows
from attrcli.plots.common import BIN_LABELS, MAP_CMAP, as_stage, new_figure, save_figure
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


def build_examples(*, aggatt_paths: list[Path], grid_file: Path | None = None) -> Figure:
    """Per key (row) and bin (column pair): the median example's image and attribution map.

    ``example_axes(fig)`` gives the ``(image, map)`` axes pairs back, by row and bin.
    """
    rows = load_examples(aggatt_paths, grid_file)
    context = len({(r.key.grids, r.key.setting, r.key.model) for r in rows}) > 1
    bins = len(BIN_LABELS)
    fig = new_figure(2.3 * bins + 1.2, 1.25 * len(rows) + 0.8)
    # Two columns per bin and a narrow empty column between bins.
    grid = fig.add_gridspec(len(rows), 3 * bins - 1, width_ratios=([1, 1, 0.18] * bins)[:-1])
    for r, item in enumerate(rows):
        for b, label in enumerate(BIN_LABELS):
            image_ax = fig.add_subplot(grid[r, 3 * b])
            map_ax = fig.add_subplot(grid[r, 3 * b + 1])
            for ax in (image_ax, map_ax):
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                image_ax.set_title(label, fontsize=9, x=1.05, ha="center", pad=13)
            if item.images[b] is None:
                for ax in (image_ax, map_ax):
                    for side in ax.spines.values():
                        side.set_visible(False)
                image_ax.text(1.05, 0.5, "empty bin", ha="center", va="center", fontsize=7,
                              color="0.4", transform=image_ax.transAxes)
            else:
                image_ax.imshow(item.images[b], interpolation="antialiased")
                map_ax.imshow(item.maps[b], cmap=MAP_CMAP, vmin=0.0, vmax=1.0,
                              interpolation="antialiased")
                for ax in (image_ax, map_ax):
                    outline_cell(ax, item.cell, item.n, item.images[b].shape[0])
                map_ax.set_title(f"score {item.scores[b]:.2f}", fontsize=7, pad=2)
        fig.axes[2 * bins * r].set_ylabel(row_label(item.key, context), fontsize=8, rotation=0,
                                          ha="right", va="center")
    key = rows[0].key
    title = "Median example per AggAtt bin: image | attribution"
    fig.suptitle(title if context else f"{title} · {key.setting} · {key.model}", fontsize=10)
    return fig


def example_axes(fig: Figure) -> list[list[tuple]]:
    """The ``(image, map)`` axes of a :func:`build_examples` figure, ``[row][bin]``."""
    axes = fig.axes
    per_row = 2 * len(BIN_LABELS)
    return [
        [(axes[r + 2 * b], axes[r + 2 * b + 1]) for b in range(len(BIN_LABELS))]
        for r in range(0, len(axes), per_row)
    ]


def plot_examples(
    *, aggatt_paths: list[Path], out: Path, fmt: str = "png", grid_file: Path | None = None
) -> Path:
    """Write the examples figure to ``out``; returns the path."""
    return save_figure(build_examples(aggatt_paths=aggatt_paths, grid_file=grid_file), out, fmt)
