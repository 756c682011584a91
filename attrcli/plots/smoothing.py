"""Smoothing sweep (supplement Tabs. 1-2, Fig. 26): S-IntGrad and S-IxG against the kernel size K.

For each grid file, setting and model (one row), two panels share a log2 K axis:

- localization of S-IntGrad / S-IxG at the input (median, quartile band) against K, with the
  unsmoothed IntGrad / IxG at K = 1, labelled "original" (the first column of Tabs. 1-2);
- Spearman correlation of their per-attribution scores with final-layer Grad-CAM (``reference``),
  the quantity of Tabs. 1-2, computed here with :func:`attrcli.metrics.spearman`, each point with
  its bootstrap interval as an error bar (grid images resampled, the same for both keys;
  :func:`attrcli.metrics.spearman_intervals`, one resampling for all points of a row).

SmoothGrad (``smoothgrad-intgrad``, ``smoothgrad-ixg``) is drawn beside it as a dashed horizontal
line in the family's colour; of several SmoothGrad configurations the one with the best median
localization is shown, as the supplement's Fig. 26 does. Nothing is written but the figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from attrcli.engine.precision import key_suffix, split_key_method
from attrcli.errors import UserError
from attrcli.metrics.correlation import check_comparable, spearman
from attrcli.metrics.intervals import BootstrapConfig, spearman_intervals
from attrcli.plots.boxes import GUIDE, YLABEL, YMIN
from attrcli.plots.common import (
    ScoreSet,
    chance_label,
    empty_panel,
    load_scores,
    method_base,
    method_colour,
    method_params,
    new_figure,
    order_settings,
    save_figure,
)
from attrcli.store import read_provenance

#: (smoothed method, its unsmoothed base, the SmoothGrad variant of the base)
FAMILIES = (
    ("s-intgrad", "intgrad", "smoothgrad-intgrad"),
    ("s-ixg", "ixg", "smoothgrad-ixg"),
)
ORIGINAL_K = 1
_KERNEL_FIELDS = ("k", "kernel_size", "kernel", "size")


@dataclass
class Point:
    """One method's localization summary and its correlation with the reference."""

    spec: str
    k: int
    median: float
    q1: float
    q3: float
    rho: float | None
    rho_ci: tuple[float, float] | None = None  # bootstrap interval of rho


@dataclass
class Sweep:
    """One family in one setting/model: points by K (the original at K = 1) and SmoothGrad."""

    family: str
    base: str
    points: list[Point] = field(default_factory=list)
    smoothgrad: Point | None = None


@dataclass
class SweepGroup:
    grids: str
    setting: str
    model: str
    n: int
    reference: str | None  # label of the reference key, None when absent
    sweeps: list[Sweep]


def kernel_size(item: ScoreSet) -> int:
    """K of a smoothed key: ``k=`` in its method spec, else the config its attribution records."""
    params = method_params(_spec(item))
    raw = params.get("k")
    if raw is None:
        attribution = item.key.sibling("attributions", item.path)
        if not attribution.is_file():
            attribution = Path(str(item.attrs.get("attribution", "")))
        if attribution.name and attribution.is_file():
            config = read_provenance(attribution).get("config", {})
            method_config = config.get("identity", {}).get("method_config", {})
            raw = next((method_config[f] for f in _KERNEL_FIELDS if f in method_config), None)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise UserError(
            f"cannot tell the kernel size K of {item.key.label()}: its method spec has no k= "
            "and its attribution records none"
        ) from None


def _summary(item: ScoreSet, k: int, reference: ScoreSet | None) -> Point:
    median, q1, q3 = np.percentile(item.scores, [50, 25, 75]) if item.scores.size else [np.nan] * 3
    rho = None
    if reference is not None:
        check_comparable([reference.identity, item.identity])
        rho = float(spearman(item.scores[None], reference.scores[None])[0, 0])
    return Point(item.key.method, k, float(median), float(q1), float(q3), rho)


def _spec(item: ScoreSet) -> str:
    """The key's method spec without its precision suffix (``s-ixg:k=3@bf16`` -> ``s-ixg:k=3``)."""
    return split_key_method(item.key.method)[0]


