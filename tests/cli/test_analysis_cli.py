"""The score / aggatt / correlate commands through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.metrics.summary import summarize
from attrcli.stages import aggatt as aggatt_stage
from attrcli.stages import score as score_stage
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
    expected = summarize([Path(a["path"]) for a in document["artifacts"]])
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

    monkeypatch.setattr(aggatt_stage, "aggatt", fake_aggatt)
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


def test_device_is_resolved_as_for_attribute(study, monkeypatch):
    """``--device cuda:N`` is accepted like ``attribute``'s (one resolver for every command)."""
    import torch

    seen = {}

    def fake_score(**kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(score_stage, "score", fake_score)
    result = runner.invoke(app, ["score", str(study["input", "grad"]), "--device", "cuda:1", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["device"] == torch.device("cuda", 1)
    result = runner.invoke(app, ["score", str(study["input", "grad"]), "--device", "cuda:2"])
    assert result.exit_code == 2 and "only 2 CUDA devices" in result.stderr


def test_score_table_and_json_show_the_intervals(study):
    path = str(study["input", "ixg"])
    result = runner.invoke(app, ["score", path, "--resamples", "300", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["summary"]
    [expected] = summarize([Path(json.loads(result.stdout)["artifacts"][0]["path"])])
    assert row["median_ci"] == list(expected.median_ci) and row["resamples"] == 300
    assert row["median_ci"][0] <= row["median"] <= row["median_ci"][1] and row["seed"] == 3
    table = runner.invoke(app, ["score", path, "--resamples", "300", "--seed", "3"],
                          env={"COLUMNS": "160"})
    assert "up to date" in table.stderr and "median [CI]" in table.stderr
    low, high = expected.median_ci
    assert f"{expected.median:.3f} [{low:.2f}, {high:.2f}]" in table.stderr
    assert "95 % CI, bootstrap over grid images" in table.stderr


def test_correlate_json_has_interval_bounds(study):
    result = correlate_gridpg("--layer", "input", "--resamples", "200", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    low, high, matrix = (np.array(document[k], dtype=float) for k in ("low", "high", "matrix"))
    assert (low <= matrix + 1e-12).all() and (matrix <= high + 1e-12).all()
    assert document["intervals"]["resamples"] == 200


def test_compare_two_keys_prints_the_difference_and_the_test(study):
    result = runner.invoke(
        app,
        ["compare", "--grids", "toy", "--setting", "gridpg", "--model", "digits-vgg11",
         "--key", "final/ixg", "--key", "input/grad", "--resamples", "200"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    [path] = lines(result.stdout)
    assert path.startswith("cache/comparisons/toy.gridpg.digits-vgg11.")
    assert "ixg @ final vs grad @ input on gridpg · digits-vgg11" in result.stderr
    assert "Δmedian +" in result.stderr and "Wilcoxon" in result.stderr
    document = json.loads(runner.invoke(app, ["compare", str(study["final", "ixg"]),
                                              str(study["input", "grad"]), "--resamples", "200",
                                              "--json"]).stdout)
    assert document["status"] == "up to date" and document["path"] == path
    [pair] = document["pairs"]
    assert pair["delta_median"] > 0 and pair["delta_median_ci"][0] > 0 and pair["p_value"] < 0.01


def test_compare_matrix_states_the_correction(study):
    result = runner.invoke(app, ["compare", "--grids", "toy", "--setting", "gridpg",
                                 "--layer", "input", "--resamples", "200"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Holm correction over 3 comparisons" in result.stderr
    assert "row minus column" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "KEY_A", "DIFULL"], "cannot compare gridpg/digits-vgg11/input/grad with "
                                         "difull/digits-vgg11/input/grad: they target different"),
        (["compare", "KEY_A"], "at least two different keys"),
        (["compare", "--grids", "toy", "--key", "input/grad", "--key", "final/grad"],
         "give one --setting and one --model"),
        (["compare", "--grids", "toy", "--key", "gridpg/digits-vgg11/input/nope",
          "--key", "gridpg/digits-vgg11/input/grad"], "no attribution or score artifact"),
        (["compare", "--key", "input/grad"], "give --grids too"),
        (["compare", "KEY_A", "KEY_B", "--confidence", "1.5"], "between 0 and 1"),
        (["score", "KEY_A", "--resamples", "0"], "at least 100"),
        (["correlate", "KEY_A", "KEY_B", "--ci-method", "basic"], "valid: percentile, bca"),
    ],
)
def test_statistics_usage_errors_exit_2_with_one_line(study, args, message):
    names = {"KEY_A": str(study["input", "grad"]), "KEY_B": str(study["input", "ixg"]),
             "DIFULL": str(study["difull"])}
    result = runner.invoke(app, [names.get(a, a) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(lines(result.stderr)) == 1
    assert not (CACHE / "comparisons").exists() and not (CACHE / "scores").exists()
    assert not (CACHE / "correlations").exists()


def test_score_and_aggatt_refuse_attributions_of_a_truncated_grid_file(study):
    grid = Path("data/grids/toy.h5")
    with open(grid, "r+b") as handle:
        handle.truncate(grid.stat().st_size // 3)
    for command in ("score", "aggatt"):
        result = runner.invoke(app, [command, str(study["input", "grad"])], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        assert "computed from another version of data/grids/toy.h5" in result.stderr
        assert len(lines(result.stderr)) == 1
    assert not (CACHE / "scores").exists() and not (CACHE / "aggatt").exists()
