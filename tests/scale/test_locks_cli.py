"""Locks between processes, and bad files: one-line errors or a recompute, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from typer.testing import CliRunner

import attrcli.engine.attribute as engine
import attrcli.stages.attribute as stage
from attrcli.cli.main import app
from attrcli.store import SCHEMA_VERSION, read_artifact, write_artifact
from tests.scale.helpers import MODEL, grids, subprocess_env

ARGS = ["--model", MODEL, "--layer", "input", "--method", "grad", "--batch-size", "2", "-q"]
HOLD = "import sys,time; from attrcli.store import artifact_lock\nwith artifact_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(float(sys.argv[2]))"


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _holder(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, env=subprocess_env())
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_second_writer_exits_2_or_waits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = grids(tmp_path, count=2)
    target = tmp_path / "cache/attributions/g/gridpg/tiny-vgg/input/grad.h5"
    proc = _holder(target, 60)
    try:
        result = invoke("attribute", "--grids", str(g), *ARGS)
        assert result.exit_code == 2 and f"pid {proc.pid}" in result.output and "--wait" in result.output
        assert not target.exists()
    finally:
        proc.kill()
        proc.wait()
    proc = _holder(target, 1)
    started = time.monotonic()
    result = invoke("attribute", "--grids", str(g), *ARGS, "--wait")
    assert result.exit_code == 0 and time.monotonic() - started > 0.5
    assert read_artifact(target).data["maps"].shape[0] == 2
    proc.wait()


def test_corrupt_or_foreign_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = grids(tmp_path, count=2)
    first = invoke("attribute", "--grids", str(g), *ARGS)
    target = tmp_path / first.stdout.strip()
    good = read_artifact(target)
    target.write_bytes(target.read_bytes()[:500])  # truncated
    score = invoke("score", str(target), "--force")
    assert score.exit_code == 2 and "corrupt or truncated" in score.output and len(score.output.strip().splitlines()) == 1
    merged = invoke("merge", str(target))
    assert merged.exit_code == 2 and "no shards" in merged.output
    again = invoke("attribute", "--grids", str(g), *ARGS, "--json")
    assert again.exit_code == 0 and '"status": "computed"' in again.stdout
    assert (read_artifact(target).data["maps"] == good.data["maps"]).all()
    write_artifact(target, data=good.data, attrs=good.attrs)
    import h5py

    with h5py.File(target, "r+") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION + 1
    score = invoke("score", str(target))
    assert score.exit_code == 2 and "schema version" in score.output
    assert '"status": "computed"' in invoke("attribute", "--grids", str(g), *ARGS, "--json").stdout


def test_stale_grid_file_recomputes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = grids(tmp_path, count=2)
    invoke("attribute", "--grids", str(g), *ARGS)
    grids(tmp_path, count=2, seed=5)
    status = invoke("status", "--grids", str(g), "--model", MODEL, "--layer", "input", "--method", "grad", "--json")
    assert '"state": "stale"' in status.stdout
    assert '"status": "computed"' in invoke("attribute", "--grids", str(g), *ARGS, "--json").stdout


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_weights_that_run_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = grids(tmp_path, count=2)
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Evil(tmp_path / "pwned")}, evil)
    result = invoke("attribute", "--grids", str(g), *ARGS, "--weights", str(evil))
    assert result.exit_code == 2 and "refused" in result.output and "run code" in result.output
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "cache").exists()


def test_a_writer_that_waited_finds_the_artifact_done(tmp_path, monkeypatch):
    """While this process waits for a lock, the holder finishes the artifact: after the wait it
    is up to date, not computed a second time."""
    g = grids(tmp_path, count=2)
    run = dict(grids=g, setting="gridpg", model="digits-vgg11", weights="random", layers="input",
               methods="grad", batch_size=2)
    (done,) = stage.attribute(**run, cache_root=tmp_path / "theirs")
    target = tmp_path / "mine" / done.path.relative_to(tmp_path / "theirs")
    real_lock = stage.artifact_lock

    @contextmanager
    def lock_after_the_holder(path, wait=False):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(done.path, target)  # the holder wrote it and let go
        with real_lock(path, wait=wait):
            yield

    monkeypatch.setattr(stage, "artifact_lock", lock_after_the_holder)
    monkeypatch.setattr(engine, "compute_maps", lambda *a, **k: pytest.fail("computed again"))
    (result,) = stage.attribute(**run, cache_root=tmp_path / "mine", wait=True)
    assert result.status == "up to date" and result.path == target
