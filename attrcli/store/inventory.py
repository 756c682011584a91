"""What a cache folder holds: every key on disk, counted by grid file, setting and model.

This is ``attrcli status`` without ``--grids``: it needs no grid file, model or weights, only the
cache. An attribution counts as *done* when its provenance is readable, *stale* when the grid
file it records has changed or is gone since, *partial* when only its shards or checkpointed
chunks exist, and *corrupt* when it cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attrcli.errors import UserError
from attrcli.store.artifacts import file_hash, read_artifact
from attrcli.store.keys import STAGES, ArtifactKey, iter_checkpoint_folders


@dataclass
class CacheGroup:
    """The keys of one (grid file, setting, model) under a cache folder."""

    grids: str
    setting: str
    model: str
    done: dict[str, int] = field(default_factory=lambda: {stage: 0 for stage in STAGES})
    partial: int = 0  # attribution keys with only shards or checkpointed chunks
    stale: int = 0  # attributions whose grid file changed or is gone
    corrupt: int = 0  # artifacts that cannot be read
    grid_files: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "grids": self.grids, "setting": self.setting, "model": self.model,
            **{stage: count for stage, count in self.done.items()},
            "partial": self.partial, "stale": self.stale, "corrupt": self.corrupt,
            "grid_files": sorted(self.grid_files),
        }


def _grid_state(path: str, recorded: str, hashes: dict[str, str | None]) -> bool:
    """Whether the grid file at ``path`` still has the hash ``recorded`` (hashed once per path)."""
    if path not in hashes:
        try:
            hashes[path] = file_hash(path) if Path(path).is_file() else None
        except OSError:
            hashes[path] = None
    return hashes[path] == recorded


def _keys_on_disk(root: Path, stage: str) -> list[ArtifactKey]:
    """The keys of ``stage`` under ``root`` with an artifact, a shard or a checkpoint folder, in
    the order of their paths (a checkpoint folder's key where its artifact would sort)."""
    keys = ArtifactKey.glob(root, stage, shards=True)
    keys += [key for key, _ in iter_checkpoint_folders(root, stage)]
    return sorted(keys, key=lambda key: key.path(root))


def summarize_cache(cache_root: Path | str) -> list[CacheGroup]:
    """One :class:`CacheGroup` per (grid file, setting, model) with keys under ``cache_root``,
    sorted; an empty list for an empty or missing cache."""
    root = Path(cache_root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--cache-dir {root} is not a folder")
    groups: dict[tuple[str, str, str], CacheGroup] = {}
    hashes: dict[str, str | None] = {}
    for stage in STAGES:
        folder = root / stage
        if not folder.is_dir():
            continue
        partial_keys: set[tuple] = set()
        done_keys: set[tuple] = set()
        for key in _keys_on_disk(root, stage):
            path = key.path(root)
            group = groups.setdefault(
                (key.grids, key.setting, key.model), CacheGroup(key.grids, key.setting, key.model)
            )
            ident = (key.grids, key.setting, key.model, key.layer, key.method)
            if key.shard is not None or not path.exists():
                partial_keys.add(ident)
                continue
            done_keys.add(ident)
            try:
                artifact = read_artifact(path, names=[])
            except UserError:
                group.corrupt += 1
                continue
            group.done[stage] += 1
            grid_path = str(artifact.attrs.get("grid_path", ""))
            recorded = artifact.provenance.get("inputs", {}).get("grids")
            if stage == "attributions" and grid_path and recorded:
                group.grid_files.add(grid_path)
                if not _grid_state(grid_path, recorded, hashes):
                    group.stale += 1
        for ident in partial_keys - done_keys:
            groups[ident[:3]].partial += 1
    return [groups[k] for k in sorted(groups)]
