"""The ``correlate`` stage: Spearman correlation of per-attribution scores between keys
(supplement C, Tables 1-2), with bootstrap intervals, cached.

Writes ``<root>/correlations/<name>.h5`` (:class:`~attrcli.store.keys.CorrelationKey`) and skips
it when its provenance records the same scores and config. ``statistic="pointing"`` correlates
the pointing-game hits (0 or 1 per attribution) instead of the localization scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.correlation import spearman
from attrcli.metrics.intervals import BootstrapConfig, spearman_intervals
from attrcli.metrics.scoresets import (
    check_inputs,
    check_name,
    default_name,
    score_inputs,
    scores_hashes,
)
from attrcli.metrics.selection import resolve_reference, score_input
from attrcli.progress import Progress
from attrcli.stages.caching import UP_TO_DATE, status_of
from attrcli.stages.score import STATISTICS, load_scores
from attrcli.store import ArtifactKey, artifact_lock, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.keys import CorrelationKey

if TYPE_CHECKING:
    import torch


@dataclass
class CorrelationResult:
    """A Spearman matrix between row keys and column keys, its intervals, and where it is stored."""

    path: Path
    name: str
    status: str
    rows: list[str]
    columns: list[str]
    matrix: np.ndarray  # float64 (len(rows), len(columns)); NaN where a score vector is constant
    count: int  # attributions per key
    reference: str | None = None
    low: np.ndarray | None = None  # bootstrap interval bounds, shaped as ``matrix``
    high: np.ndarray | None = None
    bootstrap: BootstrapConfig | None = None
    statistic: str = "score"  # what is correlated: localization scores, or pointing-game hits

    def to_dict(self) -> dict:
        def plain(array: np.ndarray | None) -> list | None:
            if array is None:
                return None
            return [[None if np.isnan(v) else float(v) for v in row] for row in array]

        return {
            "path": str(self.path),
            "name": self.name,
            "status": self.status,
            "rows": self.rows,
            "columns": self.columns,
            "matrix": plain(self.matrix),
            "low": plain(self.low),
            "high": plain(self.high),
            "intervals": self.bootstrap.to_dict() if self.bootstrap else None,
            "count": self.count,
            "reference": self.reference,
            "statistic": self.statistic,
        }


def correlate(
    *,
    score_paths: list[Path] | None = None,
    keys: list[ArtifactKey] | None = None,
    reference: str | None = None,
    name: str | None = None,
    cache_root: Path | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    wait: bool = False,
    bootstrap: BootstrapConfig | None = None,
    statistic: str = "score",
) -> CorrelationResult:
    """Spearman correlation of per-attribution scores between keys (supplement C), cached.

    Takes score (or attribution) artifact paths, or keys resolved under ``cache_root``; missing or
    stale scores are computed first. Without ``reference`` the result is the square matrix over
    the keys; with ``reference`` (``layer/method`` or ``setting/model/layer/method``, relative to
    the first key) it is one row: the reference against every key, the shape of the
    supplement's Tables 1-2 (Grad-CAM at the final layer against S-IntGrad at the input, per K).
    Every coefficient gets a bootstrap interval (``bootstrap``), the same grid images drawn for
    both keys. Writes ``<cache_root>/correlations/<name>.h5``; the default name is
    ``<grids>.<setting>.<model>.<hash of the key labels>`` (``.pointing`` appended for
    ``statistic="pointing"``, which correlates pointing-game hits instead of scores).
    """
    check_name(name, "correlation")
    if statistic not in STATISTICS:
        raise UserError(f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
    bootstrap = bootstrap or BootstrapConfig()
    columns = score_inputs(score_paths, keys, cache_root, verb="correlate")
    rows = columns
    if reference is not None:
        first = columns[0]
        ref_key = resolve_reference(reference, first.key)
        ref_path = ref_key.with_stage("attributions").path(
            first.attribution.root if first.attribution else first.root
        )
        if not ref_path.exists():
            ref_path = ref_key.path(first.root)
        try:
            rows = [score_input(ref_path, cache_root)]
        except UserError as exc:
            raise UserError(f"reference {reference}: {exc}") from None
    everyone = list({item.key: item for item in rows + columns}.values())
    check_inputs(everyone, "correlate")

    row_labels = [item.key.label() for item in rows]
    col_labels = [item.key.label() for item in columns]
    root = Path(cache_root) if cache_root else columns[0].root
    if name is None:
        name = default_name([i.key for i in everyone], row_labels, col_labels)
        name += "" if statistic == "score" else f".{statistic}"
    out = CorrelationKey(name).path(root)
    scores = load_scores(everyone, device=device, progress=progress, wait=wait, statistic=statistic)
    inputs = scores_hashes(scores)
    config = {
        "stage": "correlate",
        "coefficient": "spearman",
        "rows": row_labels,
        "columns": col_labels,
        "intervals": bootstrap.to_dict(),
        "version": 2,
    }
    if statistic != "score":  # score correlations keep the config they always had
        config["statistic"] = statistic
    status = status_of(out, inputs, config, force)
    if status == UP_TO_DATE:
        stored = read_artifact(out, names=["matrix", "low", "high"])
        matrix, count = stored.data["matrix"], int(stored.attrs["count"])
        low, high = stored.data["low"], stored.data["high"]
    else:
        start = time.perf_counter()
        row_scores = np.stack([scores[i.key] for i in rows])
        col_scores = None if reference is None else np.stack([scores[i.key] for i in columns])
        count = row_scores[0].size
        matrix = spearman(
            row_scores.reshape(len(rows), -1),
            None if col_scores is None else col_scores.reshape(len(columns), -1),
        )
        bounds = spearman_intervals(row_scores, col_scores, bootstrap)
        low, high = bounds[..., 0], bounds[..., 1]
        with artifact_lock(out, wait=wait):
            write_artifact(
                out,
                data={"matrix": matrix, "low": low, "high": high},
                attrs={
                    "rows": row_labels,
                    "columns": col_labels,
                    "reference": reference or "",
                    "count": count,
                    "statistic": statistic,
                    **bootstrap.attrs(),
                },
                provenance=make_provenance(
                    config=config,
                    inputs=inputs,
                    seed=bootstrap.seed,
                    device="cpu",
                    seconds=time.perf_counter() - start,
                ),
            )
    return CorrelationResult(
        out, name, status, row_labels, col_labels, matrix, count, reference, low, high, bootstrap, statistic
    )
