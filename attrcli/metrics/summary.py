"""Per-key summaries of score artifacts: the numbers behind the tables and box plots."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.intervals import PERFECT, SCORE_STATISTICS
from attrcli.metrics.selection import unique_paths
from attrcli.store import ArtifactKey, read_artifact

NAN_PAIR = (float("nan"), float("nan"))


def _clean(value):
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class ScoreSummary:
    """Distribution of one key's localization scores, with bootstrap intervals where stored."""

    path: str
    grids: str
    setting: str
    model: str
    layer: str
    method: str
    count: int
    median: float
    q1: float
    q3: float
    mean: float
    perfect: float  # share of scores >= PERFECT
    chance: float  # 1 / n**2, the score of a uniform map
    median_ci: tuple[float, float] = NAN_PAIR  # (low, high); NaN when not stored
    mean_ci: tuple[float, float] = NAN_PAIR
    perfect_ci: tuple[float, float] = NAN_PAIR
    pointing: float = float("nan")  # pointing-game hit rate; NaN for artifacts without hits
    pointing_ci: tuple[float, float] = NAN_PAIR
    confidence: float | None = None  # level of the intervals; None when the artifact has none
    interval_method: str | None = None
    resamples: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _attr(attrs: dict, name: str, kind: type, has: bool):
    """An interval attribute as ``kind``, None when the artifact has no intervals or lacks it."""
    return kind(attrs[name]) if has and name in attrs else None


def stored_intervals(artifact) -> dict[str, tuple[float, float]]:
    """The intervals a read score artifact holds, by statistic (empty if it has none)."""
    values = artifact.data.get("intervals")
    names = artifact.attrs.get("interval_statistics", list(SCORE_STATISTICS))
    if values is None or np.shape(values) != (len(names), 2):
        return {}
    return {name: (float(low), float(high)) for name, (low, high) in zip(names, values)}


def summarize(score_paths: list[Path]) -> list[ScoreSummary]:
    """Median, quartiles, mean and share of perfect scores per score artifact, with intervals.

    Quartiles are numpy's linear-interpolation percentiles. "Perfect" means ``>= 1 - 1e-9``. The
    intervals are those stored by ``score`` (grid images resampled); NaN when absent. The
    pointing game's hit rate is the share of attributions whose map peaks in the target cell
    (dataset ``pointing``), with its stored interval; NaN for artifacts written before it.
    """
    rows = []
    for path in unique_paths(score_paths):
        key = ArtifactKey.from_path(path)
        if key.stage != "scores":
            raise UserError(f"{path} is a {key.stage} artifact; expected a score artifact")
        artifact = read_artifact(path)
        if "scores" not in artifact.data:
            raise UserError(f"{path} lacks dataset scores")
        values = np.asarray(artifact.data["scores"], dtype=np.float64).ravel()
        stats = (
            np.percentile(values, [50, 25, 75]).tolist() + [values.mean()]
            if values.size
            else [np.nan] * 4
        )
        n = int(artifact.attrs.get("n", 0))
        intervals = stored_intervals(artifact)
        has = bool(intervals)
        hits = artifact.data.get("pointing")
        hit_rate = float(np.mean(hits)) if hits is not None and np.size(hits) else float("nan")
        stored_ci = artifact.data.get("pointing_interval")
        hit_ci = NAN_PAIR
        if stored_ci is not None and np.shape(stored_ci) == (2,):
            hit_ci = (float(stored_ci[0]), float(stored_ci[1]))
        rows.append(
            ScoreSummary(
                path=str(path),
                grids=key.grids,
                setting=key.setting,
                model=key.model,
                layer=key.layer,
                method=key.method,
                count=int(values.size),
                median=float(stats[0]),
                q1=float(stats[1]),
                q3=float(stats[2]),
                mean=float(stats[3]),
                perfect=float((values >= PERFECT).mean()) if values.size else float("nan"),
                chance=1.0 / n**2 if n else float("nan"),
                median_ci=intervals.get("median", NAN_PAIR),
                mean_ci=intervals.get("mean", NAN_PAIR),
                perfect_ci=intervals.get("perfect", NAN_PAIR),
                pointing=hit_rate,
                pointing_ci=hit_ci,
                confidence=_attr(artifact.attrs, "confidence", float, has),
                interval_method=_attr(artifact.attrs, "interval_method", str, has),
                resamples=_attr(artifact.attrs, "resamples", int, has),
                seed=_attr(artifact.attrs, "bootstrap_seed", int, has),
            )
        )
    return rows
