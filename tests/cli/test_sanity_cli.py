"""``attrcli sanity`` through the real Typer app: JSON per key, trained model first; the figure;
bad input on one line with exit status 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from tests.conftest import make_conv_model, make_toy_grid_file

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def toy_model():
    """The two-convolution toy model in float32 (for --model tests.cli.test_sanity_cli:toy_model)."""
    model = make_conv_model()
    model.module.float()
    return model


def test_json_gives_steps_and_one_list_per_measure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_toy_grid_file(Path("toy.h5"), count=4)
    args = ["sanity", "--grids", "toy.h5", "--model", "tests.cli.test_sanity_cli:toy_model",
            "--layer", "input", "--method", "grad,random", "--device", "cpu", "--resamples", "100"]
    result = runner.invoke(app, [*args, "--json", "--figure", "curves.png"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["mode"] == "cascading"
    by_method = {k["key"].split("/")[-1]: k for k in document["keys"]}
    assert set(by_method) == {"grad", "random"}
    for item in by_method.values():
        assert item["steps"] == ["trained", "head", "0.4", "0.1"]
        for measure in ("spearman", "spearman_abs", "ssim", "score_change"):
            assert len(item[measure]) == 4 and len(item[f"{measure}_ci"]) == 4
        assert item["spearman"][0] == 1.0 and item["score_change"][0] == 0.0
    assert by_method["random"]["spearman"] == [1.0] * 4
    assert by_method["grad"]["spearman"][-1] < 0.5
    assert Path("curves.png").stat().st_size > 0
    again = runner.invoke(app, [*args, "--mode", "independent", "--quiet"])
    assert again.exit_code == 0, again.output
    paths = again.stdout.split()
    assert len(paths) == 2 and all("independent-seed0" in p for p in paths)


@pytest.mark.parametrize("option,value,message", [
    ("--mode", "sideways", "unknown --mode"),
    ("--measure", "pearson", "unknown --measure"),
    ("--method", "nosuch", "nosuch"),
    ("--figure", "curves.gif", "--figure curves.gif"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, option, value, message):
    monkeypatch.chdir(tmp_path)
    make_toy_grid_file(Path("toy.h5"), count=2)
    result = runner.invoke(app, ["sanity", "--grids", "toy.h5", "--model", "tests.cli.test_sanity_cli:toy_model",
                                 "--device", "cpu", option, value])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not Path("cache").exists()
