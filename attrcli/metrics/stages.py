"""The analysis stages on artifacts: ``score``, ``aggatt``, ``correlate``, ``compare``.

Each stage reads artifacts, writes its own under the cache folder (``docs/artifacts.md``) and
returns what it did; none prints. A stage records the content hashes of its inputs and its
config in the provenance, skips an output whose record matches ("up to date"), recomputes one
that does not ("stale, recomputed"), and recomputes anything with ``force``. All inputs are
checked before anything is written.

The cache folder defaults to the one the input artifacts live in
(``<root>/attributions/...`` -> ``<root>/scores/...``), so stages chained by pipes stay together.
Intervals and tests (:mod:`attrcli.metrics.intervals`) resample grid images; their config
(:class:`~attrcli.metrics.intervals.BootstrapConfig`) is part of each artifact's config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from attrcli.errors import UserError
from attrcli.metrics.aggatt import MAX_SIZE, compute_aggatt, stored_size
from attrcli.metrics.caching import (
    COMPUTED,
    FORCED,
    SCORE_CONFIG,
    STALE,
    UP_TO_DATE,
    StageResult,
    score_one,
    status_of,
)
from attrcli.metrics.comparison import ComparisonResult, compare
from attrcli.metrics.correlation import spearman
from attrcli.metrics.intervals import PERFECT, BootstrapConfig, spearman_intervals
from attrcli.metrics.localization import Progress
from attrcli.metrics.scoresets import (
    check_inputs,
    check_name,
    default_name,
    load_scores,
    score_inputs,
    scores_hashes,
)
from attrcli.metrics.selection import (
    AttributionInfo,
    cache_root_of,
    check_grid_sources,
    inspect_attribution,
    resolve_reference,
    score_input,
    unique_paths,
)
from attrcli.metrics.summary import ScoreSummary, summarize
from attrcli.store import (
    ArtifactKey,
    artifact_lock,
    content_hash,
    read_artifact,
    write_artifact,
)
from attrcli.store.artifacts import make_provenance

__all__ = [
    "COMPUTED",
    "FORCED",
    "PERFECT",
    "SCORE_CONFIG",
    "STALE",
    "UP_TO_DATE",
    "BootstrapConfig",
    "ComparisonResult",
    "CorrelationResult",
    "ScoreSummary",
    "StageResult",
    "aggatt",
    "compare",
    "correlate",
    "score",
    "summarize",
]


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
    :class:`BootstrapConfig()`); a change of that config recomputes the intervals only.
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


def _attribution_for(path: Path) -> Path:
    """The attribution artifact behind an attribution or score artifact path."""
    key = ArtifactKey.from_path(path)
    if key.stage == "attributions":
        return path
    if key.stage == "scores":
        attribution = key.with_stage("attributions").path(cache_root_of(path))
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
) -> CorrelationResult:
    """Spearman correlation of per-attribution scores between keys (supplement C), cached.

    Takes score (or attribution) artifact paths, or keys resolved under ``cache_root``; missing or
    stale scores are computed first. Without ``reference`` the result is the square matrix over
    the keys; with ``reference`` (``layer/method`` or ``setting/model/layer/method``, relative to
    the first key) it is one row: the reference against every key, the shape of the
    supplement's Tables 1-2 (Grad-CAM at the final layer against S-IntGrad at the input, per K).
    Every coefficient gets a bootstrap interval (``bootstrap``), the same grid images drawn for
    both keys. Writes ``<cache_root>/correlations/<name>.h5``; the default name is
    ``<grids>.<setting>.<model>.<hash of the key labels>``.
    """
    check_name(name, "correlation")
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

    scores = load_scores(everyone, device=device, progress=progress, wait=wait)
    row_labels = [item.key.label() for item in rows]
    col_labels = [item.key.label() for item in columns]
    root = Path(cache_root) if cache_root else columns[0].root
    name = name or default_name([i.key for i in everyone], row_labels, col_labels)
    out = root / "correlations" / f"{name}.h5"
    inputs = scores_hashes(scores)
    config = {
        "stage": "correlate",
        "coefficient": "spearman",
        "rows": row_labels,
        "columns": col_labels,
        "intervals": bootstrap.to_dict(),
        "version": 2,
    }
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
        out, name, status, row_labels, col_labels, matrix, count, reference, low, high, bootstrap
    )
