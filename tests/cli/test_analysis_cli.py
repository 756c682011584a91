"""The score / aggatt / correlate commands through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.metrics import stages
from tests.plots.helpers import load_fakes

fakes = load_fakes()
runner = CliRunner()
CACHE = Path("cache")


def maps(count=20, strength=1.0, targets=4, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((count, targets, 8, 8))
    for t in range(targets):
        r, c = divmod(t, 2)
        out[:, t, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += strength
    return out


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A grid file and attributions for two layers x three methods, plus a DiFull key."""
    monkeypatch.chdir(tmp_path)
    grid = fakes.make_grid_file(Path("data/grids/toy.h5"))
    paths = {}
    for i, (layer, method) in enumerate(
        [(la, m) for la in ("input", "final") for m in ("grad", "gradcam", "ixg")]
    ):
        paths[layer, method] = fakes.make_attribution(
            CACHE, maps(strength=0.5 * i, seed=i), grid_path=grid, layer=layer, method=method
        )
    paths["difull"] = fakes.make_attribution(
        CACHE, maps(targets=2, seed=9), grid_path=grid, setting="difull", cells=[0, 3], heads=[0, 3]
    )
    return paths


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def correlate_gridpg(*args: str):
    """``attrcli correlate`` on the gridpg keys of the toy grid file."""
    return runner.invoke(app, ["correlate", "--grids", "toy", "--setting", "gridpg", *args])


def test_score_then_aggatt_pipe_through_stdin(study):
    attributions = "\n".join(str(study["input", m]) for m in ("grad", "ixg")) + "\n"
    scored = runner.invoke(app, ["score", "-", "--quiet"], input=attributions)
    assert scored.exit_code == 0, scored.output
    assert lines(scored.stdout) == [
        "cache/scores/toy/gridpg/digits-vgg11/input/grad.h5",
        "cache/scores/toy/gridpg/digits-vgg11/input/ixg.h5",
    ]
    agg = runner.invoke(app, ["aggatt", "-", "--quiet"], input=scored.stdout)
    assert agg.exit_code == 0, agg.output
    assert lines(agg.stdout) == [
        "cache/aggatt/toy/gridpg/digits-vgg11/input/grad.h5",
        "cache/aggatt/toy/gridpg/digits-vgg11/input/ixg.h5",
    ]
    assert all(Path(p).exists() for p in lines(agg.stdout))


def test_score_prints_summary_table_and_status_on_stderr(study):
    first = runner.invoke(app, ["score", str(study["final", "gradcam"])])
    assert first.exit_code == 0
    assert lines(first.stdout) == ["cache/scores/toy/gridpg/digits-vgg11/final/gradcam.h5"]
    assert "computed" in first.stderr and "median" in first.stderr and "gradcam" in first.stderr
    again = runner.invoke(app, ["score", str(study["final", "gradcam"])])
    assert "up to date" in again.stderr
    forced = runner.invoke(app, ["score", str(study["final", "gradcam"]), "--force"])
    assert "forced, recomputed" in forced.stderr


def test_score_json_by_selection(study):
    result = runner.invoke(
        app,
        [
            "score",
            "--grids",
            "data/grids/toy.h5",
            "--setting",
            "gridpg",
            "--model",
            "digits-vgg11",
            "--layer",
            "all",
            "--method",
            "all",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [a["key"] for a in document["artifacts"]] == [
        f"gridpg/digits-vgg11/{la}/{m}"
        for la in ("input", "final")
        for m in ("grad", "gradcam", "ixg")
    ]
    summary = {(s["layer"], s["method"]): s for s in document["summary"]}
    expected = stages.summarize([Path(a["path"]) for a in document["artifacts"]])
    for row in expected:
        assert summary[row.layer, row.method]["median"] == row.median
        assert summary[row.layer, row.method]["count"] == 80
    assert summary["final", "ixg"]["mean"] > summary["input", "grad"]["mean"]  # stronger bump


def test_correlate_selection_prints_matrix_and_writes_it(study):
    result = correlate_gridpg("--layer", "input,final", "--method", "gradcam,ixg", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["matrix"]) == 4 and document["matrix"][0][0] == 1.0
    assert Path(document["path"]).exists() and document["count"] == 80


def test_correlate_reference_row(study):
    result = correlate_gridpg("--layer", "input", "--reference", "final/gradcam", "--name", "tab1")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == ["cache/correlations/tab1.h5"]
    assert "final/gradcam" in result.stderr


def test_mismatched_keys_exit_2_with_the_reason_and_write_nothing(study):
    result = runner.invoke(app, ["correlate", str(study["input", "grad"]), str(study["difull"])])
    assert result.exit_code == 2
    assert "different cells" in result.stderr and "Traceback" not in result.output
    assert not (CACHE / "correlations").exists() and not (CACHE / "scores").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["score"], "nothing to do"),
        (["score", "cache/attributions/toy/gridpg/digits-vgg11/input/nope.h5"], "no such file"),
        (["score", "x.h5", "--grids", "toy"], "not both"),
        (["score", "x.h5", "--layer", "input"], "select keys with --grids"),
        (["correlate", "--grids", "toy", "--reference", "middle/grad"], "reference middle/grad"),
        (["score", "--grids", "toy", "--layer", "conv9"], "no layer conv9"),
        (["aggatt", "--grids", "toy", "--setting", "difull", "--cell", "1"], "evaluated cells"),
        (["correlate", "--grids", "toy", "--reference", "final"], "invalid reference"),
        (["score", "--grids", "toy", "--device", "tpu"], "unknown device"),
    ],
)
def test_bad_usage_exits_2(study, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (CACHE / "scores").exists()


def test_commands_pass_their_arguments_to_the_library(study, monkeypatch):
    seen = {}

    def fake_aggatt(**kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(stages, "aggatt", fake_aggatt)
    result = runner.invoke(
        app,
        [
            "aggatt",
            str(study["input", "grad"]),
            "--cell",
            "2",
            "--force",
            "--max-size",
            "32",
            "--cache-dir",
            "other",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["paths"] == [study["input", "grad"]] and seen["cell"] == 2
    assert seen["force"] is True and seen["max_size"] == 32 and seen["cache_root"] == Path("other")
