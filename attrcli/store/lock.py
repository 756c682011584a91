"""Per-artifact locks: two processes never write the same artifact.

The lock is an ``fcntl`` lock on ``<artifact>.lock``; the kernel releases it when the holder
dies (even by SIGKILL), so a stale lock file never blocks anyone. The file records the holder
(host and pid) for the error message. The holder removes the file when it lets go, and the
folders it created for it if they stayed empty, so no ``.lock`` file is left in the artifact
tree and a refused run leaves the tree as it was. Removing the file cannot let two processes in
at once: whoever gets the lock checks that the file it locked is still the one at the lock path,
and starts over otherwise (a waiter may have locked a file its holder just unlinked).
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
from attrcli.store.files import check_folder, remove_stale_temps, write_failure


def lock_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.lock")


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created here, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            pass
    return created[::-1]


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty (something was written there), or gone already
            return


@contextmanager
def artifact_lock(path: Path | str, *, wait: bool = False, poll: float = 0.2) -> Iterator[None]:
    """Hold the lock of the artifact at ``path``.

    Without ``wait``, raise :class:`LockedError` naming the holder if another process has it.
    Temporary files of dead writers of the artifact are removed once the lock is held.
    """
    lpath = lock_path(path)
    check_folder(lpath.parent, what=f"the folder of {path}")
    created: list[Path] = []
    while True:
        try:
            created += _make_folders(lpath.parent)
            fd = os.open(lpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a holder removed the (empty) folder meanwhile
            continue
        except OSError as exc:
            _remove_empty(created)
            raise write_failure(lpath, exc) from None
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
        except BaseException:
            os.close(fd)
            _remove_empty(created)
            raise
        if _same_file(fd, lpath):
            break
        os.close(fd)  # its holder unlinked it on release: lock the file now at the path
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}".encode(), 0)
        remove_stale_temps(lpath.parent, Path(path).name)
        yield
    finally:
        try:
            os.unlink(lpath)  # while still holding it: see the module docstring
        except FileNotFoundError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _remove_empty(created)
