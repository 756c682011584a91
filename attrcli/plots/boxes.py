"""Box plots of localization scores (supplement Fig. 9).

One panel per model (rows) and setting (columns); in each panel the layers are groups on the x
axis and every method has a box of its own colour within a group. Dotted lines mark perfect
localization (1.0) and a uniform map (1/n²). The y axis runs from 0 (with a small margin, so
that scores of exactly 0 stay visible) to 1.05. A box whose scores are all equal would be a flat
line; it is drawn as a ``*`` instead, as the supplement does. Whiskers reach 1.5 IQR; outliers
are not drawn (thousands of points per box would hide the boxes). Where the score artifact
holds the bootstrap interval of the median (``attrcli score``), a dark error bar over the
median line shows it: two boxes whose bars do not overlap differ beyond resampling noise
(``attrcli compare`` tests the paired difference). With ``pointing=True`` a white diamond at the
right edge of each box marks the key's pointing-game hit rate (dataset ``pointing`` of the score artifact) on the
same 0-1 axis, with a thin bar for its bootstrap interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy

from attrcli.errors import UserError
from attrcli.metrics.summary import stored_intervals
from attrcli.plots.common import (
    ScoreSet,
    chance_label,
    empty_panel,
    load_scores,
    method_colours,
    new_figure,
    order_layers,
    order_methods,
    order_settings,
    save_figure,
)
from attrcli.store import read_artifact

YLABEL = "localization score"
#: A little below 0, so that a box or median at exactly 0 is not hidden by the axis.
YMIN = -0.03
GUIDE = {"linestyle": ":", "linewidth": 1.2, "color": "0.35", "zorder": 0}
#: The error bar of the median's interval.
INTERVAL = {"ecolor": "0.05", "elinewidth": 1.6, "capsize": 2.5, "capthick": 1.2, "zorder": 4}
#: The pointing-game hit rate's marker and the bar of its interval.
HIT = {"marker": "D", "markersize": 4.5, "markerfacecolor": "white", "markeredgecolor": "0.1",
       "markeredgewidth": 0.9, "linestyle": "", "zorder": 5}
HIT_INTERVAL = {"ecolor": "0.35", "elinewidth": 0.8, "capsize": 1.5, "zorder": 4.5}


def build_boxes(*, score_paths: list[Path], pointing: bool = False) -> Figure:
    """The box-plot figure of the score artifacts (or the scores of attribution artifacts);
    ``pointing`` also marks each key's pointing-game hit rate."""
    sets = load_scores(score_paths)
    # One row per model and one column per setting: GridPG and DiFull/DiPart read different grid
    # files (distinct / corners), which still belong in one row.
    rows = list(dict.fromkeys(s.key.model for s in sets))
    settings = order_settings(s.key.setting for s in sets)
    colours = method_colours(s.key.method for s in sets)
    width = max(
        _panel_width(
            [s for s in sets if s.key.model == row and s.key.setting == setting]
        )
        for row in rows
        for setting in settings
    )
    fig = new_figure(width * len(settings) + 2.4, 2.8 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(settings), squeeze=False, sharey=True)
    collapsed = False
    levels: set[float] = set()
    hits = False
    for r, model in enumerate(rows):
        for c, setting in enumerate(settings):
            ax = axes[r][c]
            panel = [s for s in sets if (s.key.model, s.key.setting) == (model, setting)]
            grids = sorted({s.key.grids for s in panel})
            title = f"{setting} · {model}" + (f" · {', '.join(grids)}" if len(grids) > 1 else "")
            if not panel:
                empty_panel(ax, f"no scores for\n{title}")
                continue
            panel_collapsed, panel_levels = _draw_panel(ax, panel, colours)
            if pointing:
                hits |= _draw_hit_rates(ax, panel)
            collapsed |= panel_collapsed
            levels |= panel_levels
            ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(YLABEL + (" / hit rate" if pointing else ""))
    handles = [Patch(facecolor=colours[m], edgecolor="0.2", label=m) for m in colours]
    handles += [
        Line2D([], [], label="perfect localization (1.0)", **GUIDE),
        Line2D([], [], label=chance_label(s.n for s in sets), **GUIDE),
    ]
    if collapsed:
        handles.append(Line2D([], [], marker="$*$", linestyle="", color="0.2", markersize=9,
                              label="all scores equal"))
    if levels:
        only = levels.pop() if len(levels) == 1 else float("nan")
        level = f"{100 * only:g} %" if np.isfinite(only) else "bootstrap"
        handles.append(Line2D([], [], color=INTERVAL["ecolor"], marker="_", markersize=6,
                              linewidth=INTERVAL["elinewidth"],
                              label=f"{level} CI of the median (grid images resampled)"))
    if hits:
        handles.append(Line2D([], [], label="pointing-game hit rate (with CI)", **HIT))
    per_column = max(4, int((fig.get_figheight() - 0.4) / 0.2))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False,
               ncol=math.ceil(len(handles) / per_column))
    return fig


