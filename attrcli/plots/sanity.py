"""Model-randomisation curves (the layout of Adebayo et al., NeurIPS 2018, Fig. 2).

One panel per model, setting and layer: the similarity of each method's maps to the trained
model's maps (a measure of :data:`attrcli.stages.sanity.MEASURES`, Spearman by default)
against the randomisation depth on the x axis (``trained``, then the head, then the stages top
down), one line per method with its bootstrap interval shaded. A method that passes the check
falls towards 0 as more of the model is randomised; a line that stays at 1 does not depend on
the model (the ``random`` and ``centre`` baselines, drawn dashed). Drawn from sanity artifacts
(``attrcli sanity``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from attrcli.errors import UserError
from attrcli.plots.common import method_colours, new_figure, order_layers, order_methods, order_settings, save_figure
from attrcli.store import read_artifact

#: Baselines that ignore the model, drawn dashed: the reference a failing method looks like.
MODEL_FREE = ("random", "centre")
LABELS = {
    "spearman": "Spearman rank correlation",
    "spearman_abs": "Spearman rank correlation (absolute maps)",
    "ssim": "SSIM (upsampled absolute maps)",
    "score_change": "localization score change",
}


def plot_sanity(*, sanity_paths: list[Path], out: Path, measure: str = "spearman", fmt: str = "png") -> Path:
    """Draw the randomisation curves of the given sanity artifacts to ``out``; returns ``out``."""
    if measure not in LABELS:
        raise UserError(f"unknown measure {measure!r}; valid: {', '.join(LABELS)}")
    if not sanity_paths:
        raise UserError("no sanity artifacts to plot")
    curves: dict[tuple[str, str, str], dict[str, tuple[list[str], np.ndarray, np.ndarray]]] = {}
    modes = set()
    for path in sanity_paths:
        artifact = read_artifact(path, names=["means", "intervals"])
        row = list(artifact.attrs["measures"]).index(measure)
        setting, model, layer, method = str(artifact.attrs["key"]).split("/", 3)
        modes.add(str(artifact.attrs["mode"]))
        steps = list(artifact.attrs["steps"])
        curves.setdefault((model, setting, layer), {})[method] = (
            steps, artifact.data["means"][row], artifact.data["intervals"][row]
        )
    settings = order_settings({k[1] for k in curves})
    layers = order_layers({k[2] for k in curves})
    panels = sorted(curves, key=lambda k: (k[0], settings.index(k[1]), layers.index(k[2])))
    colours = method_colours({m for lines in curves.values() for m in lines})
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(4.2 * columns, 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        model, setting, layer = panel
        for method in order_methods(curves[panel]):
            steps, means, bounds = curves[panel][method]
            x = np.arange(len(steps))
            model_free = method.partition(":")[0].partition("@")[0] in MODEL_FREE
            ax.plot(x, means, marker="o", ms=3, color=colours[method], label=method,
                    linestyle="--" if model_free else "-")
            ax.fill_between(x, bounds[:, 0], bounds[:, 1], color=colours[method], alpha=0.2, lw=0)
        ax.set_xticks(np.arange(len(steps)), steps, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{model} · {setting} · {layer}", fontsize=9)
        ax.axhline(0.0, color="grey", lw=0.6, ls=":")
        if measure != "score_change":
            ax.set_ylim(-0.25 if measure != "ssim" else -0.1, 1.05)
        ax.set_ylabel(LABELS[measure], fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{' / '.join(sorted(modes))} randomisation, trained model first", fontsize=10)
    return save_figure(fig, out, fmt)
