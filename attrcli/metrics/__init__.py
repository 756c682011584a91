"""Metrics on attribution maps: localization score, AggAtt, Spearman correlation, and the stages.

The computations (``localization``, ``aggatt``, ``correlation``) work on arrays; the stages
(``stages``) read and write artifacts with caching; ``selection`` finds keys on disk.
"""

from attrcli.metrics.aggatt import EDGES, AggAtt, bin_bounds, compute_aggatt, sort_order
from attrcli.metrics.correlation import check_comparable, spearman
from attrcli.metrics.localization import localization_scores, upsample_positive
from attrcli.metrics.selection import select_keys, split_methods
from attrcli.metrics.stages import (
    COMPUTED,
    FORCED,
    PERFECT,
    STALE,
    UP_TO_DATE,
    CorrelationResult,
    ScoreSummary,
    StageResult,
    aggatt,
    correlate,
    score,
    summarize,
)

__all__ = [
    "COMPUTED",
    "EDGES",
    "FORCED",
    "PERFECT",
    "STALE",
    "UP_TO_DATE",
    "AggAtt",
    "CorrelationResult",
    "ScoreSummary",
    "StageResult",
    "aggatt",
    "bin_bounds",
    "check_comparable",
    "compute_aggatt",
    "correlate",
    "localization_scores",
    "score",
    "select_keys",
    "sort_order",
    "spearman",
    "split_methods",
    "summarize",
    "upsample_positive",
]
