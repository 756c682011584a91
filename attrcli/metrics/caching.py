"""What the analysis stages share: statuses, the staleness check, and scoring one attribution.

An output is up to date when its provenance records the same input hashes and config as a run
now would; otherwise it is stale and recomputed. ``force`` recomputes anyway. A score
artifact's config includes its intervals' (confidence, resamples, method, seed), so changing
them recomputes the intervals, from the stored scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch

from attrcli.errors import UserError
from attrcli.metrics.intervals import SCORE_STATISTICS, BootstrapConfig, score_intervals
from attrcli.metrics.localization import Progress, localization_scores
from attrcli.metrics.selection import AttributionInfo
from attrcli.store import (
    ArtifactKey,
    artifact_lock,
    file_hash,
    read_artifact,
    read_provenance,
    write_artifact,
)
from attrcli.store.artifacts import make_provenance

COMPUTED = "computed"
UP_TO_DATE = "up to date"
STALE = "stale, recomputed"
FORCED = "forced, recomputed"

SCORE_CONFIG = {
    "metric": "localization",
    "upsample": "bilinear",
    "align_corners": False,
    "negatives": "dropped after upsampling",
    "version": 1,
}


@dataclass(frozen=True)
class StageResult:
    """One artifact a stage produced or found up to date."""

    path: Path
    key: ArtifactKey
    status: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "key": self.key.label(), "status": self.status}


def status_of(out: Path, inputs: dict, config: dict, force: bool) -> str:
    """How an output stands against the inputs and config it would be computed from now."""
    if not out.exists():
        return COMPUTED
    if force:
        return FORCED
    try:
        record = read_provenance(out)
    except UserError:
        return STALE
    same = record.get("inputs") == inputs and record.get("config") == config
    return UP_TO_DATE if same else STALE


def score_config(bootstrap: BootstrapConfig) -> dict:
    """The config a score artifact records: the metric's and its intervals'."""
    return {**SCORE_CONFIG, "intervals": bootstrap.to_dict()}


def _score_status(
    out: Path, inputs: dict, bootstrap: BootstrapConfig | None, force: bool
) -> tuple[str, bool]:
    """The status of a score artifact, and whether only its intervals need recomputing."""
    status = status_of(out, inputs, score_config(bootstrap or BootstrapConfig()), force)
    if status != STALE:
        return status, False
    try:
        record = read_provenance(out)
    except UserError:
        return STALE, False
    config = dict(record.get("config", {}))
    config.pop("intervals", None)
    if record.get("inputs") != inputs or config != SCORE_CONFIG:
        return STALE, False
    if bootstrap is None:  # the caller needs the scores only: any intervals will do
        return UP_TO_DATE, False
    return STALE, True


def score_one(
    source: AttributionInfo,
    root: Path,
    *,
    force: bool,
    device: torch.device | str,
    progress: Progress | None,
    wait: bool,
    bootstrap: BootstrapConfig | None = None,
) -> tuple[StageResult, str]:
    """Score one attribution (or find its score up to date); also returns the attribution hash.

    The score artifact holds the intervals of :func:`~attrcli.metrics.intervals.score_intervals`
    under ``bootstrap``. With ``bootstrap=None`` (stages that need only the scores) an artifact
    with any intervals is up to date, and one computed now gets the default intervals. When only
    the interval config changed, the intervals are recomputed from the stored scores (no maps
    are read).
    """
    out_key = source.key.with_stage("scores")
    out = out_key.path(root)
    inputs = {"attribution": file_hash(source.path)}
    status, intervals_only = _score_status(out, inputs, bootstrap, force)
    if status == UP_TO_DATE:
        return StageResult(out, out_key, status), inputs["attribution"]
    bootstrap = bootstrap or BootstrapConfig()
    with artifact_lock(out, wait=wait):
        start = time.perf_counter()
        if intervals_only:
            try:
                stored = read_artifact(out)
            except UserError:
                intervals_only = False
        if intervals_only:
            data = {k: v for k, v in stored.data.items() if k != "intervals"}
            attrs = dict(stored.attrs)
        else:
            data, attrs = _compute_scores(source, device, progress)
        data["intervals"] = score_intervals(data["scores"], bootstrap)
        attrs.update(interval_statistics=list(SCORE_STATISTICS), **bootstrap.attrs())
        write_artifact(
            out,
            data=data,
            attrs=attrs,
            provenance=make_provenance(
                config=score_config(bootstrap),
                inputs=inputs,
                seed=bootstrap.seed,
                device=str(device),
                seconds=time.perf_counter() - start,
            ),
        )
    return StageResult(out, out_key, status), inputs["attribution"]


def _compute_scores(
    source: AttributionInfo, device: torch.device | str, progress: Progress | None
) -> tuple[dict, dict]:
    """The datasets and attributes of a score artifact, from the attribution's maps."""
    with h5py.File(source.path, "r") as handle:
        try:
            scores, numerators = localization_scores(
                handle["maps"],
                cells=source.identity.cells,
                n=source.n,
                image_size=source.image_size,
                device=device,
                progress=progress,
                label=f"score {source.key.label()}",
            )
        except UserError as exc:
            raise UserError(f"{source.path}: {exc}") from None
    attrs = dict(source.attrs)
    attrs.update(
        grids=source.key.grids,
        setting=source.key.setting,
        model=source.key.model,
        layer=source.key.layer,
        method=source.key.method,
        grids_hash=source.identity.grids_hash,
        attribution=str(source.path),
    )
    data = {
        "scores": scores,
        "numerators": numerators,
        "grid_index": source.identity.grid_index,
        "cells": source.identity.cells,
        "heads": source.identity.heads,
    }
    return data, attrs
