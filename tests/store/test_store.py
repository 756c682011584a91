"""The artifact store: keys, round trips, atomic writes, locks and schema checks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from attrcli.errors import LockedError, UserError
from attrcli.store import (
    SCHEMA_VERSION,
    ArtifactKey,
    artifact_lock,
    content_hash,
    file_hash,
    read_artifact,
    read_provenance,
    write_artifact,
)
from attrcli.store.artifacts import make_provenance


def test_key_round_trips_through_its_path(tmp_path: Path) -> None:
    keys = [
        ArtifactKey("attributions", "digits-distinct-n2", "gridpg", "digits-vgg11", "input", "grad"),
        ArtifactKey("scores", "g", "difull", "vgg11", "features.12", "occlusion:k=8,s=4"),
        ArtifactKey("attributions", "g", "dipart", "resnet18", "layer2", "s-ixg:k=9", shard=(3, 16)),
    ]
    for key in keys:
        path = key.path(tmp_path)
        assert path.is_relative_to(tmp_path)
        assert ArtifactKey.from_path(path, tmp_path) == key
        assert ArtifactKey.from_path(path) == key
    assert keys[0].path(tmp_path) == tmp_path / "attributions/digits-distinct-n2/gridpg/digits-vgg11/input/grad.h5"
    assert keys[2].filename == "s-ixg:k=9.shard-3-of-16.h5"


@pytest.mark.parametrize(
    "field, value",
    [("layer", "../etc"), ("method", "a/b"), ("model", ""), ("grids", ".hidden"), ("stage", "nope")],
)
def test_key_rejects_unsafe_parts(field: str, value: str) -> None:
    parts = dict(stage="attributions", grids="g", setting="gridpg", model="m", layer="input", method="grad")
    parts[field] = value
    with pytest.raises(UserError):
        ArtifactKey(**parts)


def test_key_rejects_bad_shard_and_foreign_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        ArtifactKey("attributions", "g", "gridpg", "m", "input", "grad", shard=(4, 4))
    with pytest.raises(UserError):
        ArtifactKey.from_path(tmp_path / "a" / "b.h5", tmp_path)
    with pytest.raises(UserError):
        ArtifactKey.from_path(tmp_path / "x.txt")


def test_round_trip_keeps_data_attrs_and_provenance(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
    prov = make_provenance(config={"method": "grad", "steps": 20}, inputs={"grids": "abc"}, seed=7)
    path = write_artifact(
        tmp_path / "a.h5",
        data={"maps": maps, "cells": np.array([0, 3])},
        attrs={"n": 2, "layer": "input", "class_names": ["a", "b"], "mean": (0.5, 0.5, 0.5)},
        provenance=prov,
    )
    artifact = read_artifact(path)
    np.testing.assert_array_equal(artifact.data["maps"], maps)
    np.testing.assert_array_equal(artifact.data["cells"], [0, 3])
    assert artifact.attrs == {"n": 2, "layer": "input", "class_names": ["a", "b"], "mean": [0.5, 0.5, 0.5]}
    assert artifact.provenance["config"] == {"method": "grad", "steps": 20}
    assert artifact.provenance["inputs"] == {"grids": "abc"}
    assert artifact.provenance["seed"] == 7
    assert artifact.provenance["versions"]["torch"]
    assert read_provenance(path) == artifact.provenance
    assert read_artifact(path, names=["cells"]).data.keys() == {"cells"}
    with pytest.raises(UserError, match="lacks"):
        read_artifact(path, names=["missing"])


def test_same_content_gives_identical_bytes(tmp_path: Path) -> None:
    data = {"x": np.arange(12.0).reshape(3, 4)}
    prov = {"config": {"a": 1}, "inputs": {}}
    first = write_artifact(tmp_path / "one.h5", data=data, attrs={"k": 1}, provenance=prov)
    time.sleep(1.1)  # any stored timestamp would now differ
    second = write_artifact(tmp_path / "two.h5", data=data, attrs={"k": 1}, provenance=prov)
    assert first.read_bytes() == second.read_bytes()


def test_hashes_follow_content(tmp_path: Path) -> None:
    a = np.arange(4, dtype=np.float32)
    assert content_hash(a, {"k": 1}) == content_hash(a.copy(), {"k": 1})
    assert content_hash(a) != content_hash(a.astype(np.float64))
    assert content_hash(a) != content_hash(a.reshape(2, 2))
    (tmp_path / "f").write_bytes(b"abc")
    assert file_hash(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _crash_mid_write(path: str) -> None:
    import attrcli.store.artifacts as artifacts

    original = artifacts.h5py.File

    class Crashing(original):  # type: ignore[misc, valid-type]
        def create_dataset(self, *args, **kwargs):
            result = super().create_dataset(*args, **kwargs)
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            return result

    artifacts.h5py.File = Crashing
    artifacts.write_artifact(path, data={"x": np.ones((64, 64))})


def test_crash_mid_write_leaves_no_visible_artifact(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.h5"
    process = multiprocessing.get_context("fork").Process(target=_crash_mid_write, args=(str(target),))
    process.start()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    assert not target.exists()
    leftovers = list(target.parent.iterdir())
    assert all(p.name.startswith(".") for p in leftovers)  # only the hidden temporary file
    write_artifact(target, data={"x": np.zeros(2)})  # and a later write succeeds
    np.testing.assert_array_equal(read_artifact(target).data["x"], [0, 0])


def test_failed_write_removes_temporary_and_keeps_old_file(tmp_path: Path) -> None:
    target = write_artifact(tmp_path / "a.h5", data={"x": np.arange(3)})
    with pytest.raises(TypeError):
        write_artifact(target, data={"x": np.array([object()])})
    np.testing.assert_array_equal(read_artifact(target).data["x"], [0, 1, 2])
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_schema_mismatch_and_corruption_are_user_errors(tmp_path: Path) -> None:
    path = write_artifact(tmp_path / "a.h5", data={"x": np.arange(3)})
    with h5py.File(path, "a") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(UserError, match="schema version"):
        read_artifact(path)
    with pytest.raises(UserError, match="schema version"):
        read_provenance(path)
    truncated = tmp_path / "t.h5"
    good = write_artifact(tmp_path / "g.h5", data={"x": np.arange(1000)}).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt|truncated"):
        read_artifact(truncated)
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.arange(2)
    with pytest.raises(UserError, match="not an attrcli artifact"):
        read_artifact(foreign)
    with pytest.raises(UserError, match="no such file"):
        read_artifact(tmp_path / "missing.h5")


def test_lock_contention_names_the_holder(tmp_path: Path) -> None:
    target = tmp_path / "a.h5"
    script = (
        "import sys, time\n"
        "from attrcli.store import artifact_lock\n"
        f"with artifact_lock({str(target)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            with artifact_lock(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed holder: no stale lock blocks the next writer.
    with artifact_lock(target):
        pass


def test_lock_wait_blocks_until_released(tmp_path: Path) -> None:
    target = tmp_path / "a.h5"
    script = (
        "import time\n"
        "from attrcli.store import artifact_lock\n"
        f"with artifact_lock({str(target)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(1.0)\n"
        f"    open({str(tmp_path / 'released')!r}, 'w').close()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with artifact_lock(target, wait=True, poll=0.05):
        assert (tmp_path / "released").exists()  # we only got it after the holder let go
    holder.wait()


def test_provenance_is_json(tmp_path: Path) -> None:
    path = write_artifact(tmp_path / "a.h5", data={"x": np.arange(2)}, provenance=make_provenance(config={"p": Path("/x")}, inputs={}))
    with h5py.File(path) as handle:
        assert json.loads(handle.attrs["provenance"])["config"] == {"p": "/x"}


@pytest.mark.parametrize("name", ["my grids", "grilles été", "网格", "a..b", "x=1,y@2"])
def test_grid_names_are_any_file_name(tmp_path: Path, name: str) -> None:
    key = ArtifactKey("attributions", name, "gridpg", "m", "input", "grad")
    assert ArtifactKey.from_path(key.path(tmp_path), tmp_path) == key


@pytest.mark.parametrize("name", [".hidden", "..", "a/b", "line\nbreak", "tab\there", ""])
def test_grid_names_that_would_hide_or_split_a_path_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="rename the file"):
        ArtifactKey("attributions", name, "gridpg", "m", "input", "grad")
