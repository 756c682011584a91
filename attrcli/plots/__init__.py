"""Figures of SPEC §4, drawn from artifacts alone (no model): one module per figure.

Each figure is a pair: ``build_<name>(...) -> Figure`` (for tests and notebooks) and
``plot_<name>(..., out, fmt) -> Path``, which builds it and writes it atomically.
"""

from attrcli.plots.aggatt import build_aggatt, plot_aggatt
from attrcli.plots.boxes import build_boxes, plot_boxes
from attrcli.plots.common import FORMATS, find_artifacts, output_path, save_figure
from attrcli.plots.correlation import build_correlation, plot_correlation
from attrcli.plots.examples import build_examples, plot_examples
from attrcli.plots.smoothing import build_smoothing, plot_smoothing

__all__ = [
    "FORMATS",
    "build_aggatt",
    "build_boxes",
    "build_correlation",
    "build_examples",
    "build_smoothing",
    "find_artifacts",
    "output_path",
    "plot_aggatt",
    "plot_boxes",
    "plot_correlation",
    "plot_examples",
    "plot_smoothing",
    "save_figure",
]
