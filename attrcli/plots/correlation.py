"""Correlation heat map (supplement Fig. 19): Spearman coefficients between keys.

Input is either correlation artifacts (from ``attrcli correlate``; one panel each) or score
artifacts, whose square matrix is computed here in memory (no artifact is written) with
:func:`attrcli.metrics.spearman`, one panel per grid file, setting and model. Rows and columns
are ordered by layer (input, middle, final) and then method, with lines between layer groups;
values are printed in the cells when the matrix is at most 12 x 12. NaN (a constant score
vector has no ranking) is grey.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from attrcli.errors import UserError
from attrcli.metrics.correlation import check_comparable, spearman
from attrcli.plots.common import (
    load_scores,
    method_sort_key,
    new_figure,
    order_layers,
    save_figure,
)
from attrcli.store import read_artifact

ANNOTATE_MAX = 12


@dataclass
class CorrelationPanel:
    """One Spearman matrix with its key labels (``setting/model/layer/method``)."""

    rows: list[str]
    columns: list[str]
    matrix: np.ndarray
    count: int | str  # attributions per key
    grids: str = ""


def _is_correlation(path: Path) -> bool:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            return "matrix" in handle
    except OSError:
        raise UserError(f"{path} is not a readable HDF5 artifact (corrupt or truncated)") from None


def _from_artifact(path: Path) -> CorrelationPanel:
    artifact = read_artifact(path, names=["matrix"])
    rows, columns = artifact.attrs.get("rows"), artifact.attrs.get("columns")
    matrix = np.asarray(artifact.data["matrix"], dtype=np.float64)
    if not isinstance(rows, list) or not isinstance(columns, list) or matrix.shape != (
        len(rows),
        len(columns),
    ):
        raise UserError(f"{path}: matrix and its row/column labels do not match")
    return CorrelationPanel(rows, columns, matrix, artifact.attrs.get("count", "?"))


def _from_scores(paths: list[Path]) -> list[CorrelationPanel]:
    sets = load_scores(paths)
    groups: dict[tuple[str, str, str], list] = {}
    for item in sets:
        groups.setdefault((item.key.grids, item.key.setting, item.key.model), []).append(item)
    panels = []
    for (grids, setting, model), members in groups.items():
        check_comparable([m.identity for m in members])
        labels = [m.key.label() for m in members]
        matrix = spearman(np.stack([m.scores for m in members]))
        panels.append(CorrelationPanel(labels, labels, matrix, len(members[0].scores), grids))
    return panels


def load_panels(paths: list[Path]) -> list[CorrelationPanel]:
    """Panels from correlation artifacts, then from the remaining (score) artifacts."""
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        raise UserError("no correlation or score artifacts given: pass paths, '-', or --grids")
    stored = [p for p in paths if _is_correlation(p)]
    scored = [p for p in paths if p not in stored]
    panels = [_from_artifact(p) for p in stored]
    return panels + (_from_scores(scored) if scored else [])


def _split(label: str) -> tuple[str, str, str, str]:
    parts = label.split("/", 3)
    if len(parts) != 4:
        return "", "", "", label
    return parts[0], parts[1], parts[2], parts[3]


def _order(labels: list[str]) -> list[int]:
    layers = order_layers(_split(label)[2] for label in labels)
    return sorted(
        range(len(labels)),
        key=lambda i: (layers.index(_split(labels[i])[2]), method_sort_key(_split(labels[i])[3])),
    )


def _short(labels: list[str]) -> tuple[list[str], str]:
    """Drop the ``setting/model/`` part when all labels share it; returns it for the title."""
    prefixes = {"/".join(_split(label)[:2]) for label in labels}
    if len(prefixes) == 1:
        return ["/".join(_split(label)[2:]) for label in labels], prefixes.pop()
    return labels, ""


def _layer_breaks(labels: list[str]) -> list[float]:
    layers = [_split(label)[2] for label in labels]
    return [i + 0.5 for i in range(len(layers) - 1) if layers[i] != layers[i + 1]]


def _draw(ax, panel: CorrelationPanel):
    r_order, c_order = _order(panel.rows), _order(panel.columns)
    matrix = panel.matrix[np.ix_(r_order, c_order)]
    rows = [panel.rows[i] for i in r_order]
    columns = [panel.columns[i] for i in c_order]
    row_ticks, row_prefix = _short(rows)
    col_ticks, col_prefix = _short(columns)
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1.0, vmax=1.0,
                      aspect="equal", interpolation="nearest")
    ax.set_xticks(range(len(columns)), col_ticks, rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(rows)), row_ticks, fontsize=8)
    for x in _layer_breaks(columns):
        ax.axvline(x, color="0.15", linewidth=1.2)
    for y in _layer_breaks(rows):
        ax.axhline(y, color="0.15", linewidth=1.2)
    if matrix.shape[0] <= ANNOTATE_MAX and matrix.shape[1] <= ANNOTATE_MAX:
        for (r, c), value in np.ndenumerate(matrix):
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            colour = "white" if np.isfinite(value) and abs(value) > 0.6 else "0.1"
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour)
    shared = row_prefix if row_prefix == col_prefix else ""
    where = " · ".join(part for part in [*shared.split("/"), panel.grids] if part)
    ax.set_title(f"{where or 'Spearman'} ({panel.count} attributions)", fontsize=9)
    return image


def build_correlation(*, paths: list[Path]) -> Figure:
    """Heat map of each Spearman matrix, with a colour bar from -1 to 1."""
    panels = load_panels(paths)
    side = max(max(len(p.rows), len(p.columns)) for p in panels)
    cell = 0.55 if side <= ANNOTATE_MAX else 0.32
    height = max(2.6, cell * max(len(p.rows) for p in panels) + 2.2)
    widths = [max(2.5, cell * len(p.columns) + 2.0) for p in panels]
    fig = new_figure(sum(widths) + 1.0, height)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    image = None
    for ax, panel in zip(axes, panels):
        image = _draw(ax, panel)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.02)
    bar.set_label("Spearman rank correlation", fontsize=8)
    bar.set_ticks([-1.0, -0.5, 0.0, 0.5, 1.0])
    return fig


def plot_correlation(*, paths: list[Path], out: Path, fmt: str = "png") -> Path:
    """Write the correlation heat map to ``out``; returns the path."""
    return save_figure(build_correlation(paths=paths), out, fmt)
