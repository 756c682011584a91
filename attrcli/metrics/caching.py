"""What the analysis stages share: statuses, the staleness check, and scoring one attribution.

An output is up to date when its provenance records the same input hashes and config as a run
now would; otherwise it is stale and recomputed. ``force`` recomputes anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch

from attrcli.errors import UserError
from attrcli.metrics.localization import Progress, localization_scores
from attrcli.metrics.selection import AttributionInfo
from attrcli.store import ArtifactKey, artifact_lock, file_hash, read_provenance, write_artifact
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


def score_one(
    source: AttributionInfo,
    root: Path,
    *,
    force: bool,
    device: torch.device | str,
    progress: Progress | None,
    wait: bool,
) -> tuple[StageResult, str]:
    """Score one attribution (or find its score up to date); also returns the attribution hash."""
    out_key = source.key.with_stage("scores")
    out = out_key.path(root)
    inputs = {"attribution": file_hash(source.path)}
    status = status_of(out, inputs, SCORE_CONFIG, force)
    if status != UP_TO_DATE:
        with artifact_lock(out, wait=wait):
            start = time.perf_counter()
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
            write_artifact(
                out,
                data={
                    "scores": scores,
                    "numerators": numerators,
                    "grid_index": source.identity.grid_index,
                    "cells": source.identity.cells,
                    "heads": source.identity.heads,
                },
                attrs=attrs,
                provenance=make_provenance(
                    config=SCORE_CONFIG,
                    inputs=inputs,
                    device=str(device),
                    seconds=time.perf_counter() - start,
                ),
            )
    return StageResult(out, out_key, status), inputs["attribution"]
