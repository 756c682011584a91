"""Metrics on attribution maps: localization score, AggAtt, Spearman correlation, and the stages.

The computations (``localization``, ``aggatt``, ``correlation``, and ``intervals`` for bootstrap
intervals and paired tests) work on arrays; the stages (``stages``, with ``comparison``) read and
write artifacts with caching; ``selection`` finds keys on disk.
"""

from attrcli.metrics.aggatt import EDGES, AggAtt, bin_bounds, compute_aggatt, sort_order
from attrcli.metrics.correlation import check_comparable, spearman
from attrcli.metrics.intervals import (
    BootstrapConfig,
    compare_keys,
    holm,
    score_intervals,
    spearman_intervals,
    wilcoxon_test,
)
from attrcli.metrics.localization import localization_scores, upsample_positive
from attrcli.metrics.selection import select_keys, split_methods
from attrcli.metrics.stages import (
    COMPUTED,
    FORCED,
    PERFECT,
    STALE,
    UP_TO_DATE,
    ComparisonResult,
    CorrelationResult,
    ScoreSummary,
    StageResult,
    aggatt,
    compare,
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
    "BootstrapConfig",
    "ComparisonResult",
    "CorrelationResult",
    "ScoreSummary",
    "StageResult",
    "aggatt",
    "bin_bounds",
    "check_comparable",
    "compare",
    "compare_keys",
    "compute_aggatt",
    "correlate",
    "holm",
    "localization_scores",
    "score",
    "score_intervals",
    "select_keys",
    "sort_order",
    "spearman",
    "spearman_intervals",
    "split_methods",
    "summarize",
    "upsample_positive",
    "wilcoxon_test",
]
