"""``attrcli export``: tidy tables with a pinned schema that round-trip in pandas to the numbers
of ``attrcli score --json``; Parquet, JSON lines, LaTeX; bad input on one line."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.errors import UserError
from attrcli.stages import export
from attrcli.stages.latex import escape, latex_summary
from attrcli.stages.score import score
from attrcli.store import ArtifactKey, read_artifact
from tests.plots.helpers import load_fakes, write_scores

fakes = load_fakes()
runner = CliRunner()
CACHE = Path("cache")
#: (layer, method) of the synthetic study; the method parts exercise parameters and precision.
KEYS = [("input", "grad"), ("input", "occlusion:k=8,s=4"), ("input", "gradcam@bf16"), ("final", "grad")]
KEY_SCHEMA = {"grids": "string", "setting": "string", "model": "string", "layer": "string",
              "method": "string", "method_name": "string", "precision": "string"}
ROW_SCHEMA = {"grid_index": "int64", "slot": "int64", "cell": "int64", "head": "int64", "class": "int64",
              "score": "float64", "numerator": "float64", "pointing": "float64"}


def cell_maps(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """(N, 4, 64, 64) maps at image resolution: ``inside[i, t]`` on target t's cell, ``outside``
    elsewhere; the localization score is exactly inside / (inside + 3 outside)."""
    count = inside.shape[0]
    maps = np.empty((count, 4, 64, 64))
    for i in range(count):
        for t in range(4):
            maps[i, t] = outside[i, t]
            r, c = divmod(t, 2)
            maps[i, t, 32 * r:32 * r + 32, 32 * c:32 * c + 32] = inside[i, t]
    return maps


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Four keys on 5 grid images × 4 targets with known scores; returns (grid, {key: expected})."""
    monkeypatch.chdir(tmp_path)
    grid = fakes.make_grid_file(Path("data/grids/toy.h5"), count=5)
    expected = {}
    for k, (layer, method) in enumerate(KEYS):
        rng = np.random.default_rng(k)
        inside, outside = rng.integers(1, 9, (5, 4)).astype(float), rng.integers(1, 9, (5, 4)).astype(float)
        fakes.make_attribution(CACHE, cell_maps(inside, outside), grid_path=grid, layer=layer, method=method)
        expected[(layer, method)] = inside / (inside + 3 * outside)
    return grid, expected


def scored(resamples: int = 200) -> list[Path]:
    from attrcli.metrics.intervals import BootstrapConfig

    paths = [ArtifactKey("attributions", "toy", "gridpg", "digits-vgg11", la, m).path(CACHE) for la, m in KEYS]
    return [r.path for r in score(attribution_paths=paths, bootstrap=BootstrapConfig(resamples=resamples))]


def test_the_row_schema_is_pinned(study):
    table = export.attribution_table(score_paths=scored())
    assert table.types == {**KEY_SCHEMA, "param_k": "string", "param_s": "string", **ROW_SCHEMA}
    assert list(table.columns) == list(table.types)
    frame = table.to_pandas()
    assert [str(frame[c].dtype) for c in ROW_SCHEMA] == ["int64"] * 5 + ["float64"] * 3
    assert len(frame) == 4 * 5 * 4


def test_rows_hold_the_scores_the_maths_gives(study):
    _, expected = study
    frame = export.attribution_table(score_paths=scored()).to_pandas()
    for (layer, method), want in expected.items():
        mine = frame[(frame.layer == layer) & (frame.method == method)]
        assert mine.grid_index.tolist() == np.repeat(np.arange(5), 4).tolist()
        assert mine.slot.tolist() == mine.cell.tolist() == [0, 1, 2, 3] * 5
        assert (mine["head"] == 0).all() and (mine["class"] == 0).all()  # the fake attribution's classes
        np.testing.assert_allclose(mine.score.to_numpy(), want.ravel(), rtol=1e-6)
    occlusion = frame[frame.method == "occlusion:k=8,s=4"]
    assert set(occlusion.method_name) == {"occlusion"} and set(occlusion.param_k) == {"8"}
    assert set(occlusion.param_s) == {"4"} and frame[frame.method == "grad"].param_k.isna().all()
    bf16 = frame[frame.method == "gradcam@bf16"]
    assert set(bf16.method_name) == {"gradcam"} and set(bf16.precision) == {"bf16"}
    assert set(frame[frame.method != "gradcam@bf16"].precision) == {"fp32"}


