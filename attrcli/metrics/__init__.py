"""Metrics on attribution maps: localization score, AggAtt, Spearman correlation, intervals.

The computations (``localization``, ``aggatt``, ``correlation``, and ``intervals`` for bootstrap
intervals and paired tests) work on arrays; ``selection`` finds and checks input artifacts on
disk, ``scoresets`` the keys a cross-key stage reads, ``summary`` reads score artifacts back.
The stages that write artifacts with caching live in :mod:`attrcli.stages`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives; the submodule is imported on first use, so that importing one
#: light module of the package (``attrcli.metrics.selection``) does not load torch and scipy.
_HOME = {
    "EDGES": "aggatt",
    "AggAtt": "aggatt",
    "bin_bounds": "aggatt",
    "compute_aggatt": "aggatt",
    "sort_order": "aggatt",
    "check_comparable": "correlation",
    "spearman": "correlation",
    "PERFECT": "intervals",
    "BootstrapConfig": "intervals",
    "compare_keys": "intervals",
    "holm": "intervals",
    "score_intervals": "intervals",
    "spearman_intervals": "intervals",
    "wilcoxon_test": "intervals",
    "localization_scores": "localization",
    "upsample_positive": "localization",
    "select_keys": "selection",
    "split_methods": "selection",
    "ScoreSummary": "summary",
    "summarize": "summary",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'attrcli.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"attrcli.metrics.{_HOME[name]}"), name)
