"""Writing files the user names, safely: checked targets, atomic replacement, no leftovers.

Every file attrcli writes (artifacts, figures, checkpoint chunks) goes through
:func:`atomic_output`: the content is written to a hidden temporary file next to the target,
``.<name>.<pid>@<host>.tmp``, and renamed over the target when complete, so a reader never sees
half a file. The target is checked first (:func:`output_target`): a folder, a device node, a pipe
or a socket is refused rather than replaced, and a symbolic link is written through (the file it
points to is replaced, the link stays). A temporary file whose writer has died (its pid names no
live process on this host) is removed the next time its target is written. A write that fails
(disk full, say) removes its temporary file and raises :class:`~attrcli.errors.TaskError` with a
one-line message.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attrcli.errors import TaskError, UserError

HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_.-]+))?\.tmp$")
_SYSTEM_MOUNTS = ("/proc", "/sys", "/dev")  # kernel file systems: never a place for attrcli's files
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temp_path(target: Path | str) -> Path:
    """The temporary file this process writes ``target`` through."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}@{HOST}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: Path | str, name: str | None = None) -> list[Path]:
    """Remove temporary files in ``folder`` (of the target ``name``, or of any) whose writer is
    dead: written on this host by a pid that is no longer running. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if match["host"] not in (None, HOST):
            continue  # a writer on another machine of a shared file system: not ours to judge
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _system_mount(path: Path) -> str | None:
    """The kernel file system (``/proc``, ``/sys``, ``/dev``) ``path`` lies on, if any."""
    try:
        device = os.stat(path).st_dev
        root = os.stat("/").st_dev
    except OSError:
        return None
    for mount in _SYSTEM_MOUNTS:
        try:
            if os.path.ismount(mount) and os.stat(mount).st_dev == device != root:
                return mount
        except OSError:
            continue
    return None


def check_folder(path: Path | str, *, what: str = "folder", writable: bool = True) -> Path:
    """Refuse (``UserError``) a folder attrcli could not create or write files in: a path that is
    a file or a device, or lies under one, or under ``/proc``, ``/sys`` or ``/dev``. Nothing is
    created; the folder may not exist yet."""
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        where = "" if existing == path else f" ({existing} is not a folder)"
        raise UserError(f"{what} {path} is not a folder{where}")
    mount = _system_mount(existing)
    if mount is not None:
        raise UserError(f"{what} {path} is on {mount}, a kernel file system; choose a folder on disk")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({existing} refuses new files)")
    return path


def output_target(path: Path | str, *, what: str = "output") -> Path:
    """The regular file that writing ``path`` replaces: ``path``, or the file a symbolic link at
    ``path`` points to. A folder or anything that is not a regular file (a device node, a pipe, a
    socket) is refused with a ``UserError``, as is a path inside something that is not a folder."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent, or under a file: check_folder says
        mode = None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written: {exc.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is a folder; name a file")
    if mode is not None and not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} exists and is not a regular file (a device, pipe or socket); "
                        "attrcli only replaces regular files")
    check_folder(target.parent, what=f"the folder of {what} {path}")
    return target


def disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full. HDF5 says so only in its text and
    numpy only reports a short write, so a ``folder`` whose file system has under 1 MiB left
    counts as full too."""
    text = str(exc)
    if getattr(exc, "errno", None) in _FULL or "No space left" in text or "errno = 28" in text:
        return True
    if folder is not None:
        try:
            space = os.statvfs(folder)
        except OSError:
            return False
        return space.f_bavail * space.f_frsize < 2**20
    return False


def write_failure(target: Path, exc: OSError) -> TaskError:
    """A one-line :class:`TaskError` for a write of ``target`` that the system refused."""
    if disk_full(exc, target.parent):
        return TaskError(f"no space left on the device to write {target}; nothing was written (free space and rerun)")
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
    return TaskError(f"cannot write {target}: {reason}")


@contextmanager
def atomic_output(path: Path | str, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces the target of ``path``
    (:func:`output_target`), on any failure it is removed and the target left as it was.

    Missing parent folders are created. An ``OSError`` while writing (disk full, read-only file
    system) becomes a one-line :class:`~attrcli.errors.TaskError`.
    """
    target = output_target(path, what=what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(target, exc) from None
    remove_stale_temps(target.parent, target.name)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise write_failure(target, exc) from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass


def write_bytes(path: Path | str, data: bytes, *, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically and durably (fsync before the rename)."""
    with atomic_output(path, what=what) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)