def _find_reference(members: list[ScoreSet], every: list[ScoreSet], spec: str) -> ScoreSet | None:
    """The reference key ``spec`` names; one without a precision suffix is looked for in the
    members' precision first (a bf16 sweep is compared with bf16 Grad-CAM), then as written."""
    parts = spec.split("/")
    if len(parts) not in (2, 4):
        raise UserError(
            f"invalid reference {spec!r}: use layer/method (final/gradcam) or setting/model/layer/method"
        )
    suffix = key_suffix(split_key_method(members[0].key.method)[1])
    methods = list(dict.fromkeys([parts[-1] + suffix if "@" not in parts[-1] else parts[-1], parts[-1]]))
    for method in methods:
        if len(parts) == 2:
            found = next((m for m in members if (m.key.layer, m.key.method) == (parts[0], method)), None)
        else:
            want = (members[0].key.grids, *parts[:3], method)
            found = next(
                (m for m in every
                 if (m.key.grids, m.key.setting, m.key.model, m.key.layer, m.key.method) == want),
                None,
            )
        if found is not None:
            return found
    return None




def _as_grid_scores(item: ScoreSet) -> np.ndarray:
    """``item``'s scores as (grid images, targets), the shape the bootstrap resamples."""
    return item.scores.reshape(len(item.identity.grid_index), -1)


def _add_intervals(
    pairs: list[tuple[Point, ScoreSet]], reference: ScoreSet, bootstrap: BootstrapConfig
) -> None:
    """Set ``rho_ci`` of every point against ``reference`` (one resampling for all)."""
    if not pairs:
        return
    columns = np.stack([_as_grid_scores(item) for _, item in pairs])
    bounds = spearman_intervals(_as_grid_scores(reference)[None], columns, bootstrap)[0]
    for (point, _), (low, high) in zip(pairs, bounds):
        point.rho_ci = (float(low), float(high))


def sweep_groups(
    sets: list[ScoreSet], *, reference: str, layer: str, bootstrap: BootstrapConfig | None = None
) -> list[SweepGroup]:
    """The sweep of every grid file/setting/model (and precision: keys of another precision, such
    as ``s-ixg:k=3@bf16``, make a sweep of their own) that has smoothed scores at ``layer``."""
    groups: dict[tuple[str, str, str, str], list[ScoreSet]] = {}
    for item in sets:
        precision = split_key_method(item.key.method)[1]
        groups.setdefault((item.key.grids, item.key.setting, item.key.model, precision), []).append(item)
    out = []
    for (grids, setting, model, precision), members in groups.items():
        model = model + key_suffix(precision)  # as shown: vgg11@bf16 beside vgg11
        ref = _find_reference(members, sets, reference)
        at_layer = [m for m in members if m.key.layer == layer]
        sweeps = []
        drawn: list[tuple[Point, ScoreSet]] = []
        for family, base, smoothgrad in FAMILIES:
            smoothed = [m for m in at_layer if method_base(_spec(m)) == family]
            if not smoothed:
                continue
            sweep = Sweep(family, base)
            original = next((m for m in at_layer if _spec(m) == base), None)
            if original is not None:
                sweep.points.append(_summary(original, ORIGINAL_K, ref))
                drawn.append((sweep.points[-1], original))
            by_k: dict[int, ScoreSet] = {}
            for item in smoothed:
                by_k.setdefault(kernel_size(item), item)
            for k in sorted(by_k):
                sweep.points.append(_summary(by_k[k], k, ref))
                drawn.append((sweep.points[-1], by_k[k]))
            variants = [(_summary(m, 0, ref), m) for m in at_layer
                        if method_base(_spec(m)) == smoothgrad]
            if variants:
                sweep.smoothgrad, item = max(variants, key=lambda v: (v[0].median, v[0].spec))
                drawn.append((sweep.smoothgrad, item))
            sweeps.append(sweep)
        if ref is not None:
            _add_intervals(drawn, ref, bootstrap or BootstrapConfig())
        if sweeps:
            label = ref.key.label() if ref is not None else None
            out.append(SweepGroup(grids, setting, model, members[0].n, label, sweeps))
    if not out:
        found = sorted({f"{s.key.layer}/{s.key.method}" for s in sets})
        raise UserError(
            f"no s-intgrad or s-ixg scores at layer {layer} among {len(sets)} score artifacts "
            f"(found: {', '.join(found[:12])}{', ...' if len(found) > 12 else ''}); "
            "attribute and score them first, e.g. --method s-intgrad:k=9,s-intgrad:k=33"
        )
    settings = order_settings(g.setting for g in out)
    models = list(dict.fromkeys(g.model for g in out))
    return sorted(out, key=lambda g: (g.grids, models.index(g.model), settings.index(g.setting)))


