"""The study's vocabulary, importable without torch: what help texts, tables and figures list.

The registries (``attrcli.settings.SETTINGS``, ``attrcli.methods.METHODS``) are the authority;
these names mirror them for code that must not import torch just to print a help text, and a
test keeps the two equal (a setting or paper method registered but missing here fails it).
"""

from __future__ import annotations

#: The paper's three settings, in the order tables and figures show them.
PAPER_SETTINGS = ("gridpg", "difull", "dipart")
#: Every registered setting: the paper's, then attrcli's own.
SETTINGS = (*PAPER_SETTINGS, "gridpg-rescaled")
#: The named layers of every model, shallow to deep.
LAYERS = ("input", "middle", "final")
#: The paper's methods in its display order (supplement Fig. 9); other methods follow, sorted.
PAPER_METHODS = (
    "grad", "guided-backprop", "ixg", "intgrad", "gradcam", "gradcam++", "layercam",
    "ablationcam", "scorecam", "occlusion", "rise",
)


def listed(names: tuple[str, ...] | list[str], last: str = "or") -> str:
    """``a, b or c``: names for a help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"



#: The registered datasets grids are built from (``attrcli.data.datasets.DATASETS``), sorted.
DATASETS = ("cifar10", "digits", "folder", "imagenet")
#: The grid variants: n² distinct classes (GridPG), one class in two corners (DiFull, DiPart).
GRID_VARIANTS = ("distinct", "corners")


#: Selects every value of a key part (``--setting all``).
ALL = "all"
#: Bootstrap interval methods (:mod:`attrcli.metrics.intervals`).
INTERVAL_METHODS = ("percentile", "bca")
#: The paired test of ``compare`` and its correction for multiple comparisons.
PAIRED_TEST = "Wilcoxon signed-rank on per-grid-image mean differences (zero differences dropped)"
CORRECTION = "holm"
#: AggAtt maps are averaged at most this many pixels a side (:mod:`attrcli.metrics.aggatt`).
AGGATT_MAX_SIZE = 224
#: Figure formats ``plot`` writes.
FIGURE_FORMATS = ("png", "pdf", "svg")
