"""Shards of an attribution artifact: which grid rows each computes, and where they lie.

``attribute --shard i/N`` computes grid rows ``[i*C//N, (i+1)*C//N)`` of a grid file with ``C``
images into the shard artifact ``(i, N)`` of its key (:class:`~attrcli.store.keys.ArtifactKey`,
docs/artifacts.md). Merging shards back is a stage: :mod:`attrcli.stages.merge`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from attrcli.errors import UserError
from attrcli.store import ArtifactKey

if TYPE_CHECKING:
    from attrcli.stages.plan import Job

_SHARD_ARG = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/16"`` -> ``(3, 16)``; shards count from 0."""
    if text is None or text == "":
        return None
    match = _SHARD_ARG.match(text)
    if not match:
        raise UserError(f"invalid --shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    index, count = int(match[1]), int(match[2])
    if not (count >= 1 and 0 <= index < count):
        raise UserError(f"invalid --shard {text!r}: need 0 <= i < N and N >= 1")
    return index, count


def shard_rows(count: int, shard: tuple[int, int]) -> range:
    """The grid rows of shard ``(i, N)`` of ``count`` images (contiguous, sizes differ by <= 1)."""
    index, shards = shard
    if not (shards >= 1 and 0 <= index < shards):
        raise UserError(f"invalid shard {index}/{shards}: need 0 <= i < N")
    if shards > count:
        raise UserError(f"{shards} shards asked for a grid file of {count} images: use at most {count}")
    return range(index * count // shards, (index + 1) * count // shards)


def shard_jobs(jobs: list[Job], shard: tuple[int, int], cache_root: Path | str) -> list[Job]:
    """The same jobs writing shard artifacts (derived jobs read their base method's shard)."""
    out = []
    for job in jobs:
        key = dataclasses.replace(job.key, shard=shard)
        base = job.base_path
        if base is not None:
            base = dataclasses.replace(ArtifactKey.from_path(base), shard=shard).path(cache_root)
        out.append(dataclasses.replace(job, key=key, path=key.path(cache_root), base_path=base))
    return out


def shard_paths(artifact: Path | str) -> list[Path]:
    """The shard files of the (unsharded) artifact path ``artifact``, by shard count then index."""
    root, key = ArtifactKey.split(artifact)
    return [shard.path(root) for shard in key.shards_on_disk(root)]
