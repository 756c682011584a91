"""Bad invocations of every command: exit 2, one line on stderr, no traceback, nothing written.

``test_bad_invocations_are_refused_in_one_line`` draws a few hundred command lines from a fixed
seed: each is a valid base line of one command with one or two things made wrong (every case
of issue 19 is among them, each at least once). All must be refused while the input is
checked, before a model runs, weights are trained or a file is written. The hypothesis test
below it throws random values at a few options and only asks for exit 0 or 2 and a message.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch
import typer.main
import typer.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attrcli.cli.main import app
from tests.scale.helpers import MODEL, files, grids

FAST_MODEL = "digits-vgg11"  # checked on its weightless copy; with --weights random nothing trains
POSITIVE = ["0", "-1", "-64", "x", "2.5", "", "1e3"]  # bad values of counts that must be >= 1
NATURAL = ["-1", "-9", "x", "0.5", ""]  # bad values of numbers that must be >= 0


def _cases(attr: str, g: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per command: a base command line and the ways of making it wrong."""
    grid_run = ["--grids", g, "--model", FAST_MODEL, "--weights", "random", "--layer", "input", "--method", "grad"]
    methods = [["--method", m] for m in (
        "os:getcwd", "json:JSONDecoder", "builtins:int", "nope", "occlusion:k=1000", "occlusion:k=3,k=5",
        "intgrad:steps=0", "intgrad:steps=-1", "intgrad:rule=foo",
    )]
    models = [["--model", m] for m in ("json:loads", ":", "nope", "os:sep", "json:")]
    caches = [["--cache-dir", c] for c in ("file.txt", "/dev/null", "/proc/attrcli", "file.txt/sub")]
    weights = [["--weights", w] for w in ("missing.pt", "junk.pt", "legacy.pt", "wrong.pt", "other=junk.pt", "")]
    grid_files = [["--grids", x] for x in ("missing.h5", "adir", "/dev/null", "file.txt")]
    common = models + methods + caches + grid_files + [
        ["--setting", "nope"], ["--layer", "nope"], ["--heads", "9"], ["--device", "nope"], ["--bogus"],
        *[["--batch-size", v] for v in POSITIVE], *[["--seed", v] for v in NATURAL],
    ]
    launcher = [
        ["--launcher", "nope"], ["--launcher", "local", "--shards", "0"], ["--launcher", "slurm", "--time", "0"],
        ["--launcher", "slurm", "--array-parallelism", "0"], ["--launcher", "local", "--gpus-per-task", "-1"],
        ["--launcher", "local", "--shards", "5"],
    ]
    analysis_paths = [[], ["missing.h5"], [g], ["file.txt"], [attr, "--grids", "g"], ["--grids", "nope"],
                      ["--grids", "g", "--cache-dir", "/dev/null"], [attr, "--setting", "gridpg"], [attr, "--bogus"]]
    figure = analysis_paths + [
        [attr, "--out", "adir"], [attr, "--out", "/dev/null"], [attr, "--out", "bad/x.foo"],
        [attr, "--format", "gif"], [attr, "--out", "x.png", "--format", "pdf"], [attr, "--out", "file.txt/x.png"],
    ]
    out = {
        "attribute": (["attribute", *grid_run, "--device", "cpu", "-q"], common + weights + launcher + [
            ["--shard", "2/2"], ["--shard", "x"], ["--launcher", "local", "--shard", "0/2"],
        ]),
        "launch": (["launch", *grid_run, "--launcher", "local", "--device", "cpu", "-q"], models + methods[:4] + caches[:2] + [
            ["--launcher", "nope"], ["--shards", "0"], ["--shards", "5"], ["--time", "0"], ["--array-parallelism", "0"],
            ["--gpus-per-task", "-1"], ["--weights", "other=x.pt"], ["--weights", "junk.pt"], ["--grids", "missing.h5"],
        ]),
        "plan": (["plan", *grid_run], [
            ["--shards", v] for v in POSITIVE] + [["--shards", "5"], ["--batch-size", "0"], ["--seed", "-3"],
            ["--weights", "other=junk.pt"], ["--method", "builtins:int"], ["--model", ":"], ["--grids", "missing.h5"],
            ["--cache-dir", "/dev/null"],
        ]),
        "status": (["status", *grid_run], [
            ["--grids", "missing.h5"], ["--batch-size", "0"], ["--seed", "-1"], ["--shards", "0"],
            ["--cache-dir", "/dev/null"], ["--layer", "nope"], ["--method", "json:JSONDecoder"], ["--model", "json:loads"],
        ]),
        "status-summary": (["status"], [["--cache-dir", "/dev/null"], ["--cache-dir", "file.txt"], ["--json", "x"]]),
        "merge": (["merge"], [[], ["missing.h5"], ["file.txt"], [g], [attr], ["--all", "--cache-dir", "/dev/null"]]),
        "score": (["score"], analysis_paths),
        "aggatt": (["aggatt"], analysis_paths + [[attr, "--max-size", "0"], [attr, "--cell", "99"], [attr, "--cell", "x"]]),
        "correlate": (["correlate"], analysis_paths + [[attr, "--name", "../x"]]),
        "compare": (["compare"], [[], ["missing.h5"], ["file.txt"], ["--grids", "nope"]]),
        **{f"plot {name}": (["plot", name], figure) for name in ("boxes", "aggatt", "examples", "correlation", "smoothing")},
        "plot": (["plot"], [["nope"], ["boxes", "--bogus"]]),
        "make-grids": (["make-grids", "--variant", "distinct", "--count", "1", "--out-dir", "new-grids", "--device", "cpu"], [
            ["--out-dir", "file.txt"], ["--out-dir", "/dev/null"], ["--out-dir", "/proc/attrcli"], ["--cache-dir", "/dev/null"],
            ["--n", "1"], ["--count", "0"], ["--min-conf", "2"], ["--seed", "-1"], ["--batch-size", "0"], ["--cell-size", "0"],
            ["--variant", "nope"], ["--dataset", "nope"], ["--dataset", "json:loads"], ["--device", "nope"], ["--models", ""],
        ]),
        "import-grids": (["import-grids"], [["missing.npz", "--variant", "distinct"], ["file.txt", "--variant", "distinct"]]),
        "run": (["run", "-q", "--count", "1", "--data-dir", "rd", "--cache-dir", "rc", "--reports-dir", "rr"], [
            ["--preset", "nope"], ["--count", "0"], ["--count", "-2"], ["--batch-size", "0"], ["--format", "gif"],
            ["--launcher", "nope"], ["--weights", "junk.pt"], ["--weights", "nope=junk.pt"],
            ["--weights", "digits-vgg11=junk.pt"], ["--weights", "digits-vgg11=legacy.pt"],
            ["--weights", "digits-vgg11=missing.pt"], ["--weights", "digits-resnet18=wrong.pt"], ["--data-dir", "/dev/null"],
            ["--cache-dir", "file.txt"], ["--reports-dir", "/proc/attrcli"], ["--device", "nope"],
        ]),
        "models": (["models"], models),
        "app": ([], [["--bogus"], ["bogus-command"], ["attribute", "--batch-size"]]),
    }
    return out


