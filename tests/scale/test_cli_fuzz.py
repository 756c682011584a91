"""Random option values and malformed keys: every run ends with exit 0 or 2, a message, and on
exit 2 nothing written."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attrcli.cli.main import app
from tests.scale.helpers import MODEL, files, grids

KEYS = st.sampled_from(["cache/attributions/../x.h5", "a:b:c", "", "cache/attributions/g/gridpg/m/input/grad.h5",
                        "x.shard-9-of-2.h5", "cache/scores/g/s/m/l/grad.shard-0-of-1.h5", "-", "/", "g.h5"])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
INTS = st.integers(min_value=-3, max_value=40).map(str)
VALUES = st.one_of(TEXT, INTS, KEYS)


def commands(g: str):
    return st.one_of(
        st.tuples(st.just("attribute"), st.just("--grids"), st.one_of(st.just(g), KEYS), st.just("--model"),
                  st.one_of(st.just(MODEL), TEXT), st.sampled_from(["--layer", "--method", "--setting", "--shard", "--batch-size", "--heads", "--device"]), VALUES),
        st.tuples(st.just("merge"), VALUES),
        st.tuples(st.just("score"), VALUES),
        st.tuples(st.just("status"), st.just("--grids"), st.one_of(st.just(g), KEYS), st.just("--model"), st.just(MODEL), st.sampled_from(["--method", "--layer", "--setting"]), VALUES),
        st.tuples(st.just("plan"), st.just("--grids"), st.just(g), st.just("--model"), st.just(MODEL), st.sampled_from(["--shards", "--method"]), VALUES),
        st.tuples(st.just("attribute"), st.just("--grids"), st.just(g), st.just("--model"), st.just(MODEL), st.just("--launcher"), VALUES),
    )


def test_cli_fuzz(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = str(grids(tmp_path, count=1))
    runner = CliRunner()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(commands(g))
    def check(argv):
        before = files(tmp_path)
        result = runner.invoke(app, [*argv, "-q"] if argv[0] == "attribute" else list(argv))
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
        assert result.exit_code in (0, 2), (argv, result.exit_code, result.output)
        assert result.output.strip(), argv
        if result.exit_code == 2:
            assert files(tmp_path) == before, argv

    check()
