"""AggAtt figure (supplement Fig. 12): one row per key, one column per percentile bin.

Each bin map is divided by its key's normaliser (the 99.5th percentile over the key's bins,
supplement H.4), so the six bins of a row share one scale, and every row uses one colormap from
0 to 1. The target cell the AggAtt was computed for is outlined.

Drawing costs what the pixels cost: each row is one image (the six coloured bin maps side by
side, :func:`compose_row`) in one axes placed with fixed geometry, with labels as text; a figure
of dozens of rows has two axes, not hundreds laid out by constrained layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attrcli.engine.precision import PRECISIONS, split_key_method
from attrcli.errors import UserError
from attrcli.plots.common import (
    BIN_LABELS,
    MAP_CMAP,
    OUTLINE,
    as_stage,
    fixed_figure,
    method_sort_key,
    order_layers,
    order_settings,
    save_figure,
)
from attrcli.store import ArtifactKey, read_artifact


@dataclass
class AggAttRow:
    """One key's AggAtt, read back for plotting."""

    key: ArtifactKey
    bins: np.ndarray  # (6, S, S), already divided by the normaliser
    counts: np.ndarray
    n: int
    cell: int


def load_aggatt(paths: list[Path]) -> list[AggAttRow]:
    """Read AggAtt artifacts (or those of attribution/score paths), in display order."""
    rows = []
    for path in as_stage(paths, "aggatt"):
        artifact = read_artifact(path, names=["bins", "counts"])
        try:
            n, cell = int(artifact.attrs["n"]), int(artifact.attrs["cell"])
            scale = float(artifact.attrs["normaliser"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} lacks the attributes n, cell and normaliser") from None
        bins = np.asarray(artifact.data["bins"], dtype=np.float64)
        if bins.ndim != 3 or len(bins) != len(BIN_LABELS):
            raise UserError(f"{path}: bins have shape {bins.shape}, expected (6, S, S)")
        rows.append(
            AggAttRow(ArtifactKey.from_path(path), bins / (scale if scale > 0 else 1.0),
                      np.asarray(artifact.data["counts"]), n, cell)
        )
    if not rows:
        raise UserError("no AggAtt artifacts given: pass paths, '-' for stdin, or --grids")
    return sort_rows(rows)


def sort_rows(rows: list) -> list:
    """By grids, model, setting, then method (display order), then layer (input->final)."""
    layers = order_layers(r.key.layer for r in rows)
    settings = order_settings(r.key.setting for r in rows)
    models = list(dict.fromkeys(r.key.model for r in rows))
    return sorted(
        rows,
        key=lambda r: (
            r.key.grids,
            models.index(r.key.model),
            settings.index(r.key.setting),
            *_method_order(r.key.method),
            layers.index(r.key.layer),
        ),
    )


def _method_order(method: str) -> tuple:
    """Display order of a key's method: by its spec, then fp32 before tf32 before bf16."""
    spec, precision = split_key_method(method)
    return method_sort_key(spec), PRECISIONS.index(precision)


def row_label(key: ArtifactKey, with_context: bool) -> str:
    """``method`` over ``layer``; with ``setting · model`` on top when rows differ in them."""
    label = f"{key.method}\n{key.layer}"
    return f"{key.setting} · {key.model}\n{label}" if with_context else label


def cell_box(cell: int, n: int, size: int, x: float, y: float) -> Rectangle:
    """The outline of the target ``cell`` of an ``n`` x ``n`` grid drawn as a ``size``-pixel
    block whose top-left pixel edge is at ``(x, y)`` (data units are pixels)."""
    side = size / n
    row, col = divmod(cell, n)
    return Rectangle((x + col * side, y + row * side), side, side)


def colour_map(values: np.ndarray) -> np.ndarray:
    """``values`` (divided by the normaliser) as RGBA bytes on the figures' one scale, 0 to 1."""
    return colormaps[MAP_CMAP](Normalize(0.0, 1.0)(values), bytes=True)


def fill_gaps(row: np.ndarray, panels: list[tuple[int, int]]) -> None:
    """Fill the columns between ``panels`` (``(start, stop)`` column spans, left to right) with
    the panels' edge columns, half from each side, in place. The filter that resamples the row
    then blends a panel's edge with its own colours, not with the gap; the figure covers the
    gaps in white."""
    for (_, stop), (start, _) in zip(panels, panels[1:]):
        middle = stop + (start - stop) // 2
        row[:, stop:middle] = row[:, stop - 1 : stop]
        row[:, middle:start] = row[:, start : start + 1]


def compose_row(bins: np.ndarray, gap: int) -> np.ndarray:
    """One key's bin maps (6, S, S) side by side as one RGBA image (S, 6·S + 5·gap, 4), ``gap``
    pixel columns apart (filled by :func:`fill_gaps`): the row is drawn with one ``imshow``."""
    size = bins.shape[-1]
    row = np.full((size, len(bins) * size + (len(bins) - 1) * gap, 4), 255, dtype=np.uint8)
    for b, values in enumerate(bins):
        x = b * (size + gap)
        row[:, x : x + size] = colour_map(values)
    fill_gaps(row, [(b * (size + gap), b * (size + gap) + size) for b in range(len(bins))])
    return row


def cover(ax, gaps: list[Rectangle]) -> None:
    """White over the gaps between panels (above the row images, below frames and outlines)."""
    ax.add_collection(PatchCollection(gaps, facecolor="white", edgecolor="none", zorder=0.5))


@dataclass(frozen=True)
class Geometry:
    """Fixed geometry of a figure of image rows (inches): panels of ``panel`` inches, labels at
    the left, a title band on top; data units inside the figure's one map axes are pixels."""

    panel: float
    left: float
    right: float
    top: float
    bottom: float
    row_gap: float

    def size(self, width: float, rows: int) -> tuple[float, float]:
        height = self.top + rows * self.panel + (rows - 1) * self.row_gap + self.bottom
        return self.left + width + self.right, height


def label_width(labels: list[str], fontsize: float = 8) -> float:
    """Inches the longest line of ``labels`` needs at ``fontsize`` (a generous estimate)."""
    chars = max((len(line) for label in labels for line in label.split("\n")), default=4)
    return 0.2 + 0.62 * fontsize / 72 * chars


def map_axes(fig: Figure, geometry: Geometry, width: float, pixels: tuple[float, float]):
    """The one axes every row image is drawn in, ``pixels`` (x, y) data units across, y down."""
    fig_w, fig_h = fig.get_size_inches()
    height = fig_h - geometry.top - geometry.bottom
    ax = fig.add_axes((geometry.left / fig_w, geometry.bottom / fig_h, width / fig_w, height / fig_h))
    ax.set_xlim(0, pixels[0])
    ax.set_ylim(pixels[1], 0)
    ax.set_axis_off()
    return ax


def build_aggatt(*, aggatt_paths: list[Path]) -> Figure:
    """The AggAtt figure of the given AggAtt artifacts (rows = method/layer, columns = bins).

    The figure is one axes with one image per row (:func:`compose_row`) and labels as text at
    fixed places, so drawing it costs its pixels; ``fig.axes[0].images[r]`` is row ``r``.
    """
    rows = load_aggatt(aggatt_paths)
    context = len({(r.key.grids, r.key.setting, r.key.model) for r in rows}) > 1
    labels = [row_label(item.key, context) for item in rows]
    bins = len(BIN_LABELS)
    geometry = Geometry(panel=1.25, left=max(0.7, label_width(labels)), right=1.05, top=0.5,
                        bottom=0.06, row_gap=0.1)
    gap_in = 0.1
    width = bins * geometry.panel + (bins - 1) * gap_in
    fig = fixed_figure(*geometry.size(width, len(rows)))
    size = max(item.bins.shape[-1] for item in rows)
    per_inch = size / geometry.panel  # data units (pixels of the largest map) per inch
    gap, step = int(round(gap_in * per_inch)), (geometry.panel + geometry.row_gap) * per_inch
    ax = map_axes(fig, geometry, width, (bins * size + (bins - 1) * gap, (len(rows) - 1) * step + size))
    frames, outlines, gaps = [], [], []
    for r, item in enumerate(rows):
        y, own = r * step, item.bins.shape[-1]
        scale = size / own  # a smaller map (another model's grids) is shown at the same size
        ax.imshow(compose_row(item.bins, int(round(gap / scale))), interpolation="antialiased",
                  extent=(0, (bins * own + (bins - 1) * round(gap / scale)) * scale, y + size, y))
        for b in range(bins):
            x = b * (size + gap)
            gaps += [Rectangle((x + size, y), gap, size)] if b < bins - 1 else []
            frames.append(Rectangle((x, y), size, size))
            outlines.append(cell_box(item.cell, item.n, size, x, y))
            if item.counts[b] == 0:
                ax.text(x + size / 2, y + size / 2, "empty", ha="center", va="center",
                        color="white", fontsize=8)
        ax.text(-0.1 * per_inch, y + size / 2, labels[r], ha="right", va="center", fontsize=8)
    cover(ax, gaps)
    for boxes, colour, line in ((frames, "black", 0.8), (outlines, OUTLINE, 1.4)):
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour,
                                          linewidth=line, clip_on=False))
    for b, label in enumerate(BIN_LABELS):
        ax.text(b * (size + gap) + size / 2, -0.06 * per_inch, label, ha="center", va="bottom",
                fontsize=9)
    fig_w, fig_h = fig.get_size_inches()
    tall = fig_h - geometry.top - geometry.bottom
    shrink = min(1.0, 3.0 / len(rows) + 0.2)
    bar_ax = fig.add_axes(((geometry.left + width + 0.2) / fig_w,
                           (geometry.bottom + tall * (1 - shrink) / 2) / fig_h,
                           0.2 / fig_w, tall * shrink / fig_h))
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), MAP_CMAP), cax=bar_ax)
    bar.set_label("attribution / normaliser", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    cells = sorted({r.cell for r in rows})
    where = f"target cell {cells[0]}" if len(cells) == 1 else "target cells outlined"
    key = rows[0].key
    title = "AggAtt" if context else f"AggAtt · {key.setting} · {key.model}"
    fig.suptitle(f"{title} · {where}", fontsize=10, y=1 - 0.1 / fig_h, va="top")
    return fig


def plot_aggatt(*, aggatt_paths: list[Path], out: Path, fmt: str = "png") -> Path:
    """Write the AggAtt figure to ``out``; returns the path."""
    return save_figure(build_aggatt(aggatt_paths=aggatt_paths), out, fmt)
