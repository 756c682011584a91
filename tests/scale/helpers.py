"""Shared bits of the scale tests: a tiny grid file and model usable from subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.engine.helpers import write_grids

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.engine.helpers:tiny_vgg_model"


def grids(tmp: Path, count: int = 5, seed: int = 0) -> Path:
    return write_grids(tmp / "g.h5", count=count, seed=seed)


def subprocess_env() -> dict[str, str]:
    """Environment in which a subprocess can import ``tests.engine.helpers``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def same_artifact(a, b) -> bool:
    """Equal datasets (bit for bit) and attributes."""
    return set(a.data) == set(b.data) and all(np.array_equal(a.data[k], b.data[k]) for k in a.data) and a.attrs == b.attrs


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextmanager
def small_tmpfs(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (a full disk on demand); skips the test where it
    cannot be mounted (not root, no mount permission in the container)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
