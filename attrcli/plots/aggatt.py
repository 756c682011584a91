"""AggAtt figure (supplement Fig. 12): one row per key, one column per percentile bin.

Each bin map is divided by its key's normaliser (the 99.5th percentile over the key's bins,
supplement H.4), so the six bins of a row share one scale, and every row uses one colormap from
0 to 1. The target cell the AggAtt was computed for is outlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    method_sort_key,
    new_figure,
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


def outline_cell(ax, cell: int, n: int, size: int) -> None:
    """Outline the target ``cell`` of an ``n`` x ``n`` grid shown as a ``size``-pixel image."""
    side = size / n
    row, col = divmod(cell, n)
    ax.add_patch(
        Rectangle((col * side - 0.5, row * side - 0.5), side, side, fill=False,
                  edgecolor=OUTLINE, linewidth=1.4)
    )


def build_aggatt(*, aggatt_paths: list[Path]) -> Figure:
    """The AggAtt figure of the given AggAtt artifacts (rows = method/layer, columns = bins)."""
    rows = load_aggatt(aggatt_paths)
    context = len({(r.key.grids, r.key.setting, r.key.model) for r in rows}) > 1
    fig = new_figure(1.35 * len(BIN_LABELS) + 2.2, 1.3 * len(rows) + 0.7)
    axes = fig.subplots(len(rows), len(BIN_LABELS), squeeze=False)
    norm = Normalize(0.0, 1.0)
    image = None
    for r, item in enumerate(rows):
        size = item.bins.shape[-1]
        for b, label in enumerate(BIN_LABELS):
            ax = axes[r][b]
            image = ax.imshow(item.bins[b], cmap=MAP_CMAP, norm=norm, interpolation="antialiased")
            outline_cell(ax, item.cell, item.n, size)
            ax.set_xticks([])
            ax.set_yticks([])
            if item.counts[b] == 0:
                ax.text(0.5, 0.5, "empty", ha="center", va="center", color="white",
                        fontsize=8, transform=ax.transAxes)
            if r == 0:
                ax.set_title(label, fontsize=9)
        axes[r][0].set_ylabel(row_label(item.key, context), fontsize=8, rotation=0,
                              ha="right", va="center")
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / len(rows) + 0.2), pad=0.02)
    bar.set_label("attribution / normaliser", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    cells = sorted({r.cell for r in rows})
    where = f"target cell {cells[0]}" if len(cells) == 1 else "target cells outlined"
    key = rows[0].key
    title = "AggAtt" if context else f"AggAtt · {key.setting} · {key.model}"
    fig.suptitle(f"{title} · {where}", fontsize=10)
    return fig


def plot_aggatt(*, aggatt_paths: list[Path], out: Path, fmt: str = "png") -> Path:
    """Write the AggAtt figure to ``out``; returns the path."""
    return save_figure(build_aggatt(aggatt_paths=aggatt_paths), out, fmt)