def _x_axis(ax, ks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    crowded = any(np.log2(b / a) < 0.45 for a, b in pairwise(ks))
    ax.set_xticks(ks, ["original" if k == ORIGINAL_K else str(k) for k in ks], fontsize=8,
                  rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.minorticks_off()
    ax.set_xlim(min(ks) / 1.8, max(ks) * 1.5)
    ax.set_xlabel("Gaussian kernel size K (σ = K/4), log scale")


#: Error bars of the second family sit this many octaves right of their points, the first's as
#: far left, so that the two families' bars at one K do not hide each other.
DODGE = 0.06


def _draw_errors(ax, points: list[Point], colour, dodge: float = 0.0) -> None:
    """Vertical error bars of the correlations' intervals, ``dodge`` octaves beside the points."""
    shown = [p for p in points if p.rho is not None and p.rho_ci is not None
             and np.isfinite([p.rho, *p.rho_ci]).all()]
    if shown:
        below = [p.rho - p.rho_ci[0] for p in shown]
        above = [p.rho_ci[1] - p.rho for p in shown]
        ax.errorbar([p.k * 2**dodge for p in shown], [p.rho for p in shown], yerr=[below, above],
                    fmt="none", ecolor=colour, elinewidth=1.1, capsize=2.5, zorder=2)


def _draw_sweep(ax, sweep: Sweep, value, band=None, annotate: int | None = None,
                errors: bool = False) -> None:
    """Draw one family; ``annotate`` (0, 1, ...) prints values, above the line for even
    numbers and below for odd ones, so that two families' labels do not collide; ``errors``
    draws the correlations' intervals."""
    colour = method_colour(sweep.base)
    points = [p for p in sweep.points if value(p) is not None]
    if errors:
        side = 0 if annotate is None else (1 if annotate % 2 else -1)
        _draw_errors(ax, points, colour, side * DODGE)
    smoothed = [p for p in points if p.k != ORIGINAL_K]
    original = [p for p in points if p.k == ORIGINAL_K]
    ks = [p.k for p in smoothed]
    ax.plot(ks, [value(p) for p in smoothed], "-o", color=colour, markersize=4, linewidth=1.5)
    if band is not None and smoothed:
        ax.fill_between(ks, [band(p)[0] for p in smoothed], [band(p)[1] for p in smoothed],
                        color=colour, alpha=0.15, linewidth=0)
    for p in original:
        ax.plot([p.k], [value(p)], "s", color=colour, markersize=6, markeredgecolor="0.1",
                zorder=3)
        if band is not None:
            low, high = band(p)
            ax.vlines(p.k, low, high, color=colour, linewidth=1.5, zorder=2)
        if smoothed:
            ax.plot([p.k, smoothed[0].k], [value(p), value(smoothed[0])], ":", color=colour,
                    linewidth=1)
    if annotate is not None:
        second = annotate % 2 == 1
        for p in points:
            if p.k == ORIGINAL_K:  # beside the square: the two originals are often close
                offset, ha, va = ((7, 0), "left", "center") if second else ((-7, 0), "right", "center")
            else:
                offset, ha, va = ((0, -6), "center", "top") if second else ((0, 6), "center", "bottom")
            ax.annotate(f"{value(p):.2f}", (p.k, value(p)), textcoords="offset points",
                        xytext=offset, ha=ha, va=va, fontsize=7, color=colour)
    if sweep.smoothgrad is not None and value(sweep.smoothgrad) is not None:
        ax.axhline(value(sweep.smoothgrad), linestyle="--", color=colour, linewidth=1.2)
        interval = sweep.smoothgrad.rho_ci
        if errors and interval is not None and np.isfinite(interval).all():
            ax.axhspan(*interval, color=colour, alpha=0.07, linewidth=0)


def build_smoothing(
    *,
    score_paths: list[Path],
    reference: str = "final/gradcam",
    layer: str = "input",
    bootstrap: BootstrapConfig | None = None,
) -> Figure:
    """The smoothing sweep of the score artifacts (see the module docstring)."""
    bootstrap = bootstrap or BootstrapConfig()
    groups = sweep_groups(
        load_scores(score_paths), reference=reference, layer=layer, bootstrap=bootstrap
    )
    # Without the reference anywhere, the correlation column is left out (not drawn empty).
    correlated = any(g.reference is not None for g in groups)
    fig = new_figure(11.5 if correlated else 6.6, 3.4 * len(groups) + 0.4)
    axes = fig.subplots(len(groups), 2 if correlated else 1, squeeze=False)
    for (loc_ax, *rho), group in zip(axes, groups):
        ks = sorted({p.k for s in group.sweeps for p in s.points})
        where = f"{group.setting} · {group.model}"
        for sweep in group.sweeps:
            _draw_sweep(loc_ax, sweep, lambda p: p.median, band=lambda p: (p.q1, p.q3))
        loc_ax.axhline(1.0, **GUIDE)
        loc_ax.axhline(1.0 / group.n**2, **GUIDE)
        loc_ax.set_ylim(YMIN, 1.05)
        loc_ax.set_ylabel(YLABEL)
        loc_ax.set_title(f"{where}: localization at {layer}", fontsize=10)
        _x_axis(loc_ax, ks)
        if group.reference is None:
            if rho:
                empty_panel(rho[0], f"no {reference} scores for {where}:\ncorrelation not shown")
            continue
        (rho_ax,) = rho
        for i, sweep in enumerate(group.sweeps):
            _draw_sweep(rho_ax, sweep, lambda p: p.rho, annotate=i, errors=True)
        drawn = [p for s in group.sweeps for p in [*s.points, s.smoothgrad] if p is not None]
        values = [p.rho for p in drawn] + [p.rho_ci[0] for p in drawn if p.rho_ci is not None]
        finite = [v for v in values if v is not None and np.isfinite(v)]
        rho_ax.set_ylim(min([0.0, *finite]) - 0.1, 1.12)
        rho_ax.set_yticks([t for t in (-1.0, -0.5, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
                           if t >= min([0.0, *finite]) - 0.1])
        rho_ax.axhline(0.0, color="0.6", linewidth=0.6)
        rho_ax.set_ylabel("Spearman correlation")
        rho_ax.set_title(f"{where}: correlation with {group.reference.split('/', 2)[2]}",
                         fontsize=10)
        _x_axis(rho_ax, ks)
    fig.legend(handles=_legend(groups, bootstrap), loc="outside right center", fontsize=8,
               frameon=False)
    return fig


def _legend(groups: list[SweepGroup], bootstrap: BootstrapConfig) -> list:
    handles = []
    families = {s.family: s for g in groups for s in g.sweeps}
    for family, sweep in families.items():
        colour = method_colour(sweep.base)
        handles.append(Line2D([], [], color=colour, marker="o", markersize=4,
                              label=f"{family} (median)"))
        handles.append(Line2D([], [], color=colour, marker="s", linestyle="",
                              markeredgecolor="0.1", label=f"{sweep.base} (original, K = 1)"))
        chosen = {s.smoothgrad.spec for g in groups for s in g.sweeps
                  if s.family == family and s.smoothgrad is not None}
        if chosen:
            name = chosen.pop() if len(chosen) == 1 else f"smoothgrad-{sweep.base} (best)"
            handles.append(Line2D([], [], color=colour, linestyle="--", label=name))
    handles.append(Patch(facecolor="0.5", alpha=0.3, label="quartiles (25-75 %)"))
    if any(g.reference is not None for g in groups):
        handles.append(Line2D([], [], color="0.3", marker="_", markersize=6,
                              label=f"{100 * bootstrap.confidence:g} % CI of the correlation "
                                    "(grid images resampled)"))
    handles.append(Line2D([], [], label="perfect localization (1.0)", **GUIDE))
    handles.append(Line2D([], [], label=chance_label(g.n for g in groups), **GUIDE))
    return handles


def plot_smoothing(
    *,
    score_paths: list[Path],
    out: Path,
    fmt: str = "png",
    reference: str = "final/gradcam",
    layer: str = "input",
    bootstrap: BootstrapConfig | None = None,
) -> Path:
    """Write the smoothing-sweep figure to ``out``; returns the path."""
    fig = build_smoothing(
        score_paths=score_paths, reference=reference, layer=layer, bootstrap=bootstrap
    )
    return save_figure(fig, out, fmt)

