"""A cache of content hashes of large files, kept with each file's identity.

Hashing a model's weights (hundreds of megabytes for VGG) is a fixed cost of every call that
uses them. The hash still decides an artifact's identity; this cache only avoids computing it
again for a file that has not changed. An entry records the file's identity as ``os.stat``
gives it: resolved path, device, inode, size, ``mtime_ns`` and ``ctime_ns``. The inode changes
when the file is replaced (written to a temporary file and renamed, as most tools save); the
ctime changes on every write and every ``touch`` and cannot be set back by a user, so a change
of the same size with the mtime restored is still seen. An entry is used only while the
identity matches exactly.

One race remains for any stat-based cache (git's "racy clean" files): a write in the same tick
of the file system's clock as the hashing leaves the ctime unchanged. An entry is therefore
trusted only when the file's ctime lies at least :data:`SETTLED_NS` before the moment the hash
was started; a file written just before is hashed again on its next use, until it has settled.

Entries are small JSON files under ``<cache>/hashes/``, one per (what is hashed, resolved path),
written atomically; a missing, unreadable or foreign entry just means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attrcli.store.files import write_bytes

FOLDER = "hashes"
SCHEME = 1  # the entry format
SETTLED_NS = 2_000_000_000  # a ctime this long before the hash started cannot be a racing write
_IDENTITY = ("path", "device", "inode", "size", "mtime_ns", "ctime_ns")


def file_identity(path: Path | str) -> dict[str, Any] | None:
    """What identifies the content of the file at ``path`` without reading it (None if it is
    not a regular file)."""
    resolved = Path(os.path.realpath(path))
    try:
        info = os.stat(resolved)
    except OSError:
        return None
    if not os.path.isfile(resolved):
        return None
    return {
        "path": str(resolved), "device": info.st_dev, "inode": info.st_ino, "size": info.st_size,
        "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns,
    }


def entry_path(cache_dir: Path | str, kind: str, path: Path | str) -> Path:
    """Where the entry of ``kind`` for the file at ``path`` is kept."""
    name = hashlib.sha256(json.dumps([kind, os.path.realpath(path)]).encode()).hexdigest()[:32]
    return Path(cache_dir) / FOLDER / f"{name}.json"


def _read(entry: Path, kind: str) -> dict[str, Any] | None:
    try:
        record = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("scheme") != SCHEME or record.get("kind") != kind:
        return None
    return record


def lookup(cache_dir: Path | str, kind: str, identity: dict[str, Any] | None) -> str | None:
    """The cached hash of ``kind`` for a file of this ``identity``, or None when there is none
    that may be trusted (identity differs, or the entry was taken before the file settled)."""
    if identity is None:
        return None
    record = _read(entry_path(cache_dir, kind, identity["path"]), kind)
    if record is None or any(record.get(name) != identity[name] for name in _IDENTITY):
        return None
    started = record.get("started_ns")
    if not isinstance(started, int) or identity["ctime_ns"] > started - SETTLED_NS:
        return None
    value = record.get("hash")
    return value if isinstance(value, str) and value else None


def store(cache_dir: Path | str, kind: str, identity: dict[str, Any], value: str, *, started_ns: int) -> None:
    """Keep ``value`` as the hash of ``kind`` for the file of ``identity``, hashed from a read
    that began at ``started_ns`` (``time.time_ns()``). A cache that cannot be written is skipped:
    the hash is then computed again next time."""
    record = {"scheme": SCHEME, "kind": kind, **identity, "started_ns": int(started_ns), "hash": value}
    try:
        write_bytes(entry_path(cache_dir, kind, identity["path"]), json.dumps(record, indent=1).encode(),
                    what="hash cache entry")
    except Exception:  # noqa: BLE001 - a read-only or full cache folder costs a rehash, nothing more
        pass


@dataclass(frozen=True)
class Snapshot:
    """A file's identity, taken before its content is read (:func:`snapshot`)."""

    path: Path
    identity: dict[str, Any] | None
    started_ns: int


def snapshot(path: Path | str) -> Snapshot:
    """The identity of the file at ``path`` now: take it *before* reading the file."""
    started = time.time_ns()
    return Snapshot(Path(path), file_identity(path), started)


def cached_hash(before: Snapshot, *, kind: str, cache_dir: Path | str, compute: Callable[[], str]) -> str:
    """The hash ``compute()`` gives for the file of ``before``, reused from the cache while the
    file's identity is unchanged.

    ``kind`` names what is hashed (the file's bytes, or a model's state after loading it: one
    file can have several kinds). ``compute`` must hash what was read from the file after
    ``before`` was taken. A cached value is used only if the identity is the same now as at
    ``before``, and a new entry is written only then, so a file written meanwhile is never
    cached under the other content's hash.
    """
    now = file_identity(before.path)
    if before.identity is not None and now == before.identity:
        found = lookup(cache_dir, kind, now)
        if found is not None:
            return found
    value = compute()
    if before.identity is not None and file_identity(before.path) == before.identity:
        store(cache_dir, kind, before.identity, value, started_ns=before.started_ns)
    return value

