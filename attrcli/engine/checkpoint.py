"""Checkpoints of finished batches, so a killed ``attribute`` resumes where it stopped.

Each artifact being computed has a folder ``<artifact>.partial/`` holding ``meta.json`` (the
config the chunks belong to) and one ``chunk-<i>.npy`` per finished chunk of grid images, each
written to a temporary name and renamed. A chunk file is therefore either complete or absent,
even after SIGKILL. A folder whose meta does not match the current run is discarded. A job of
a single chunk has nothing to resume: :class:`InMemory` holds its maps without touching disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np


class Checkpoint:
    """Finished chunks of one artifact."""

    def __init__(self, artifact: Path, meta: dict[str, Any]) -> None:
        self.folder = artifact.with_name(artifact.name + ".partial")
        self.meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
        meta_path = self.folder / "meta.json"
        if self.folder.exists():
            try:
                stored = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored != self.meta:
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not meta_path.exists():
            tmp = meta_path.with_name(f".meta.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.meta, sort_keys=True))
            os.replace(tmp, meta_path)

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.npy"

    def has(self, chunk: int) -> bool:
        return self._path(chunk).exists()

    def save(self, chunk: int, maps: np.ndarray) -> None:
        path = self._path(chunk)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, maps, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def load(self, chunk: int) -> np.ndarray:
        return np.load(self._path(chunk), allow_pickle=False)

    def done(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("chunk-*.npy"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class InMemory:
    """The :class:`Checkpoint` interface for a job of one chunk: nothing to resume, nothing written.

    A folder left by an earlier run of the same artifact (another ``--batch-size``) is removed
    with :meth:`remove`, as a finished :class:`Checkpoint` removes its own.
    """

    def __init__(self, artifact: Path) -> None:
        self.folder = artifact.with_name(artifact.name + ".partial")
        self.chunks: dict[int, np.ndarray] = {}

    def has(self, chunk: int) -> bool:
        return chunk in self.chunks

    def save(self, chunk: int, maps: np.ndarray) -> None:
        self.chunks[chunk] = maps

    def load(self, chunk: int) -> np.ndarray:
        return self.chunks[chunk]

    def done(self) -> list[int]:
        return []

    def remove(self) -> None:
        self.chunks.clear()
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
