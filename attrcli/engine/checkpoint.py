"""Checkpoints of finished batches, so a killed ``attribute`` resumes where it stopped.

Each artifact being computed has a folder ``<artifact>.partial/`` holding ``meta.json`` (the
config the chunks belong to) and one ``chunk-<i>.npy`` per finished chunk of grid images, each
written to a temporary name and renamed. A chunk file is therefore either complete or absent,
even after SIGKILL. A folder whose meta does not match the current run is discarded (the meta
holds everything that shapes the maps: the job's identity, its inputs' hashes, the chunk size,
the rows), and so is any folder under ``--force``. A chunk is checked before it is used
(:meth:`Checkpoint.verified`): one that cannot be read, or holds maps of the wrong shape, dtype
or with NaN/inf, is discarded with a one-line :class:`~attrcli.errors.AttrcliWarning` and
computed again. Temporary files of writers that died are removed when the folder is opened. A
job of a single chunk has nothing to resume: :class:`InMemory` holds its maps without touching
disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from attrcli.errors import AttrcliWarning
from attrcli.store.files import (
    atomic_output,
    remove_stale_temps,
    write_bytes,
    write_failure,
)
from attrcli.store.keys import checkpoint_folder_of

_CHUNK = re.compile(r"^chunk-(\d+)\.npy$")


class Checkpoint:
    """Finished chunks of one artifact."""

    def __init__(self, artifact: Path, meta: dict[str, Any], *, fresh: bool = False) -> None:
        """Open (or start) the checkpoint of ``artifact`` for a run described by ``meta``;
        ``fresh`` discards whatever an earlier run left (``--force``)."""
        self.folder = checkpoint_folder_of(artifact)
        self.meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
        meta_path = self.folder / "meta.json"
        if os.path.lexists(self.folder):
            stored = None
            if not fresh and self.folder.is_dir() and not self.folder.is_symlink():
                try:
                    stored = json.loads(meta_path.read_text())
                except (OSError, ValueError):
                    stored = None
            if stored != self.meta:
                _remove(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(self.folder, exc) from None
        remove_stale_temps(self.folder)
        if not meta_path.exists():
            write_bytes(meta_path, json.dumps(self.meta, sort_keys=True).encode(), what="checkpoint")

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.npy"

    def has(self, chunk: int) -> bool:
        return self._path(chunk).exists()

    def save(self, chunk: int, maps: np.ndarray, counts: dict[str, int] | None = None) -> None:
        """Store a finished chunk's maps, and the method's diagnostic counts for it (written
        first: a chunk whose maps exist always has its counts)."""
        path = self._path(chunk)
        if counts:
            write_bytes(path.with_suffix(".json"), json.dumps(counts, sort_keys=True).encode(), what="checkpoint")
        with atomic_output(path, what="checkpoint") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, maps, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())

    def load(self, chunk: int) -> np.ndarray:
        return np.load(self._path(chunk), allow_pickle=False)

    def counts(self, chunk: int) -> dict[str, int]:
        """The diagnostic counts saved with a chunk (empty when there were none)."""
        try:
            return json.loads(self._path(chunk).with_suffix(".json").read_text())
        except FileNotFoundError:
            return {}

    def verified(self, chunk: int, *, rows: int, targets: int) -> np.ndarray | None:
        """The chunk's maps if they can be used: ``(rows, targets, h, w)`` float32, all finite,
        with readable counts. Otherwise the chunk is discarded with a one-line warning and None
        is returned (it is computed again)."""
        try:
            maps = self.load(chunk)
            counts = self.counts(chunk)
        except (OSError, ValueError, EOFError) as exc:
            self.discard(chunk, f"unreadable ({_first_line(exc)})")
            return None
        problem = _problem(maps, rows=rows, targets=targets)
        if problem is None and not (
            isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values())
        ):
            problem = "its diagnostic counts are not a mapping of integers"
        if problem is not None:
            self.discard(chunk, problem)
            return None
        return maps

    def discard(self, chunk: int, reason: str) -> None:
        """Remove a chunk that cannot be used, saying why in one line."""
        path = self._path(chunk)
        warnings.warn(
            f"discarded checkpoint chunk {path} ({reason}); computing it again",
            AttrcliWarning, stacklevel=2,
        )
        for file in (path, path.with_suffix(".json")):
            file.unlink(missing_ok=True)

    def done(self) -> list[int]:
        """Indices of the chunks on disk (not yet verified)."""
        found = (_CHUNK.match(p.name) for p in self.folder.glob("chunk-*.npy"))
        return sorted(int(m[1]) for m in found if m)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove(path: Path) -> None:
    """Remove a checkpoint folder, or whatever took its name (a file, a link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _problem(maps: np.ndarray, *, rows: int, targets: int) -> str | None:
    """What is wrong with a chunk's maps, or None."""
    if maps.dtype != np.float32:
        return f"dtype {maps.dtype}, expected float32"
    if maps.ndim != 4 or maps.shape[:2] != (rows, targets):
        return f"shape {maps.shape}, expected ({rows}, {targets}, h, w)"
    if not np.isfinite(maps).all():
        return "NaN or inf values"
    return None


class InMemory:
    """The :class:`Checkpoint` interface for a job of one chunk: nothing to resume, nothing written.

    A folder left by an earlier run of the same artifact (another ``--batch-size``) is removed
    with :meth:`remove`, as a finished :class:`Checkpoint` removes its own.
    """

    def __init__(self, artifact: Path) -> None:
        self.folder = checkpoint_folder_of(artifact)
        self.chunks: dict[int, np.ndarray] = {}
        self.chunk_counts: dict[int, dict[str, int]] = {}

    def has(self, chunk: int) -> bool:
        return chunk in self.chunks

    def save(self, chunk: int, maps: np.ndarray, counts: dict[str, int] | None = None) -> None:
        self.chunks[chunk] = maps
        self.chunk_counts[chunk] = dict(counts or {})

    def load(self, chunk: int) -> np.ndarray:
        return self.chunks[chunk]

    def counts(self, chunk: int) -> dict[str, int]:
        return self.chunk_counts.get(chunk, {})

    def verified(self, chunk: int, *, rows: int, targets: int) -> np.ndarray | None:
        return self.chunks.get(chunk)

    def discard(self, chunk: int, reason: str) -> None:
        self.chunks.pop(chunk, None)
        self.chunk_counts.pop(chunk, None)

    def done(self) -> list[int]:
        return []

    def remove(self) -> None:
        self.chunks.clear()
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
