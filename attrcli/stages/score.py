"""The ``score`` stage: localization scores of attributions (supplement H.3), cached.

Each attribution ``<root>/attributions/<key>.h5`` gets ``<root>/scores/<key>.h5`` (the cache
folder defaults to the one the attribution lives in, so stages chained by pipes stay together).
A score artifact's config includes its intervals' (confidence, resamples, method, seed), so
changing them recomputes the intervals only, from the stored scores. Beside the scores it holds
the pointing-game hit of every attribution (dataset ``pointing``, uint8 0/1 in the order of
``scores``; the tie rule is :mod:`attrcli.metrics.localization`'s) and the interval of the hit
rate (``pointing_interval``). The stages that relate
keys (``aggatt``, ``correlate``, ``compare``) score what they need through :func:`score_one`
and :func:`load_scores`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.intervals import (
    SCORE_STATISTICS,
    BootstrapConfig,
    mean_interval,
    score_intervals,
)
from attrcli.metrics.localization import localization_scores
from attrcli.metrics.selection import (
    AttributionInfo,
    ScoreInput,
    check_grid_sources,
    inspect_attribution,
    unique_paths,
)
from attrcli.progress import Progress
from attrcli.stages.caching import STALE, UP_TO_DATE, StageResult, status_of
from attrcli.store import ArtifactKey, artifact_lock, file_hash, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.freshness import FRESH, freshness

if TYPE_CHECKING:
    import torch

SCORE_CONFIG = {
    "metric": "localization",
    "upsample": "bilinear",
    "align_corners": False,
    "negatives": "dropped after upsampling",
    "pointing": "hit: positive maximum of the upsampled map, reached inside the target cell only",
    "version": 1,
}
#: The statistics ``compare`` and ``correlate`` can read from a score artifact: its dataset.
STATISTICS = {"score": "scores", "pointing": "pointing"}


def score(
    *,
    attribution_paths: list[Path],
    cache_root: Path | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    wait: bool = False,
    bootstrap: BootstrapConfig | None = None,
) -> list[StageResult]:
    """Localization scores and numerators of every attribution (supplement H.3), cached.

    Writes ``<cache_root>/scores/<key>.h5`` per attribution; ``cache_root`` defaults to the cache
    folder each attribution lives in. Each artifact also holds the bootstrap intervals of the
    median, the mean and the share of perfect scores (``bootstrap``, default
    :class:`BootstrapConfig()`); a change of that config recomputes the intervals only. All
    inputs are checked before anything is written.
    """
    sources = [inspect_attribution(Path(p)) for p in unique_paths(attribution_paths)]
    if not sources:
        raise UserError("no attribution artifacts given")
    check_grid_sources(sources)
    bootstrap = bootstrap or BootstrapConfig()
    return [
        score_one(
            s,
            Path(cache_root) if cache_root else s.root,
            force=force,
            device=device,
            progress=progress,
            wait=wait,
            bootstrap=bootstrap,
        )[0]
        for s in sources
    ]


def score_config(bootstrap: BootstrapConfig) -> dict:
    """The config a score artifact records: the metric's and its intervals'."""
    return {**SCORE_CONFIG, "intervals": bootstrap.to_dict()}


def _without_intervals(record: dict) -> dict:
    config = dict(record.get("config", {}))
    config.pop("intervals", None)
    return {**record, "config": config}


def _score_status(
    out: Path, inputs: dict, bootstrap: BootstrapConfig | None, force: bool
) -> tuple[str, bool]:
    """The status of a score artifact, and whether only its intervals need recomputing."""
    status = status_of(out, inputs, score_config(bootstrap or BootstrapConfig()), force)
    if status != STALE:
        return status, False
    scores_fresh = freshness(
        out, {"inputs": inputs, "config": SCORE_CONFIG}, recorded=_without_intervals
    )
    if scores_fresh.state != FRESH:
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
        if intervals_only and "pointing" not in stored.data:
            intervals_only = False
        if intervals_only:
            data = {k: v for k, v in stored.data.items() if k not in ("intervals", "pointing_interval")}
            attrs = dict(stored.attrs)
        else:
            data, attrs = _compute_scores(source, device, progress)
        data["intervals"] = score_intervals(data["scores"], bootstrap)
        data["pointing_interval"] = mean_interval(data["pointing"].astype(np.float64), bootstrap)
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
            scores, numerators, hits = localization_scores(
                handle["maps"],
                cells=source.identity.cells,
                n=source.n,
                image_size=source.image_size,
                device=device,
                progress=progress,
                label=f"score {source.key.label()}",
                pointing=True,
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
        "pointing": hits,
    }
    return data, attrs


def load_scores(
    items: list[ScoreInput],
    *,
    device: torch.device | str,
    progress: Progress | None,
    wait: bool,
    statistic: str = "score",
) -> dict[ArtifactKey, np.ndarray]:
    """Each key's float64 ``(N, T)`` scores (``statistic="pointing"``: pointing-game hits as 0.0
    or 1.0), computing missing or stale ones first (their intervals are not needed here)."""
    if statistic not in STATISTICS:
        raise UserError(f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
    dataset = STATISTICS[statistic]
    files = {
        item.key: item.scores
        if item.attribution is None
        else score_one(
            item.attribution, item.root, force=False, device=device, progress=progress, wait=wait
        )[0].path
        for item in items
    }
    out = {}
    for key, path in files.items():
        try:
            values = read_artifact(path, names=[dataset]).data[dataset]
        except UserError as exc:
            raise UserError(f"{exc} (score it again: attrcli score {path})") from None
        out[key] = np.asarray(values, dtype=np.float64)
    return out
