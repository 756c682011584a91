"""Finding and checking the input artifacts of the analysis stages.

:func:`inspect_attribution` checks an attribution artifact (key, schema, datasets, attributes)
without reading its maps, so a stage can refuse bad input before it writes anything.

A selection names a grid file and lists of settings, models, layers and methods; ``all`` means
every value found on disk. A bare method name (``s-intgrad``) also matches its configured variants
(``s-intgrad:k=129``), which is what a smoothing sweep wants; a full spec matches itself only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from attrcli.engine.precision import split_key_method
from attrcli.errors import UserError
from attrcli.metrics.correlation import ScoredAttributions
from attrcli.names import ALL, LAYERS
from attrcli.store import (
    Artifact,
    ArtifactKey,
    file_hash,
    read_artifact,
    read_provenance,
)
from attrcli.store.keys import glob_escape, grids_part, root_of


def split_methods(value: str | None) -> list[str]:
    """Split a comma list of method specs, keeping ``name:a=1,b=2`` together."""
    from attrcli.methods.base import split_methods as split

    return split(value or "")


def method_matches(pattern: str, method: str) -> bool:
    """``gradcam`` matches ``gradcam`` and ``gradcam:...`` in every precision (``gradcam@bf16``
    too); a spec with ``:`` or a precision suffix (``gradcam@bf16``) only itself."""
    if method == pattern:
        return True
    if ":" in pattern or "@" in pattern:
        return False
    try:
        spec, _ = split_key_method(method)
    except UserError:  # a key with a suffix this version does not know
        return False
    return spec.partition(":")[0] == pattern


def _found(root: Path, stages: tuple[str, ...], grids: str) -> dict[tuple[str, ...], ArtifactKey]:
    found: dict[tuple[str, ...], ArtifactKey] = {}
    for stage in stages:
        for key in ArtifactKey.glob(root, stage, grids=glob_escape(grids)):
            found.setdefault((key.setting, key.model, key.layer, key.method), key)
    return found


def _choose(wanted: list[str], available: list[str], what: str, context: str) -> list[str]:
    if not wanted or ALL in wanted:
        return available
    missing = [w for w in wanted if w not in available]
    if missing:
        raise UserError(
            f"no {what} {', '.join(missing)} for {context}; found: {', '.join(available) or 'none'}"
        )
    return wanted


def natural_key(text: str) -> list:
    """Sort key that orders ``k=9`` before ``k=17``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _layer_sort(layers: set[str]) -> list[str]:
    return [name for name in LAYERS if name in layers] + sorted(
        layers - set(LAYERS), key=natural_key
    )


def select_keys(
    *,
    cache_root: Path,
    grids: str | Path,
    settings: list[str] | None = None,
    models: list[str] | None = None,
    layers: list[str] | None = None,
    methods: list[str] | None = None,
    stages: tuple[str, ...] = ("attributions",),
) -> list[ArtifactKey]:
    """Keys on disk under ``cache_root`` matching the selection (empty list or ``all``: every one).

    When both layers and methods are listed explicitly, every combination must exist. If
    ``grids`` is an existing grid file, the attributions must have been computed from it (same
    content hash).
    """
    name = grids_part(grids)
    root = Path(cache_root)
    found = _found(root, stages, name)
    if not found:
        raise UserError(
            f"no {' or '.join(stages)} artifacts for grids {name!r} under {root}; "
            "run attrcli attribute first (or pass --cache-dir)"
        )
    context = f"grids {name}"
    chosen_settings = _choose(settings or [], sorted({k[0] for k in found}), "setting", context)
    keys: list[ArtifactKey] = []
    for setting in chosen_settings:
        here = {k: v for k, v in found.items() if k[0] == setting}
        for model in _choose(
            models or [], sorted({k[1] for k in here}), "model", f"{context}/{setting}"
        ):
            there = {k: v for k, v in here.items() if k[1] == model}
            keys += _pick_layers_methods(
                there, layers or [], methods or [], f"{context}/{setting}/{model}"
            )
    _check_grid_file(grids, keys, root)
    return keys


def _pick_layers_methods(found: dict, layers: list[str], methods: list[str], context: str) -> list:
    available_layers = _layer_sort({k[2] for k in found})
    chosen_layers = _choose(layers, available_layers, "layer", context)
    all_methods = sorted({k[3] for k in found}, key=natural_key)
    explicit = [m for m in methods if m != ALL]
    for pattern in explicit:
        if not any(method_matches(pattern, m) for m in all_methods):
            raise UserError(f"no method {pattern} for {context}; found: {', '.join(all_methods)}")
    keys = []
    for layer in chosen_layers:
        at_layer = sorted((k[3] for k in found if k[2] == layer), key=natural_key)
        if explicit and ALL not in methods:
            picked = [m for p in explicit for m in at_layer if method_matches(p, m)]
            absent = [p for p in explicit if not any(method_matches(p, m) for m in at_layer)]
            if absent and layers and ALL not in layers:
                raise UserError(
                    f"no {', '.join(absent)} at layer {layer} for {context}; "
                    f"found there: {', '.join(at_layer)}"
                )
        else:
            picked = at_layer
        by_method = {k[3]: v for k, v in found.items() if k[2] == layer}
        keys += [by_method[m] for m in dict.fromkeys(picked)]
    return keys


def _check_grid_file(grids: str | Path, keys: list[ArtifactKey], root: Path) -> None:
    path = Path(grids)
    if path.suffix != ".h5" or not path.is_file():
        return
    digest = file_hash(path)
    for key in keys:
        if key.stage != "attributions":
            continue
        recorded = read_provenance(key.path(root)).get("inputs", {}).get("grids")
        if recorded is not None and recorded != digest:
            raise UserError(
                f"{key.path(root)} was computed from another version of {path}; "
                "rerun attrcli attribute for it"
            )


