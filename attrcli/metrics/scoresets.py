"""The keys whose scores the stages that relate keys (``correlate``, ``compare``) read.

Keys come from score or attribution artifact paths, or from keys resolved under a cache folder;
the stages compute missing or stale scores first (:func:`attrcli.stages.score.load_scores`).
Every key must score the same attributions
(:func:`~attrcli.metrics.correlation.check_comparable`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.correlation import check_comparable
from attrcli.metrics.selection import (
    ScoreInput,
    check_grid_sources,
    identify,
    score_input,
    unique_paths,
)
from attrcli.store import ArtifactKey, content_hash

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]*$")


def check_name(name: str | None, what: str) -> None:
    """An output name must be a plain file name."""
    if name is not None and not _NAME.match(name):
        raise UserError(f"invalid {what} name {name!r}: use letters, digits and _.+-")


def score_inputs(
    score_paths: list[Path] | None, keys: list[ArtifactKey] | None, cache_root: Path | None,
    *, verb: str,
) -> list[ScoreInput]:
    """The distinct keys named by paths and keys, checked to exist (nothing is computed)."""
    paths = [Path(p) for p in score_paths or []]
    if keys:
        if cache_root is None:
            raise UserError(f"{verb} by keys needs a cache folder")
        paths += [k.with_stage("scores").path(cache_root) for k in keys]
    paths = unique_paths(paths)
    if not paths:
        raise UserError(f"no keys to {verb}: give score artifacts or a key selection")
    return list({item.key: item for item in (score_input(p, cache_root) for p in paths)}.values())


def check_inputs(items: list[ScoreInput], verb: str) -> None:
    """Same attributions for every key, and attributions made from the current grid files."""
    check_comparable([identify(item) for item in items], verb=verb)
    check_grid_sources([item.attribution for item in items if item.attribution is not None])


def scores_hashes(scores: dict[ArtifactKey, np.ndarray]) -> dict[str, str]:
    """The provenance inputs of a cross-key artifact: each key's label -> hash of its scores.

    A hash of the scores, not of the file, so recomputed intervals leave the output up to date.
    """
    return {key.label(): content_hash(values) for key, values in scores.items()}


def default_name(keys: list[ArtifactKey], *labels: list[str]) -> str:
    """``<grids>.<setting(s)>.<model(s)>.<hash of the key labels>``."""

    def joined(field: str) -> str:
        return "+".join(dict.fromkeys(getattr(k, field) for k in keys))

    digest = content_hash(*labels)[:10]
    return f"{joined('grids')}.{joined('setting')}.{joined('model')}.{digest}"
