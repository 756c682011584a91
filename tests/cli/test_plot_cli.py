"""``attrcli plot <figure>`` through the real Typer app: paths on stdout, exit 2 on bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.store import file_hash


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load("attrcli_plot_helpers", Path(__file__).parents[1] / "plots" / "helpers.py")
fakes = helpers.load_fakes()
runner = CliRunner()


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A grid file; attributions, scores and AggAtt for 2 layers x 2 methods; a smoothing sweep."""
    monkeypatch.chdir(tmp_path)
    found = helpers.aggatt_study(fakes)
    rng = np.random.default_rng(0)
    same = {"grids_hash": file_hash(found["grid"])}  # comparable with the real scores
    for k in (9, 33):
        helpers.write_scores(helpers.CACHE, rng.random((20, 4)), method=f"s-intgrad:k={k}", **same)
    helpers.write_scores(helpers.CACHE, rng.random((20, 4)), method="intgrad", **same)
    return found


def test_boxes_by_selection_writes_the_default_path(study):
    result = runner.invoke(app, ["plot", "boxes", "--grids", "data/grids/toy.h5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "reports/figures/boxes.png"
    helpers.assert_drawn(Path("reports/figures/boxes.png"))


@pytest.mark.parametrize(
    ("args", "written", "magic"),
    [
        (["--format", "pdf"], "reports/figures/aggatt.pdf", b"%PDF"),
        (["--out", "figs/a.svg"], "figs/a.svg", b"<?xml"),
    ],
)
def test_aggatt_formats(study, args, written, magic):
    result = runner.invoke(app, ["plot", "aggatt", "--grids", "toy", "--layer", "final", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == written
    assert Path(written).read_bytes().startswith(magic)


def test_paths_from_stdin(study):
    scores = "\n".join(str(p).replace("attributions", "scores")
                       for p in study["attributions"].values())
    result = runner.invoke(app, ["plot", "correlation", "-", "--out", "c.png"], input=scores)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "c.png"
    helpers.assert_drawn(Path("c.png"))


def test_examples_and_smoothing(study):
    examples = runner.invoke(app, ["plot", "examples", str(study["aggatt"]["final", "grad"])])
    assert examples.exit_code == 0, examples.output
    helpers.assert_drawn(Path(examples.stdout.strip()))
    smoothing = runner.invoke(app, ["plot", "smoothing", "--grids", "toy", "--model",
                                    "digits-vgg11"])
    assert smoothing.exit_code == 0, smoothing.output
    assert smoothing.stdout.strip() == "reports/figures/smoothing.png"


def test_the_command_passes_its_arguments_to_the_library(study, monkeypatch):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return kwargs["out"]

    monkeypatch.setattr("attrcli.plots.plot_smoothing", fake)  # the command calls the library late
    result = runner.invoke(app, ["plot", "smoothing", "--grids", "toy", "--reference",
                                 "input/grad", "--format", "svg"])
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["reference"] == "input/grad" and call["layer"] == "input"
    assert call["out"] == Path("reports/figures/smoothing.svg") and call["fmt"] == "svg"
    assert Path("cache/scores/toy/gridpg/digits-vgg11/input/s-intgrad:k=9.h5") in call["score_paths"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["boxes", "--grids", "other"], "no score artifacts for grids 'other': searched cache/scores/other"),
        (["aggatt", "--grids", "toy", "--cache-dir", "elsewhere"], "searched elsewhere/aggatt/toy"),
        (["boxes", "--grids", "toy", "--method", "rise"], "no method rise"),
        (["boxes"], "nothing to plot"),
        (["boxes", "--grids", "toy", "--format", "gif"], "valid: png, pdf, svg"),
        (["boxes", "--grids", "toy", "--out", "x.pdf", "--format", "png"], "does not match"),
        (["boxes", "cache/scores/toy/gridpg/digits-vgg11/input/grad.h5", "--grids", "toy"],
         "not both"),
        (["smoothing", "--grids", "toy", "--layer", "final"], "no s-intgrad or s-ixg"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(study, args, message):
    result = runner.invoke(app, ["plot", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("reports").exists() and not Path("x.pdf").exists()


def test_unknown_figure_is_a_usage_error(study):
    result = runner.invoke(app, ["plot", "histogram"])
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_boxes_pointing_passes_the_flag_to_the_library(study, monkeypatch):
    calls = []
    monkeypatch.setattr("attrcli.plots.plot_boxes", lambda **kw: calls.append(kw) or kw["out"])
    for args, expected in ((["--pointing"], True), ([], False)):
        result = runner.invoke(app, ["plot", "boxes", "--grids", "toy", *args])
        assert result.exit_code == 0, result.output
        assert calls[-1]["pointing"] is expected