def invocations(attr: str, g: str, count: int, seed: int = 19) -> list[list[str]]:
    """Every case once, then random pairs of cases of one command up to ``count`` lines."""
    cases = _cases(attr, g)
    lines = [base + bad for base, bads in cases.values() for bad in bads]
    rng = random.Random(seed)
    names = sorted(cases)
    while len(lines) < count:
        base, bads = cases[rng.choice(names)]
        lines.append(base + rng.choice(bads) + rng.choice(bads))
    return lines


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> tuple[Path, str, str]:
    """A grid file, one attribution of it, and bad files to pass around."""
    monkeypatch.chdir(tmp_path)
    g = grids(tmp_path, count=1)
    result = CliRunner().invoke(app, ["attribute", "--grids", str(g), "--model", FAST_MODEL, "--weights", "random",
                                      "--layer", "input", "--method", "grad", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    attr = result.stdout.strip()
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"hello, not a pickle")
    with open(tmp_path / "legacy.pt", "wb") as handle:  # torch warns about its protocol, then refuses it
        pickle.dump({"a": 1}, handle, protocol=4)
    torch.save({"w": torch.zeros(2)}, tmp_path / "wrong.pt")
    return tmp_path, attr, "g.h5"


def test_bad_invocations_are_refused_in_one_line(workdir, monkeypatch):
    root, attr, g = workdir
    if hasattr(typer.testing, "_get_command"):  # build the click command once, not per invocation
        monkeypatch.setattr(typer.testing, "_get_command", lambda _app, built=typer.main.get_command(app): built)
    runner = CliRunner()
    lines = invocations(attr, g, count=320)
    assert len(lines) >= 300
    before = _tree(root)
    failures = []
    for argv in lines:
        result = runner.invoke(app, argv)
        problems = []
        if result.exit_code != 2:
            problems.append(f"exit {result.exit_code}")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"raised {result.exception!r}")
        if "Traceback" in result.output or result.stderr.count("\n") != 1 or not result.stderr.strip():
            problems.append(f"stderr {result.stderr!r}")
        after = _tree(root)
        if after != before:
            problems.append(f"changed {sorted(set(after) ^ set(before)) or 'file contents'}")
            before = after
        if problems:
            failures.append(f"{argv}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} of {len(lines)})"


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
