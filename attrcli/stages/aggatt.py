"""The ``aggatt`` stage: AggAtt bin maps per key (supplement H.4), cached.

Takes attribution or score artifacts; scores are computed first where missing or stale. Writes
``<root>/aggatt/<key>.h5`` beside the attribution (or under ``cache_root``) and skips it when its
provenance records the same scores and config (:func:`attrcli.stages.caching.status_of`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.aggatt import MAX_SIZE, compute_aggatt, stored_size
from attrcli.metrics.selection import AttributionInfo, check_grid_sources, inspect_attribution, unique_paths
from attrcli.progress import Progress
from attrcli.stages.caching import UP_TO_DATE, StageResult, status_of
from attrcli.stages.score import SCORE_CONFIG, score_one
from attrcli.store import ArtifactKey, artifact_lock, content_hash, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance

if TYPE_CHECKING:
    import torch


def _attribution_for(path: Path) -> Path:
    """The attribution artifact behind an attribution or score artifact path."""
    key = ArtifactKey.from_path(path)
    if key.stage == "attributions":
        return path
    if key.stage == "scores":
        attribution = key.sibling("attributions", path)
        if not attribution.exists():
            raise UserError(
                f"{path}: its attribution {attribution} is missing (aggatt needs the maps)"
            )
        return attribution
    raise UserError(f"{path} is a {key.stage} artifact; give attribution or score artifacts")


def aggatt(
    *,
    paths: list[Path],
    cache_root: Path | None = None,
    cell: int = 0,
    max_size: int = MAX_SIZE,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    wait: bool = False,
) -> list[StageResult]:
    """AggAtt bin maps per key (supplement H.4) for the targets at ``cell``, cached.

    ``paths`` are attribution or score artifacts; scores are computed first where missing or
    stale. ``cell`` defaults to the top-left cell, the one the paper's figures show.
    """
    sources = [inspect_attribution(_attribution_for(Path(p))) for p in unique_paths(paths)]
    if not sources:
        raise UserError("no attribution or score artifacts given")
    for source in sources:
        if cell not in source.identity.cells:
            raise UserError(
                f"{source.key.label()} has no target at cell {cell}; evaluated cells: "
                f"{sorted(set(source.identity.cells.tolist()))} (choose one with --cell)"
            )
    check_grid_sources(sources)
    stored_size(sources[0].image_size, max_size)
    config = {
        "stage": "aggatt",
        "cell": cell,
        "max_size": max_size,
        "score": SCORE_CONFIG,
        "version": 1,
    }
    results = []
    for source in sources:
        root = Path(cache_root) if cache_root else source.root
        scored, attribution_hash = score_one(
            source, root, force=False, device=device, progress=progress, wait=wait
        )
        out_key = source.key.with_stage("aggatt")
        out = out_key.path(root)
        stored = read_artifact(scored.path, names=["scores", "numerators"]).data
        # the scores' content, not the file: recomputed intervals leave the AggAtt up to date
        inputs = {
            "attribution": attribution_hash,
            "scores": content_hash(stored["scores"], stored["numerators"]),
        }
        status = status_of(out, inputs, config, force)
        if status != UP_TO_DATE:
            with artifact_lock(out, wait=wait):
                _write_aggatt(
                    source,
                    scored.path,
                    out,
                    inputs=inputs,
                    config=config,
                    device=device,
                    progress=progress,
                )
        results.append(StageResult(out, out_key, status))
    return results


def _write_aggatt(
    source: AttributionInfo,
    score_path: Path,
    out: Path,
    *,
    inputs: dict,
    config: dict,
    device: torch.device | str,
    progress: Progress | None,
) -> None:
    """Compute one key's AggAtt from its maps and scores and write the artifact."""
    start = time.perf_counter()
    cell = config["cell"]
    scored = read_artifact(score_path, names=["scores", "numerators"])
    with h5py.File(source.path, "r") as handle:
        try:
            result = compute_aggatt(
                handle["maps"],
                scores=scored.data["scores"],
                numerators=scored.data["numerators"],
                cells=source.identity.cells,
                cell=cell,
                image_size=source.image_size,
                max_size=config["max_size"],
                device=device,
                progress=progress,
                label=f"aggatt {source.key.label()}",
            )
        except UserError as exc:
            raise UserError(f"{source.path}: {exc}") from None
    t = source.shape[1]
    median_row = np.where(result.median >= 0, source.identity.grid_index[result.median // t], -1)
    write_artifact(
        out,
        data={
            "bins": result.bins,
            "edges": result.edges,
            "bounds": result.bounds,
            "counts": result.counts,
            "median_index": result.median,
            "median_row": median_row,
            "median_slot": np.where(result.median >= 0, result.median % t, -1),
            "median_score": result.median_score,
            "slots": result.slots,
        },
        attrs={
            "grids": source.key.grids,
            "setting": source.key.setting,
            "model": source.key.model,
            "layer": source.key.layer,
            "method": source.key.method,
            "n": source.n,
            "image_size": source.image_size,
            "cell": cell,
            "normaliser": result.normaliser,
            "grid_path": source.attrs.get("grid_path", ""),
            "attribution": str(source.path),
        },
        provenance=make_provenance(
            config=config, inputs=inputs, device=str(device), seconds=time.perf_counter() - start
        ),
    )