def plot_boxes(*, score_paths: list[Path], out: Path, fmt: str = "png", pointing: bool = False) -> Path:
    """Write the box-plot figure to ``out`` (``pointing``: with the hit rates); returns the path."""
    return save_figure(build_boxes(score_paths=score_paths, pointing=pointing), out, fmt)


def hit_rate(item: ScoreSet) -> tuple[float, tuple[float, float]] | None:
    """The pointing-game hit rate of ``item`` and its stored interval (NaN when absent), or None
    for an artifact without hits."""
    try:
        artifact = read_artifact(item.path)
    except UserError:
        return None
    hits = artifact.data.get("pointing")
    if hits is None or np.size(hits) == 0:
        return None
    bounds = artifact.data.get("pointing_interval")
    ci = (np.nan, np.nan)
    if bounds is not None and np.shape(bounds) == (2,):
        ci = (float(bounds[0]), float(bounds[1]))
    return float(np.mean(hits)), ci


def _draw_hit_rates(ax, panel: list[ScoreSet]) -> bool:
    """Mark each box's hit rate (and interval) at the box's right edge; whether any was drawn."""
    layers = order_layers(s.key.layer for s in panel)
    methods = order_methods(s.key.method for s in panel)
    step = 0.8 / len(methods)
    drawn = False
    for item in panel:
        found = hit_rate(item)
        if found is None:
            continue
        rate, (low, high) = found
        x = layers.index(item.key.layer) - 0.4 + step * (methods.index(item.key.method) + 0.8)
        if np.isfinite(low) and np.isfinite(high):
            ax.errorbar([x], [rate], yerr=[[rate - low], [high - rate]], fmt="none", **HIT_INTERVAL)
        ax.plot([x], [rate], **HIT)
        drawn = True
    return drawn


def _panel_width(panel: list[ScoreSet]) -> float:
    layers = len({s.key.layer for s in panel}) or 1
    methods = len({s.key.method for s in panel}) or 1
    return float(np.clip(0.8 + 0.14 * layers * methods + 0.3 * layers, 3.2, 7.0))


def _median_interval(item: ScoreSet) -> tuple[tuple[float, float], float] | None:
    """The stored interval of ``item``'s median and its confidence level, if it has one."""
    try:
        artifact = read_artifact(item.path, names=["intervals"])  # the one dataset it needs
    except UserError:  # scored without intervals
        return None
    bounds = stored_intervals(artifact).get("median")
    if bounds is None or not np.isfinite(bounds).all():
        return None
    return bounds, float(artifact.attrs.get("confidence", np.nan))


def _draw_panel(ax, panel: list[ScoreSet], colours: dict) -> tuple[bool, set[float]]:
    """Draw one panel's boxes; whether a box collapsed to a ``*``, and the intervals' levels."""
    layers = order_layers(s.key.layer for s in panel)
    methods = order_methods(s.key.method for s in panel)
    by_key = {(s.key.layer, s.key.method): s for s in panel}
    step = 0.8 / len(methods)
    collapsed = False
    levels: set[float] = set()
    for g, layer in enumerate(layers):
        for m, method in enumerate(methods):
            item = by_key.get((layer, method))
            if item is None or item.scores.size == 0:
                continue
            x = g - 0.4 + step * (m + 0.5)
            values = item.scores
            if np.ptp(values) == 0:
                # The glyph sits high in its box: shift it down so its centre marks the value.
                ax.text(x, float(values[0]), "*", ha="center", va="center", fontsize=15,
                        fontweight="bold", color=colours[method], zorder=3,
                        transform=offset_copy(ax.transData, ax.figure, y=-3, units="points"))
                collapsed = True
                continue
            ax.boxplot(
                values,
                positions=[x],
                widths=step * 0.8,
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
                boxprops={"facecolor": colours[method], "edgecolor": "0.2", "linewidth": 0.8},
                medianprops={"color": "0.1", "linewidth": 1.2},
                whiskerprops={"color": "0.2", "linewidth": 0.8},
                capprops={"color": "0.2", "linewidth": 0.8},
            )
            interval = _median_interval(item)
            if interval is not None:
                (low, high), level = interval
                median = float(np.median(values))
                ax.errorbar([x], [median], yerr=[[median - low], [high - median]], fmt="none",
                            **INTERVAL)
                levels.add(level)
    for y in sorted({1.0} | {1.0 / s.n**2 for s in panel}):
        ax.axhline(y, **GUIDE)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(YMIN, 1.05)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_xlabel("layer")
    ax.grid(axis="y", color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    return collapsed, levels