def test_csv_round_trips_to_the_score_artifacts_and_score_json(study):
    paths = scored()
    result = runner.invoke(app, ["export", *map(str, paths), "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=True)
    for path in paths:
        key = ArtifactKey.from_path(path)
        art = read_artifact(path)
        mine = frame[(frame.layer == key.layer) & (frame.method == key.method)]
        assert mine.score.tolist() == art.data["scores"].ravel().tolist()  # exact: repr floats
        assert mine.numerator.tolist() == art.data["numerators"].ravel().tolist()
    attributions = [str(ArtifactKey.from_path(p).sibling("attributions", p)) for p in paths]
    cli = json.loads(runner.invoke(app, ["score", *attributions, "--json", "--resamples", "200"]).stdout)
    summary = pd.read_csv(io.StringIO(runner.invoke(app, ["export", *map(str, paths), "--summary"]).stdout))
    assert len(cli["summary"]) == len(summary) == 4
    for row in cli["summary"]:
        mine = summary[(summary.layer == row["layer"]) & (summary.method == row["method"])].iloc[0]
        assert (mine["median"], mine.q1, mine.q3, mine["mean"], mine.perfect, mine["count"]) == (
            row["median"], row["q1"], row["q3"], row["mean"], row["perfect"], row["count"])
        assert [mine.median_low, mine.median_high] == row["median_ci"]
        grouped = frame[(frame.layer == row["layer"]) & (frame.method == row["method"])].score.median()
        assert grouped == row["median"]  # the per-attribution rows give the CLI's median


def test_parquet_keeps_types_and_values(study, tmp_path):
    paths = scored()
    out = tmp_path / "rows.parquet"
    result = runner.invoke(app, ["export", *map(str, paths), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    stored = pq.read_table(out)
    table = export.attribution_table(score_paths=paths)
    assert [(f.name, str(f.type)) for f in stored.schema] == [
        (name, {"string": "string", "int64": "int64", "float64": "double"}[kind]) for name, kind in table.types.items()]
    for name, kind in table.types.items():
        values = stored.column(name).to_pylist()
        if kind == "float64":
            np.testing.assert_array_equal(np.array(values, dtype=float), table.columns[name])
        else:
            assert values == list(table.columns[name])
    back = pd.read_parquet(out)
    assert back.score.tolist() == pd.read_csv(io.StringIO(runner.invoke(app, ["export", *map(str, paths)]).stdout)).score.tolist()


def test_jsonl_summary_and_missing_values(study):
    paths = scored()
    # a score artifact without intervals or pointing scores: its NaNs are JSON nulls
    bare = write_scores(CACHE, np.array([[0.5, 1.0]]), layer="middle", method="ixg")
    lines = runner.invoke(app, ["export", *map(str, paths + [bare]), "--summary", "--format", "jsonl"]).stdout
    rows = [json.loads(line) for line in lines.splitlines()]
    assert len(rows) == 5 and list(rows[0]) == list(export.summary_table(score_paths=paths).types)
    last = rows[-1]
    assert (last["median"], last["perfect"], last["median_low"], last["pointing"], last["confidence"]) == (
        0.75, 0.5, None, None, None)
    assert last["resamples"] == 0 and last["interval_method"] is None


def test_pointing_column_is_read_from_the_score_artifact(study):
    hits = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.uint8)
    path = write_scores(CACHE, np.array([[0.9, 0.1, 0.8], [0.2, 0.3, 0.7]]), method="grad")
    art = read_artifact(path)
    from attrcli.store import write_artifact

    write_artifact(path, data={**art.data, "pointing": hits}, attrs=art.attrs)
    table = export.attribution_table(score_paths=[path])
    assert table.columns["pointing"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert export.summary_table(score_paths=[path]).columns["pointing"].tolist() == [0.5]
    without = write_scores(CACHE, np.array([[0.9, 0.1]]), method="ixg")
    assert np.isnan(export.attribution_table(score_paths=[without]).columns["pointing"]).all()
    write_artifact(path, data={**art.data, "pointing": hits[:, :2]}, attrs=art.attrs)
    with pytest.raises(UserError, match="pointing has shape"):
        export.attribution_table(score_paths=[path])


def test_class_falls_back_to_the_grid_file_labels(study):
    grid, _ = study
    path = scored()[0]
    ArtifactKey.from_path(path).sibling("attributions", path).unlink()
    labels = read_artifact(grid, names=["labels"]).data["labels"]
    table = export.attribution_table(score_paths=[path])
    assert table.columns["class"].tolist() == labels[:, :4].ravel().tolist()
    assert set(table.columns["class"].tolist()) != {0}


def test_correlation_and_comparison_long_tables(study):
    from attrcli.stages.compare import compare
    from attrcli.stages.correlate import correlate

    paths = scored()
    corr = correlate(score_paths=paths)
    comp = compare(score_paths=paths[:3])
    rows = pd.read_csv(io.StringIO(runner.invoke(app, ["export", "--correlations", str(corr.path)]).stdout))
    assert len(rows) == 16 and list(rows.columns) == [c for c, _ in export.CORRELATION_COLUMNS]
    for i, label in enumerate(corr.rows):
        for j, column in enumerate(corr.columns):
            one = rows[(rows.row == label) & (rows.column == column)].iloc[0]
            assert (one.rho, one.rho_low, one.rho_high) == (corr.matrix[i, j], corr.low[i, j], corr.high[i, j])
    pairs = pd.read_csv(io.StringIO(runner.invoke(app, ["export", "--comparisons", str(comp.path)]).stdout))
    assert len(pairs) == 3
    for pair, (_, one) in zip(comp.pairs, pairs.iterrows()):
        assert (one["first"], one["second"]) == (comp.keys[pair.first], comp.keys[pair.second])
        assert (one.delta_median, one.delta_median_low, one.p_adjusted) == (
            pair.delta_median, pair.delta_median_ci[0], pair.p_adjusted)
    assert export.comparison_table(paths=[comp.path]).types == dict(export.COMPARISON_COLUMNS)


def _check_latex(text: str, medians: dict[tuple[str, str], float]) -> None:
    """Booktabs structure: environments nest, every row has the tabular's column count, rules in
    order, cells are the medians given, specials escaped."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack and text.count(r"\begin{table}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", text)[1].replace(" ", "")
    body = text[text.index(r"\toprule"):text.index(r"\bottomrule")]
    assert body.index(r"\cmidrule") < body.index(r"\midrule")
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    for line in rows:
        widths = [int(w) for w in re.findall(r"\\multicolumn\{(\d+)\}", line)]
        cells = line[:-2].rstrip().split(" & ")
        assert len(cells) + sum(w - 1 for w in widths) == len(spec)
    layers = rows[1][:-2].rstrip().split(" & ")
    assert layers == ["Method", "input", "final"]
    found = {}
    for line in rows[2:]:
        method, *cells = line[:-2].strip().split(" & ")
        for layer, cell in zip(layers[1:], cells):
            if cell != "--":
                found[(layer, method)] = float(re.search(r"(\d\.\d{3})", cell)[1])
    assert found == {k: round(v, 3) for k, v in medians.items()}
    assert all(line.count("{") == line.count("}") for line in text.splitlines())


def test_latex_is_a_booktabs_table_of_the_medians(study, tmp_path):
    from attrcli.metrics.summary import summarize

    paths = scored()
    result = runner.invoke(app, ["export", *map(str, paths), "--format", "latex"])
    assert result.exit_code == 0, result.output
    medians = {(r.layer, escape(r.method)): r.median for r in summarize(paths)}
    _check_latex(result.stdout, medians)
    assert r"\multicolumn{2}{c}{gridpg}" in result.stdout and "gradcam@bf16" in result.stdout
    assert escape("a_b&c%#$") == r"a\_b\&c\%\#\$"
    # compiled when TeX is installed, which CI (CI=true) requires: .ci/run installs it
    if shutil.which("pdflatex") or os.environ.get("CI") == "true":
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                       + result.stdout + "\n\\end{document}\n")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path,
                              capture_output=True, timeout=120)
        assert done.returncode == 0 and (tmp_path / "t.pdf").stat().st_size > 0


def test_latex_names_grid_files_when_a_setting_has_two():
    from attrcli.metrics.summary import ScoreSummary

    def row(grids, method, median):
        return ScoreSummary(path="x", grids=grids, setting="gridpg", model="m", layer="input", method=method,
                            count=1, median=median, q1=0, q3=1, mean=0.5, perfect=0, chance=0.25)

    text = latex_summary([row("a", "grad", 0.5), row("b", "grad", 0.25), row("a", "s_x", 0.75)])
    assert r"\multicolumn{1}{c}{gridpg (a)}" in text and r"\multicolumn{1}{c}{gridpg (b)}" in text
    assert r"s\_x & \textbf{0.750} & --" in text and r"grad & 0.500 & \textbf{0.250}" in text


def test_bad_input_is_one_line_and_writes_nothing(study, tmp_path, monkeypatch):
    paths = [str(p) for p in scored()]
    cases = [
        (["--format", "xml"], "unknown --format"),
        (["--format", "parquet"], "give --out"),
        (["--correlations", "--comparisons"], "not both"),
        (["--correlations", "--summary"], "not with --correlations"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["export", *paths, *extra])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    out = tmp_path / "x.parquet"
    result = runner.invoke(app, ["export", *paths, "--out", str(out)])
    assert result.exit_code == 2 and "pip install 'attrcli[export]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and not out.exists()


def test_export_and_report_help_load_nothing_heavy():
    from tests.structure.test_light_cli import _probe

    for command in ("export", "report"):
        found = _probe([command, "--help"])
        assert (found["code"], found["heavy"]) == (0, []) and "Usage" in found["stdout"]
