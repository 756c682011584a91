"""``--precision`` end to end on a tiny model on the CPU: keys, provenance, refusals, the commands
that plan, launch and report on keys, and the analysis stages on ``@bf16`` keys.

The model is a user model (``module:attr``, tests/engine/helpers.py) with fixed random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.metrics.selection import method_matches
from attrcli.stages import launch
from attrcli.stages.launch import LaunchOptions
from attrcli.stages.plan import AttributeRequest, plan
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids
from tests.scale.test_launch import FakeExecutor

runner = CliRunner()
MODEL = "tests.engine.helpers:tiny_vgg_model"
ROOT = "cache/attributions/toy/gridpg/tiny-vgg"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_grids(Path("toy.h5"), count=3)
    return tmp_path


def attribute(*args: str):
    return runner.invoke(app, ["attribute", "--grids", "toy.h5", "--model", MODEL, "--device", "cpu",
                               "--quiet", "--batch-size", "2", *args])


def _provenance_without_clock(path: str) -> dict:
    prov = dict(read_artifact(path).provenance)
    for name in ("seconds", "created", "time", "timestamp", "host", "hostname", "versions", "version"):
        prov.pop(name, None)
    return prov


def test_bf16_keys_apart_with_precision_in_provenance_and_fp32_unchanged(workdir):
    args = ["--layer", "middle", "--method", "gradcam,occlusion"]
    plain = attribute(*args)
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.splitlines() == [f"{ROOT}/middle/gradcam.h5", f"{ROOT}/middle/occlusion.h5"]
    fp32 = {p: (read_artifact(p).data["maps"], _provenance_without_clock(p)) for p in plain.stdout.splitlines()}

    low = attribute(*args, "--precision", "BF16")  # names are normalised
    assert low.exit_code == 0, low.output
    assert low.stdout.splitlines() == [f"{ROOT}/middle/gradcam@bf16.h5", f"{ROOT}/middle/occlusion@bf16.h5"]
    assert low.stderr.count("computed") == 2
    for path in low.stdout.splitlines():
        art = read_artifact(path)
        config = art.provenance["config"]
        assert config["precision"] == "bf16" and config["identity"]["precision"] == "bf16"
        assert art.attrs["method"] == path.rsplit("/", 1)[1].split("@")[0]  # the spec, no suffix
        reference = read_artifact(path.replace("@bf16", "")).data["maps"]
        assert art.data["maps"].dtype == np.float32 and not np.array_equal(art.data["maps"], reference)
        corr = np.corrcoef(art.data["maps"].ravel(), reference.ravel())[0, 1]
        assert corr > 0.9, (path, corr)

    # fp32: the same keys, identity without a precision, fresh for a run that names it, unchanged
    explicit = attribute(*args, "--precision", "fp32")
    assert explicit.exit_code == 0 and explicit.stderr.count("up to date") == 2
    for path, (maps, prov) in fp32.items():
        art = read_artifact(path)
        assert "precision" not in art.provenance["config"]["identity"]
        assert art.provenance["config"]["precision"] == "fp32"
        assert np.array_equal(art.data["maps"], maps) and _provenance_without_clock(path) == prov
    forced = attribute(*args, "--precision", "fp32", "--force")
    assert forced.exit_code == 0
    for path, (maps, prov) in fp32.items():
        assert np.array_equal(read_artifact(path).data["maps"], maps)
        assert _provenance_without_clock(path) == prov


def test_fp32_request_plans_the_keys_and_identities_of_a_request_without_precision(workdir):
    common = {"grids": "toy.h5", "model": MODEL, "layers": "input,middle", "methods": "grad,rise:masks=8,s-ixg:k=3"}
    before = plan(AttributeRequest(**common)).jobs
    same = plan(AttributeRequest(**common, precision="fp32")).jobs
    low = plan(AttributeRequest(**common, precision="bf16")).jobs
    assert [j.key for j in before] == [j.key for j in same] and [j.identity for j in before] == [j.identity for j in same]
    assert all("precision" not in j.identity for j in before)
    assert [j.key.method for j in low] == [j.key.method + "@bf16" for j in before]
    assert [{**j.identity, "precision": "bf16"} for j in before] == [j.identity for j in low]
    derived = [j for j in low if j.kind == "derived"]
    assert derived and all(j.base_path.name == "ixg@bf16.h5" for j in derived)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "tf32"], "precision tf32 needs a CUDA device, got cpu; valid on cpu: fp32, bf16"),
        (["--precision", "fp16"], "unknown precision 'fp16'; valid: fp32, tf32, bf16"),
        (["--precision", "tf32", "--launcher", "local"], "precision tf32 needs a CUDA device"),
    ],
)
def test_refused_precisions_exit_2_with_one_line_and_write_nothing(workdir, args, message):
    result = attribute("--method", "grad", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1 and result.stdout == ""
    assert sorted(p.name for p in workdir.rglob("*")) == ["toy.h5"]


def test_tf32_with_auto_device_on_a_cpu_machine_is_refused_before_anything_is_written(workdir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["attribute", "--grids", "toy.h5", "--model", MODEL, "--device", "auto",
                                 "--precision", "tf32", "--quiet"])
    assert result.exit_code == 2 and "tf32 needs a CUDA device" in result.stderr
    assert sorted(p.name for p in workdir.rglob("*")) == ["toy.h5"]


def test_plan_carries_the_precision_and_status_tells_the_keys_apart(workdir):
    args = ["--grids", "toy.h5", "--model", MODEL, "--layer", "input", "--method", "grad"]
    lines = runner.invoke(app, ["plan", *args, "--shards", "2", "--precision", "bf16"]).stdout.splitlines()
    assert len(lines) == 3 and all("--precision bf16" in line for line in lines[:2])
    assert lines[2].endswith(f"{ROOT}/input/grad@bf16.h5")
    plain = runner.invoke(app, ["plan", *args, "--shards", "2"]).stdout.splitlines()
    assert len(plain) == 3 and not any("--precision" in line for line in plain)
    assert plain[2].endswith(f"{ROOT}/input/grad.h5")
    # a planned tf32 line for a GPU node is printed on a CPU machine (device auto) ...
    tf32 = runner.invoke(app, ["plan", *args, "--precision", "tf32"])
    assert tf32.exit_code == 0 and "--precision tf32" in tf32.stdout
    # ... but not for an explicit CPU
    refused = runner.invoke(app, ["plan", *args, "--precision", "tf32", "--device", "cpu"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1

    assert attribute("--layer", "input", "--method", "grad", "--precision", "bf16").exit_code == 0
    status = {p: json.loads(runner.invoke(app, ["status", *args, "--json", *extra]).stdout)
              for p, extra in (("fp32", []), ("bf16", ["--precision", "bf16"]))}
    assert [(r["key"], r["state"]) for r in status["bf16"]] == [("gridpg/tiny-vgg/input/grad@bf16", "done")]
    assert [(r["key"], r["state"]) for r in status["fp32"]] == [("gridpg/tiny-vgg/input/grad", "missing")]


def test_launch_carries_the_precision_to_its_tasks_and_merges_bf16_shards(workdir, monkeypatch):
    monkeypatch.setattr(launch, "_executor", lambda *a: FakeExecutor())
    request = AttributeRequest(grids="toy.h5", model=MODEL, layers="input", methods="ixg,s-ixg:k=3",
                               device="cpu", batch_size=2, shards=2, precision="bf16")
    out = launch.launch_attribute(request, LaunchOptions(launcher="local"))
    assert [(c.precision, c.shard) for c in FakeExecutor.calls] == [("bf16", (0, 2)), ("bf16", (1, 2))]
    assert sorted(r.path.name for r in out) == ["ixg@bf16.h5", "s-ixg:k=3@bf16.h5"]
    inline = attribute("--layer", "input", "--method", "ixg,s-ixg:k=3", "--precision", "bf16", "--force",
                       "--cache-dir", "inline")
    assert inline.exit_code == 0, inline.output
    for result in out:
        mine = read_artifact(result.path)
        other = read_artifact(Path("inline") / result.path.relative_to("cache"))
        assert np.array_equal(mine.data["maps"], other.data["maps"])
        assert mine.provenance["config"]["precision"] == "bf16"
    smooth = read_artifact(next(r.path for r in out if r.path.name.startswith("s-ixg")))
    assert smooth.provenance["config"]["identity"]["precision"] == "bf16"


def test_the_analysis_commands_work_on_bf16_keys_beside_fp32(workdir):
    args = ["--layer", "middle,final", "--method", "gradcam,grad"]
    assert attribute(*args).exit_code == 0
    assert attribute(*args, "--precision", "bf16").exit_code == 0
    scored = runner.invoke(app, ["score", "--grids", "toy", "--method", "gradcam", "--quiet"])
    assert scored.exit_code == 0, scored.output
    names = sorted(Path(p).name for p in scored.stdout.split())
    assert names == ["gradcam.h5", "gradcam.h5", "gradcam@bf16.h5", "gradcam@bf16.h5"]
    fp32 = read_artifact("cache/scores/toy/gridpg/tiny-vgg/middle/gradcam.h5").data["scores"]
    bf16 = read_artifact("cache/scores/toy/gridpg/tiny-vgg/middle/gradcam@bf16.h5").data["scores"]
    assert fp32.shape == bf16.shape and np.abs(fp32 - bf16).max() < 0.2
    agg = runner.invoke(app, ["aggatt", "--grids", "toy", "--method", "gradcam@bf16", "--quiet"])
    assert agg.exit_code == 0, agg.output
    assert sorted(agg.stdout.split()) == [f"cache/aggatt/toy/gridpg/tiny-vgg/{layer}/gradcam@bf16.h5"
                                          for layer in ("final", "middle")]
    compared = runner.invoke(app, ["compare", "--grids", "toy", "--setting", "gridpg", "--model", "tiny-vgg",
                                   "--key", "middle/gradcam", "--key", "middle/gradcam@bf16", "--json",
                                   "--resamples", "100"])
    assert compared.exit_code == 0, compared.output
    assert "gradcam@bf16" in compared.stdout
    correlated = runner.invoke(app, ["correlate", "--grids", "toy", "--layer", "middle", "--method", "gradcam",
                                     "--quiet", "--resamples", "100"])
    assert correlated.exit_code == 0, correlated.output
    plotted = runner.invoke(app, ["plot", "aggatt", "--grids", "toy", "--method", "gradcam", "--out", "a.png"])
    assert plotted.exit_code == 0 and Path("a.png").is_file(), plotted.output


def test_a_bare_method_selects_every_precision_a_suffix_one():
    assert method_matches("gradcam", "gradcam@bf16") and method_matches("gradcam", "gradcam:k=1@tf32")
    assert method_matches("gradcam@bf16", "gradcam@bf16") and not method_matches("gradcam@bf16", "gradcam")
    assert not method_matches("occlusion:k=8", "occlusion:k=8@bf16") and not method_matches("grad", "gradcam@bf16")


def test_run_passes_the_precision_to_the_study(monkeypatch):
    from attrcli.stages import run

    seen = {}

    def fake(**kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(run, "run_study", fake)
    runner.invoke(app, ["run", "--precision", "bf16", "--quiet"])
    assert seen["precision"] == "bf16"
    assert run._base_key(type("K", (), {"setting": "gridpg", "model": "m", "method": "gradcam@bf16"})(), ["gradcam"])
