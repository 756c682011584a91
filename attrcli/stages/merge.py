"""``merge``: join the shards of attribution artifacts back into one artifact each.

The shards of one key are merged into the ordinary artifact only after checking that they agree
on ``N``, that every shard is present once, that their ``grid_index`` rows cover every grid image
exactly once, and that they were computed from the same inputs and config. The merged file is
written atomically under the artifact's lock; the shard files are removed only after it is in
place, so a failed merge leaves every shard as it was. Which rows a shard holds, and where shard
files lie, is :mod:`attrcli.engine.shards`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from attrcli.engine.precision import key_suffix, split_key_method
from attrcli.engine.shards import shard_paths
from attrcli.errors import UserError
from attrcli.methods import METHODS, parse_method
from attrcli.store import (
    ArtifactKey,
    artifact_lock,
    file_hash,
    read_artifact,
    write_artifact,
)
from attrcli.store.artifacts import make_provenance
from attrcli.store.keys import root_of
from attrcli.store.lock import lock_path

_CONCAT = ("maps", "grid_index", "classes")


def _ranges(rows: np.ndarray) -> str:
    """``[10, 11, 12, 20]`` -> ``"10–12, 20"`` (first five runs)."""
    rows = np.unique(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, breaks)]
    text = ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in runs[:5])
    return text + (", …" if len(runs) > 5 else "")


def _grid_count(attrs: dict[str, Any], grids_hash: str) -> int | None:
    """Image count of the grid file the shards name, if it is still there and unchanged."""
    path = Path(str(attrs.get("grid_path", "")))
    if not path.is_file():
        return None
    if file_hash(path) != grids_hash:
        raise UserError(f"the shards were computed from another version of {path} (its hash changed); recompute them")
    try:
        with h5py.File(path, "r") as handle:
            return int(handle["images"].shape[0])
    except (OSError, KeyError) as exc:
        raise UserError(f"{path} is not a readable grid file: {exc}") from None


def _check_coverage(found: dict[int, Any], shards: int, count: int | None) -> None:
    """Every grid row in exactly one shard; each shard holds the rows its index implies."""
    indices = {i: np.asarray(a.data["grid_index"]) for i, a in found.items()}
    order = sorted(indices)
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1:]:
            both = np.intersect1d(indices[a], indices[b])
            if both.size:
                raise UserError(f"shards {a} and {b} overlap at grid rows {_ranges(both)}")
    for i in order:
        if np.unique(indices[i]).size != indices[i].size:
            raise UserError(f"shard {i} of {shards} holds some grid rows twice")
    rows = np.concatenate([indices[i] for i in order])
    total = count if count is not None else int(rows.max()) + 1 if rows.size else 0
    missing = np.setdiff1d(np.arange(total), rows)
    if missing.size:
        raise UserError(f"grid rows {_ranges(missing)} are in no shard")
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise UserError(f"shards hold grid rows outside 0–{total - 1}")
    for i in order:
        expected = np.arange(i * total // shards, (i + 1) * total // shards)
        if not np.array_equal(indices[i], expected):
            raise UserError(f"shard {i} of {shards} holds grid rows {_ranges(indices[i])}, expected {_ranges(expected)}")


def _check_provenance(found: dict[int, Any]) -> dict[str, Any]:
    """The provenance the shards share; a one-line error names the first that differs."""
    first_index = min(found)
    first = found[first_index].provenance
    for i, art in sorted(found.items()):
        prov = art.provenance
        mine, theirs = prov.get("inputs", {}), first.get("inputs", {})
        if mine.get("grids") != theirs.get("grids"):
            raise UserError(f"shard {i} was computed from another grid file than shard {first_index}")
        if mine.get("model") != theirs.get("model"):
            raise UserError(f"shard {i} was computed with other model weights than shard {first_index}")
        if set(mine) != set(theirs):
            raise UserError(f"shard {i} has other inputs than shard {first_index}")
        if prov.get("config", {}).get("identity") != first.get("config", {}).get("identity"):
            raise UserError(f"shard {i} was computed with another method config than shard {first_index}")
        for name in ("cells", "heads"):
            if not np.array_equal(art.data[name], found[first_index].data[name]):
                raise UserError(f"shard {i} evaluates other target {name} than shard {first_index}")
        if art.data["maps"].shape[1:] != found[first_index].data["maps"].shape[1:]:
            raise UserError(f"shard {i} holds maps of another shape than shard {first_index}")
    return first


def _base_path(key: ArtifactKey, artifact: Path) -> Path:
    """The merged artifact of a derived method's base (its provenance input ``base``), of the
    same precision (``s-ixg:k=3@bf16`` derives from ``ixg@bf16``)."""
    spec, precision = split_key_method(key.method)
    base = METHODS.get(parse_method(spec).name).base
    method = parse_method(base).canonical() + key_suffix(precision)
    return key.unsharded().with_method(method).path(root_of(artifact))


def _summed_diagnostics(artifacts) -> dict[str, int]:
    """The shards' diagnostic counts (attribute ``diagnostics``), added up."""
    total: dict[str, int] = {}
    for artifact in artifacts:
        for name, value in dict(artifact.attrs.get("diagnostics", {})).items():
            total[name] = total.get(name, 0) + int(value)
    return dict(sorted(total.items()))


