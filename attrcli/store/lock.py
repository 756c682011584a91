"""Per-artifact locks: two processes never write the same artifact.

The lock is an ``fcntl`` lock on ``<artifact>.lock``; the kernel releases it when the holder
dies (even by SIGKILL), so a stale lock file never blocks anyone. The file records the holder
(host and pid) for the error message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from attrcli.errors import LockedError


def lock_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.lock")


@contextmanager
def artifact_lock(path: Path | str, *, wait: bool = False, poll: float = 0.2) -> Iterator[None]:
    """Hold the lock of the artifact at ``path``.

    Without ``wait``, raise :class:`LockedError` naming the holder if another process has it.
    """
    lpath = lock_path(path)
    lpath.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lpath, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise LockedError(
                        f"{path} is being written by another process ({holder}); "
                        "use --wait to wait for it"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
