"""The public Python API: ``import attrcli`` is light, documents what it exports, and a
notebook's attribute → score → DataFrame gives the numbers of the command line."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import attrcli
from attrcli.cli.main import app
from attrcli.errors import UserError
from tests.stages.tiny_study import shared_tiny_study

HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "pandas", "pyarrow", "h5py", "captum", "typer")


def test_import_attrcli_loads_nothing_heavy():
    probe = ("import json, sys, attrcli; names = attrcli.__all__; fn = attrcli.summary; "
             f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # the probe can fail: a reader called loads what it needs
    called = subprocess.run([sys.executable, "-c", "import sys, attrcli\ntry:\n    attrcli.summary()\n"
                             "except Exception:\n    pass\nprint('h5py' in sys.modules)"],
                            capture_output=True, text=True, timeout=120)
    assert called.stdout.strip() == "True"


def test_every_exported_name_is_a_documented_keyword_only_function():
    assert attrcli.__all__[0] == "__version__"
    names = attrcli.__all__[1:]
    assert names[:7] == ["make_grids", "attribute", "score", "aggatt", "correlate", "compare", "run"]
    assert {"scores", "summary"} <= set(names) and set(names) <= set(dir(attrcli))
    for name in names:
        function = getattr(attrcli, name)
        assert callable(function) and len(inspect.getdoc(function)) > 40, name
        kinds = {p.kind for n, p in inspect.signature(function).parameters.items() if n != "paths"}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        attrcli.nope  # noqa: B018


@pytest.fixture(scope="module")
def study():
    return shared_tiny_study()


def test_a_notebook_gets_the_cli_table_as_a_dataframe(study, monkeypatch):
    """attribute → score → DataFrame: the medians per key equal ``attrcli score --json``'s."""
    import pandas as pd

    frame = attrcli.scores(grids="tiny", cache_root=study.cache)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 7 * 4 * 4  # 7 keys, 4 images, 4 targets
    table = attrcli.summary(grids="tiny", cache_root=study.cache)
    monkeypatch.chdir(study.cache.parent)
    result = CliRunner().invoke(app, ["score", "--grids", "tiny", "--json", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    cli = {(r["layer"], r["method"]): r for r in json.loads(result.stdout)["summary"]}
    assert len(cli) == len(table) == 7
    medians = frame.groupby(["layer", "method"]).score.median()
    for (layer, method), row in cli.items():
        assert medians[(layer, method)] == row["median"]
        mine = table[(table.layer == layer) & (table.method == method)].iloc[0]
        assert (mine["median"], mine.q1, mine.q3, mine["mean"], mine["count"]) == (
            row["median"], row["q1"], row["q3"], row["mean"], row["count"])
        assert [mine.median_low, mine.median_high] == row["median_ci"]
    occlusion = frame[frame.method_name == "occlusion"]
    assert set(occlusion.param_k) == {"16"} and set(occlusion.param_s) == {"16"}
    # the same selection by paths, and results of a stage, give the same rows
    by_paths = attrcli.scores(study.scores)
    assert by_paths.score.tolist() == frame.score.tolist()
    only = attrcli.summary(grids="tiny", cache_root=study.cache, layer="final", method=["gradcam", "grad"])
    assert only.method.tolist() == ["gradcam", "grad"] and set(only.layer) == {"final"}  # in the order asked


def test_readers_give_numpy_records_without_pandas(study, monkeypatch):
    with_pandas = attrcli.summary(study.scores)
    monkeypatch.setitem(sys.modules, "pandas", None)
    records = attrcli.summary(study.scores)
    assert isinstance(records, np.ndarray) and records.dtype.names == tuple(with_pandas.columns)
    assert records["median"].tolist() == with_pandas["median"].tolist()
    assert records["method"].tolist() == with_pandas["method"].tolist()
    rows = attrcli.correlations([study.correlation])
    assert len(rows) == 49 and np.isfinite(rows["rho"]).any()


def test_readers_refuse_what_they_cannot_read(study):
    with pytest.raises(UserError, match="nothing to read"):
        attrcli.summary()
    with pytest.raises(UserError, match="not both"):
        attrcli.summary(study.scores, grids="tiny")
    with pytest.raises(UserError, match="no method nope"):
        attrcli.summary(grids="tiny", cache_root=study.cache, method="nope")
    with pytest.raises(UserError, match="not a comparison artifact"):
        attrcli.comparisons([study.correlation])


def test_stage_wrappers_return_data_and_are_cached(study):
    again = attrcli.score(attributions=study.attributions, cache_root=study.cache, resamples=200)
    assert [r.status for r in again] == ["up to date"] * 7 and [r.path for r in again] == study.scores
    comparison = attrcli.compare(scores=study.scores[:2], cache_root=study.cache, resamples=200)
    assert len(comparison.pairs) == 1 and comparison.keys == [attrcli_label(p) for p in study.scores[:2]]


def attrcli_label(path: Path) -> str:
    from attrcli.store import ArtifactKey

    return ArtifactKey.from_path(path).label()
