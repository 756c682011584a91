"""The analysis stages on artifacts: ``score``, ``aggatt``, ``correlate``, and ``summarize``.

Each stage reads artifacts, writes its own under the cache folder (``docs/artifacts.md``) and
returns what it did; none prints. A stage records the content hashes of its inputs and its
config in the provenance, skips an output whose record matches ("up to date"), recomputes one
that does not ("stale, recomputed"), and recomputes anything with ``force``. All inputs are
checked before anything is written.

The cache folder defaults to the one the input artifacts live in
(``<root>/attributions/...`` -> ``<root>/scores/...``), so stages chained by pipes stay together.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
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
from attrcli.metrics.correlation import check_comparable, spearman
from attrcli.metrics.localization import Progress
from attrcli.metrics.selection import (
    AttributionInfo,
    cache_root_of,
    identify,
    inspect_attribution,
    resolve_reference,
    score_input,
    unique_paths,
)
from attrcli.store import (
    ArtifactKey,
    artifact_lock,
    content_hash,
    file_hash,
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
    "CorrelationResult",
    "ScoreSummary",
    "StageResult",
    "aggatt",
    "correlate",
    "score",
    "summarize",
]

#: A score counts as perfect when it is at least this (float64 division of equal sums gives 1.0
#: exactly; the tolerance only absorbs rounding in sums of many pixels).
PERFECT = 1.0 - 1e-9

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]*$")


def score(
    *,
    attribution_paths: list[Path],
    cache_root: Path | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    wait: bool = False,
) -> list[StageResult]:
    """Localization scores and numerators of every attribution (supplement H.3), cached.

    Writes ``<cache_root>/scores/<key>.h5`` per attribution; ``cache_root`` defaults to the cache
    folder each attribution lives in.
    """
    sources = [inspect_attribution(Path(p)) for p in unique_paths(attribution_paths)]
    if not sources:
        raise UserError("no attribution artifacts given")
    return [
        score_one(
            s,
            Path(cache_root) if cache_root else s.root,
            force=force,
            device=device,
            progress=progress,
            wait=wait,
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
        inputs = {"attribution": attribution_hash, "scores": file_hash(scored.path)}
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
    """A Spearman matrix between row keys and column keys, and where it is stored."""

    path: Path
    name: str
    status: str
    rows: list[str]
    columns: list[str]
    matrix: np.ndarray  # float64 (len(rows), len(columns)); NaN where a score vector is constant
    count: int  # attributions per key
    reference: str | None = None

    def to_dict(self) -> dict:
        matrix = [[None if np.isnan(v) else float(v) for v in row] for row in self.matrix]
        return {
            "path": str(self.path),
            "name": self.name,
            "status": self.status,
            "rows": self.rows,
            "columns": self.columns,
            "matrix": matrix,
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
) -> CorrelationResult:
    """Spearman correlation of per-attribution scores between keys (supplement C), cached.

    Takes score (or attribution) artifact paths, or keys resolved under ``cache_root``; missing or
    stale scores are computed first. Without ``reference`` the result is the square matrix over
    the keys; with ``reference`` (``layer/method`` or ``setting/model/layer/method``, relative to
    the first key) it is one row: the reference against every key, the shape of the
    supplement's Tables 1-2 (Grad-CAM at the final layer against S-IntGrad at the input, per K).
    Writes ``<cache_root>/correlations/<name>.h5``; the default name is
    ``<grids>.<setting>.<model>.<hash of the key labels>``.
    """
    paths = [Path(p) for p in score_paths or []]
    if keys:
        if cache_root is None:
            raise UserError("correlate by keys needs a cache folder")
        paths += [k.with_stage("scores").path(cache_root) for k in keys]
    paths = unique_paths(paths)
    if not paths:
        raise UserError("no keys to correlate: give score artifacts or a key selection")
    if name is not None and not _NAME.match(name):
        raise UserError(f"invalid correlation name {name!r}: use letters, digits and _.+-")
    columns = list(
        {item.key: item for item in (score_input(p, cache_root) for p in paths)}.values()
    )
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
    check_comparable([identify(item) for item in everyone])

    score_files = {
        item.key: item.scores
        if item.attribution is None
        else score_one(
            item.attribution, item.root, force=False, device=device, progress=progress, wait=wait
        )[0].path
        for item in everyone
    }
    row_labels = [item.key.label() for item in rows]
    col_labels = [item.key.label() for item in columns]
    root = Path(cache_root) if cache_root else columns[0].root
    name = name or _default_name([i.key for i in everyone], row_labels, col_labels)
    out = root / "correlations" / f"{name}.h5"
    inputs = {k.label(): file_hash(p) for k, p in score_files.items()}
    config = {
        "stage": "correlate",
        "coefficient": "spearman",
        "rows": row_labels,
        "columns": col_labels,
        "version": 1,
    }
    status = status_of(out, inputs, config, force)
    if status == UP_TO_DATE:
        stored = read_artifact(out, names=["matrix"])
        matrix, count = stored.data["matrix"], int(stored.attrs["count"])
    else:
        start = time.perf_counter()
        vectors = {
            k: read_artifact(p, names=["scores"]).data["scores"].ravel()
            for k, p in score_files.items()
        }
        count = len(vectors[rows[0].key])
        matrix = spearman(
            np.stack([vectors[i.key] for i in rows]),
            None if reference is None else np.stack([vectors[i.key] for i in columns]),
        )
        with artifact_lock(out, wait=wait):
            write_artifact(
                out,
                data={"matrix": matrix},
                attrs={
                    "rows": row_labels,
                    "columns": col_labels,
                    "reference": reference or "",
                    "count": count,
                },
                provenance=make_provenance(
                    config=config, inputs=inputs, device="cpu", seconds=time.perf_counter() - start
                ),
            )
    return CorrelationResult(out, name, status, row_labels, col_labels, matrix, count, reference)


def _default_name(keys: list[ArtifactKey], row_labels: list[str], col_labels: list[str]) -> str:
    """``<grids>.<setting(s)>.<model(s)>.<hash of the key labels>``."""

    def joined(field: str) -> str:
        return "+".join(dict.fromkeys(getattr(k, field) for k in keys))

    digest = content_hash(row_labels, col_labels)[:10]
    return f"{joined('grids')}.{joined('setting')}.{joined('model')}.{digest}"


@dataclass(frozen=True)
class ScoreSummary:
    """Distribution of one key's localization scores (the numbers behind the box plots)."""

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

    def to_dict(self) -> dict:
        return {
            k: (None if isinstance(v, float) and np.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def summarize(score_paths: list[Path]) -> list[ScoreSummary]:
    """Median, quartiles, mean and share of perfect scores per score artifact.

    Quartiles are numpy's linear-interpolation percentiles. "Perfect" means ``>= 1 - 1e-9``.
    """
    rows = []
    for path in unique_paths(score_paths):
        key = ArtifactKey.from_path(path)
        if key.stage != "scores":
            raise UserError(f"{path} is a {key.stage} artifact; expected a score artifact")
        artifact = read_artifact(path, names=["scores"])
        values = artifact.data["scores"].ravel()
        stats = (
            np.percentile(values, [50, 25, 75]).tolist() + [values.mean()]
            if values.size
            else [np.nan] * 4
        )
        n = int(artifact.attrs.get("n", 0))
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
            )
        )
    return rows
