"""``attrcli attribute``: paths on stdout, status on stderr, exit 2 and nothing written on bad input.

The model is a user model given as ``module:attr`` (tests/engine/helpers.py), so the real command
runs end to end without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attrcli.stages.attribute as stage
from attrcli.cli.main import app
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids

runner = CliRunner()
MODEL = "tests.engine.helpers:tiny_vgg_model"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, ["attribute", "--model", MODEL, "--device", "cpu", "--quiet", *args])


def test_attribute_prints_the_paths_it_wrote_and_skips_them_on_rerun(workdir):
    write_grids(Path("data/grids/toy.h5"), count=3, variant="corners")
    args = ["--grids", "data/grids/toy.h5", "--setting", "difull", "--layer", "input,final",
            "--method", "grad,gradcam", "--batch-size", "2"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    paths = result.stdout.splitlines()
    assert paths == [
        f"cache/attributions/toy/difull/tiny-vgg/{layer}/{method}.h5"
        for layer in ("input", "final") for method in ("grad", "gradcam")
    ]
    assert all(Path(p).is_file() for p in paths)
    assert result.stderr.count("computed") == 4
    assert read_artifact(paths[0]).data["maps"].shape == (3, 2, 64, 64)

    again = invoke(*args)
    assert again.exit_code == 0 and again.stdout.splitlines() == paths
    assert again.stderr.count("up to date") == 4
    forced = invoke(*args, "--force", "--json")
    summary = json.loads(forced.stdout)
    assert [s["path"] for s in summary] == paths and {s["status"] for s in summary} == {"computed"}


def test_the_command_passes_its_options_to_the_library(workdir, monkeypatch):
    seen = {}
    monkeypatch.setattr(stage, "run_attribute", lambda request, progress=None: seen.update(vars(request)) or [])
    result = invoke("--grids", "g.h5", "--setting", "difull,dipart", "--layer", "middle", "--method",
                    "intgrad:steps=5,ixg", "--heads", "all", "--batch-size", "7", "--cache-dir", "c", "--force")
    assert result.exit_code == 0, result.output
    assert seen["setting"] == ["difull", "dipart"] and seen["layers"] == "middle"
    assert seen["methods"] == "intgrad:steps=5,ixg" and seen["heads"] == "all"
    assert (seen["batch_size"], seen["cache_root"], seen["force"], seen["device"]) == (7, Path("c"), True, "cpu")
    assert seen["model"] == MODEL and seen["grids"] == Path("g.h5")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "features.99"], "has no layer 'features.99'"),
        (["--setting", "difull"], "setting difull needs corners grids"),
        (["--method", "gradcam+"], "unknown method 'gradcam+'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--heads", "9"], "invalid --heads '9'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, args, message):
    write_grids(Path("g.h5"), count=1)
    result = invoke("--grids", "g.h5", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in workdir.rglob("*")) == ["g.h5"]


def test_grid_files_that_do_not_fit_the_model_exit_2(workdir):
    write_grids(Path("small.h5"), count=1, cell=16)
    write_grids(Path("few.h5"), count=1, classes=5)
    small = invoke("--grids", "small.h5")
    assert small.exit_code == 2 and "16-pixel cells but tiny-vgg expects 32-pixel cells" in small.stderr
    few = invoke("--grids", "few.h5")
    assert few.exit_code == 2 and "5-class dataset but tiny-vgg has 10 classes" in few.stderr
    missing = invoke("--grids", "nothing.h5")
    assert missing.exit_code == 2 and "nothing.h5: no such file" in missing.stderr
    assert sorted(p.name for p in workdir.rglob("*")) == ["few.h5", "small.h5"]