#: Grid-file hashes by (path, inode, size, mtime): each file is hashed once per process.
_GRID_HASHES: dict[tuple, str] = {}


def _grid_hash(path: Path) -> str:
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _GRID_HASHES:
            _GRID_HASHES[key] = file_hash(path)
    except OSError as exc:
        raise UserError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    return _GRID_HASHES[key]


def check_grid_sources(sources: list[AttributionInfo]) -> None:
    """Refuse attributions whose grid file has changed (or been truncated) since they were made.

    The grid file is the one the attribution records (attribute ``grid_path``); its content hash
    must equal the one in the attribution's provenance. A grid file that is no longer there is
    not needed to score, and is not checked.
    """
    for source in sources:
        recorded = source.identity.grids_hash
        grid = Path(str(source.attrs.get("grid_path", "") or ""))
        if recorded.startswith("?") or not grid.name or not grid.is_file():
            continue
        if _grid_hash(grid) != recorded:
            raise UserError(
                f"{source.path} was computed from another version of {grid} (changed or "
                "truncated since); rerun attrcli attribute for it"
            )


def resolve_reference(spec: str, like: ArtifactKey) -> ArtifactKey:
    """A reference key from ``layer/method`` or ``setting/model/layer/method``, else as ``like``."""
    parts = spec.split("/")
    if len(parts) == 2:
        setting, model, (layer, method) = like.setting, like.model, parts
    elif len(parts) == 4:
        setting, model, layer, method = parts
    else:
        raise UserError(
            f"invalid reference {spec!r}: use layer/method (final/gradcam) "
            "or setting/model/layer/method"
        )
    return ArtifactKey("scores", like.grids, setting, model, layer, method)


def unique_paths(paths: list[Path]) -> list[Path]:
    """Paths in order, each once."""
    return list(dict.fromkeys(Path(p) for p in paths))


@dataclass
class AttributionInfo:
    """An attribution artifact, checked, without its maps (those are read in chunks later)."""

    path: Path
    key: ArtifactKey  # stage "attributions"
    root: Path
    attrs: dict
    n: int
    image_size: int
    shape: tuple[int, ...]
    identity: ScoredAttributions


def identity_of(label: str, artifact: Artifact, grids_hash: str) -> ScoredAttributions:
    """What a score vector of this artifact covers (for :func:`check_comparable`)."""
    return ScoredAttributions(
        label=label,
        grids_hash=grids_hash,
        grid_index=np.asarray(artifact.data["grid_index"], dtype=np.int64),
        cells=np.asarray(artifact.data["cells"], dtype=np.int64),
        heads=np.asarray(artifact.data["heads"], dtype=np.int64),
    )


def inspect_attribution(path: Path) -> AttributionInfo:
    """Check an attribution artifact's key, schema, datasets and attributes; read no maps."""
    key = ArtifactKey.from_path(path)
    if key.stage != "attributions":
        raise UserError(f"{path} is a {key.stage} artifact; expected an attribution artifact")
    if key.shard is not None:
        raise UserError(
            f"{path} is one shard of an attribution; join the shards with attrcli merge"
        )
    artifact = read_artifact(path, names=["grid_index", "cells", "heads"])
    try:
        with h5py.File(path, "r") as handle:
            shape = tuple(handle["maps"].shape)
    except KeyError:
        raise UserError(f"{path} lacks dataset maps") from None
    try:
        n, image_size = int(artifact.attrs["n"]), int(artifact.attrs["image_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} lacks the attributes n and image_size") from None
    identity = identity_of(
        key.label(), artifact, artifact.provenance.get("inputs", {}).get("grids", f"?{key.grids}")
    )
    if len(shape) != 4 or shape[:2] != (len(identity.grid_index), len(identity.cells)):
        raise UserError(
            f"{path}: maps have shape {shape}, expected (N, T, h, w) with "
            f"N={len(identity.grid_index)} grid images and T={len(identity.cells)} targets"
        )
    if len(identity.cells) and (identity.cells.min() < 0 or identity.cells.max() >= n * n):
        raise UserError(f"{path}: target cells {identity.cells.tolist()} outside a {n}x{n} grid")
    return AttributionInfo(
        path, key, root_of(path), artifact.attrs, n, image_size, shape, identity
    )


@dataclass
class ScoreInput:
    """A key whose scores are needed: its score file, and the attribution behind it if present."""

    key: ArtifactKey  # stage "scores"
    scores: Path
    attribution: AttributionInfo | None
    root: Path  # where a (re)computed score is written


def score_input(path: Path, cache_root: Path | None) -> ScoreInput:
    """A given score path stays where it is; an attribution's score goes under ``cache_root``."""
    key = ArtifactKey.from_path(path)
    if key.stage not in ("attributions", "scores"):
        raise UserError(f"{path} is a {key.stage} artifact; give score or attribution artifacts")
    attribution = key.sibling("attributions", path)
    root = root_of(path) if key.stage == "scores" else Path(cache_root or root_of(path))
    scores = key.with_stage("scores").path(root)
    if not (attribution.exists() or (key.stage == "scores" and scores.exists())):
        raise UserError(f"{path}: no such file")
    source = inspect_attribution(attribution) if attribution.exists() else None
    return ScoreInput(key.with_stage("scores"), scores, source, root)


def identify(item: ScoreInput) -> ScoredAttributions:
    """What the scores of ``item`` cover, from its attribution or else its score artifact."""
    if item.attribution is not None:
        return item.attribution.identity
    artifact = read_artifact(item.scores, names=["grid_index", "cells", "heads"])
    return identity_of(item.key.label(), artifact, str(artifact.attrs.get("grids_hash", "?")))
