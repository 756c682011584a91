"""Writing user-named paths: what is refused, links written through, temporary files cleaned up,
a full disk reported in one line with nothing left behind, and locks that leave no trace."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from attrcli.errors import LockedError, TaskError, UserError
from attrcli.store import artifact_lock, read_artifact, write_artifact
from attrcli.store.files import HOST, check_folder, output_target, remove_stale_temps, temp_path
from attrcli.store.lock import lock_path
from tests.scale.helpers import dead_pid, small_tmpfs


def _device_node(tmp_path: Path) -> Path:
    """A character device like /dev/null, made in tmp_path (never the real one)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    return node


def test_a_device_node_or_pipe_is_never_replaced(tmp_path):
    node = _device_node(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (node, fifo):
        with pytest.raises(UserError, match="not a regular file"):
            write_artifact(target, data={"x": np.arange(3)})
    assert stat.S_ISCHR(os.stat(node).st_mode) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]


def test_a_folder_is_refused_and_a_symlink_written_through(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        write_artifact(tmp_path / "adir", data={"x": np.arange(3)})
    real = write_artifact(tmp_path / "real.h5", data={"x": np.arange(3)})
    link = tmp_path / "link.h5"
    link.symlink_to(real.name)
    write_artifact(link, data={"x": np.arange(5)})
    assert link.is_symlink() and os.readlink(link) == "real.h5"
    assert read_artifact(real).data["x"].tolist() == [0, 1, 2, 3, 4]
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to("made/through.h5")
    write_artifact(dangling, data={"x": np.arange(2)})
    assert dangling.is_symlink() and read_artifact(tmp_path / "made/through.h5").data["x"].tolist() == [0, 1]
    looped = tmp_path / "loop.h5"
    looped.symlink_to("loop.h5")
    with pytest.raises(UserError, match="loop.h5"):
        write_artifact(looped, data={"x": np.arange(2)})


def test_folders_that_cannot_hold_files_are_refused_without_creating_anything(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for bad, message in ((tmp_path / "file.txt", "not a folder"), (tmp_path / "file.txt/sub/deeper", "not a folder"),
                         (Path("/proc/attrcli-test/cache"), "kernel file system")):
        with pytest.raises(UserError, match=message):
            check_folder(bad, what="--cache-dir")
    assert check_folder(tmp_path / "new/cache") == tmp_path / "new/cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    with pytest.raises(UserError, match="not a folder"):
        output_target(tmp_path / "file.txt" / "x.png", what="--out")


def test_temporary_files_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "a.h5"
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".a.h5.{dead}.tmp", tmp_path / f".a.h5.{dead}@{HOST}.tmp"]
    kept = [tmp_path / f".a.h5.{alive}.tmp", tmp_path / f".a.h5.{dead}@another-host.tmp",
            tmp_path / f".b.h5.{dead}.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half an artifact")
    write_artifact(target, data={"x": np.arange(3)})
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path) == [tmp_path / f".b.h5.{dead}.tmp"]  # any name, when asked
    assert temp_path(target).name == f".a.h5.{os.getpid()}@{HOST}.tmp"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with small_tmpfs(tmp_path / "small", "256k") as disk:
        old = write_artifact(disk / "a.h5", data={"x": np.arange(10)})
        with pytest.raises(TaskError) as caught:
            write_artifact(old, data={"x": np.zeros((1024, 1024), np.float32)})  # 4 MB on 256 kB
        message = str(caught.value)
        assert "no space left" in message and "\n" not in message and str(old) in message
        assert sorted(p.name for p in disk.iterdir()) == ["a.h5"]  # no temporary file
        assert read_artifact(old).data["x"].tolist() == list(range(10))  # the old file is intact


def test_locks_leave_no_file_and_created_folders_go_when_nothing_was_written(tmp_path):
    target = tmp_path / "cache/attributions/g/gridpg/m/input/grad.h5"
    with artifact_lock(target):
        assert lock_path(target).exists()
    assert not (tmp_path / "cache").exists()  # a refused run leaves the tree as it was
    with artifact_lock(target):
        write_artifact(target, data={"x": np.arange(2)})
    assert [p.name for p in target.parent.iterdir()] == ["grad.h5"]
    with pytest.raises(UserError, match="is not a folder"):
        with artifact_lock("/dev/null/cache/grad.h5"):
            pass


def test_removing_lock_files_keeps_writers_exclusive(tmp_path):
    """A waiter that locked a file its holder unlinked on release must lock the new one: at no
    moment may two holders think they have the lock."""
    target = tmp_path / "a.h5"
    holders: list[str] = []
    inside = threading.Lock()
    overlap = []

    def writer(name: str) -> None:
        for _ in range(20):
            with artifact_lock(target, wait=True, poll=0.001):
                if not inside.acquire(blocking=False):
                    overlap.append(name)
                    continue
                holders.append(name)
                time.sleep(0.001)
                inside.release()

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not overlap and len(holders) == 80
    assert not lock_path(target).exists()
    with artifact_lock(target):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with artifact_lock(target):
                pass