def merge(target: Path | str, *, keep: bool = False, wait: bool = False) -> Path:
    """Join the shards of one attribution artifact into it; returns the merged path.

    ``target`` is the artifact's (unsharded) path or the path of any of its shards. Shards are
    removed after the merged file is written, unless ``keep``.
    """
    target = Path(target)
    key = ArtifactKey.from_path(target)
    if key.stage != "attributions":
        raise UserError(f"{target} is not an attribution artifact; only attributions are sharded")
    artifact = target.with_name(key.unsharded().filename)
    paths = shard_paths(artifact)
    if not paths:
        raise UserError(f"no shards of {artifact} to merge (expected {key.method}.shard-i-of-N.h5 next to it)")
    keys = {p: ArtifactKey.from_path(p) for p in paths}
    counts = sorted({k.shard[1] for k in keys.values()})
    if len(counts) > 1:
        raise UserError(f"shards of {artifact} disagree on their count ({', '.join(map(str, counts))}); delete the stale ones")
    shards = counts[0]
    by_index = {k.shard[0]: p for p, k in keys.items()}
    absent = [i for i in range(shards) if i not in by_index]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise UserError(f"shard {absent[0]} of {shards} of {artifact} is missing{more}")
    with artifact_lock(artifact, wait=wait):
        found = {i: read_artifact(by_index[i]) for i in range(shards)}
        prov = _check_provenance(found)
        attrs = {**found[0].attrs, "diagnostics": _summed_diagnostics(found.values())}
        _check_coverage(found, shards, _grid_count(attrs, prov.get("inputs", {}).get("grids", "")))
        order = sorted(found, key=lambda i: int(found[i].data["grid_index"][0]) if found[i].data["grid_index"].size else -1)
        data = {name: np.concatenate([found[i].data[name] for i in order]) for name in _CONCAT}
        data = {**found[0].data, **data}
        inputs = dict(prov.get("inputs", {}))
        if "base" in inputs:
            base = _base_path(key, artifact)
            if not base.is_file():
                raise UserError(f"merge the base method first: {base} does not exist")
            inputs["base"] = file_hash(base)
        seconds = [found[i].provenance.get("seconds") for i in found]
        write_artifact(
            artifact,
            data={name: data[name] for name in found[0].data},
            attrs=attrs,
            provenance=make_provenance(
                config={**prov.get("config", {}), "shards": shards},
                inputs=inputs,
                seed=prov.get("seed"),
                device=str(prov.get("device", "cpu")),
                seconds=sum(s for s in seconds if isinstance(s, (int, float))) or None,
            ),
        )
        if not keep:
            for path in paths:
                path.unlink(missing_ok=True)
                lock_path(path).unlink(missing_ok=True)
    return artifact


def merge_all(cache_root: Path | str, *, keep: bool = False, wait: bool = False) -> list[Path]:
    """Merge every key under ``cache_root/attributions`` that has shards (bases before derived)."""
    keys = ArtifactKey.glob(cache_root, "attributions", shards=True)
    targets = sorted({key.unsharded().path(cache_root) for key in keys if key.shard is not None})

    def derived(path: Path) -> bool:
        try:
            spec, _ = split_key_method(ArtifactKey.from_path(path).method)
            return METHODS.get(parse_method(spec).name).base is not None
        except UserError:
            return False

    return [merge(t, keep=keep, wait=wait) for t in sorted(targets, key=derived)]
