"""SIGKILL mid-run: the rerun resumes from the checkpointed chunks and equals an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np

import attrcli.engine.attribute as engine
from attrcli.stages.attribute import attribute
from attrcli.store import read_artifact
from tests.scale.helpers import MODEL, grids, subprocess_env

METHOD = "intgrad:steps=6"
COUNT = 6


def test_sigkill_then_resume(tmp_path, monkeypatch):
    g = grids(tmp_path, count=COUNT)
    args = ["--grids", str(g), "--model", MODEL, "--layer", "input", "--method", METHOD, "--batch-size", "1",
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-q", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "attrcli.cli.main", "attribute", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = tmp_path / "cache/attributions/g/gridpg/tiny-vgg/input" / f"{METHOD}.h5.partial"
    while proc.poll() is None and len(list(partial.glob("chunk-*.npy"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(partial.glob("chunk-*.npy"))
    assert proc.returncode == -signal.SIGKILL and 1 <= len(done) < COUNT, "the run finished before the kill"
    assert not partial.with_name(f"{METHOD}.h5").exists()

    computed: list[int] = []
    real = engine.compute_maps
    monkeypatch.setattr(engine, "compute_maps", lambda s, x, *a, **k: computed.append(len(x)) or real(s, x, *a, **k))
    (result,) = attribute(grids=g, setting="gridpg", model=MODEL, layers="input", methods=METHOD,
                                 batch_size=1, cache_root=tmp_path / "cache")
    assert result.status == "resumed" and len(computed) == COUNT - len(done) and not partial.exists()
    (reference,) = attribute(grids=g, setting="gridpg", model=MODEL, layers="input", methods=METHOD,
                                    batch_size=1, cache_root=tmp_path / "ref")
    resumed, ref = read_artifact(result.path), read_artifact(reference.path)
    assert np.array_equal(resumed.data["maps"], ref.data["maps"]) and np.array_equal(resumed.data["grid_index"], np.arange(COUNT))
    assert json.loads(json.dumps(resumed.provenance["inputs"])) == ref.provenance["inputs"]
