"""``--launcher slurm`` on a real SLURM cluster: ``launch``, ``run``, a failing task, ``--no-wait``.

``.ci/run`` starts a one-node cluster with scripts/local-slurm.sh and sets ``ATTRCLI_SLURM=1``,
which makes these tests required: with it set, a cluster that does not answer fails them. Without
it they run when ``sinfo`` shows a node up and are skipped, with the reason, otherwise. They
assume the cluster is otherwise idle (as the local one is), so that the arrays start at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from attrcli.stages.attribute import attribute
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids
from tests.scale.helpers import MODEL, same_artifact, subprocess_env

REQUIRED = os.environ.get("ATTRCLI_SLURM") == "1"


def _unavailable() -> str | None:
    """Why no SLURM cluster can take jobs from here, or None when one can."""
    missing = [tool for tool in ("sinfo", "sbatch", "squeue") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    if not {"idle", "mix", "alloc"} & set(out.stdout.split()):
        return f"no SLURM node is up (sinfo states: {' '.join(out.stdout.split()) or 'none'})"
    return None


UNAVAILABLE = _unavailable()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        UNAVAILABLE is not None and not REQUIRED,
        reason=f"no SLURM cluster answers ({UNAVAILABLE}); scripts/local-slurm.sh starts one (as root)",
    ),
]


@pytest.fixture(autouse=True)
def cluster() -> None:
    if UNAVAILABLE is not None:
        pytest.fail(f"ATTRCLI_SLURM=1 but {UNAVAILABLE}")


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """``attrcli ARGS`` in this process, run from ``tmp_path``; the array's tasks (sbatch passes
    this environment on) can import tests.engine.helpers."""
    from typer.testing import CliRunner

    from attrcli.cli.main import app

    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)

    def run(*args: object):
        return CliRunner().invoke(app, [str(a) for a in args])

    return run


def inline(grids: Path, root: Path, setting: list[str]) -> dict[str, Path]:
    """The same keys computed in this process, by key label."""
    out = attribute(grids=grids, setting=setting, model=MODEL, layers="input,final", methods="grad",
                    cache_root=root, batch_size=2, device="cpu")
    return {r.key.label(): r.path for r in out}


def key_label(path: str) -> str:
    """``.../attributions/<grids>/<setting>/<model>/<layer>/<method>.h5`` -> ``setting/model/layer/method``."""
    parts = Path(path).with_suffix("").parts
    return "/".join(parts[-4:])


def launch_args(grids: Path, cache: Path, setting: str, *extra: object) -> list[object]:
    return [
        "launch", "--grids", grids, "--setting", setting, "--model", MODEL, "--layer", "input,final",
        "--method", "grad", "--launcher", "slurm", "--device", "cpu", "--batch-size", 2,
        "--cache-dir", cache, "--quiet", *extra,
    ]


def test_launch_two_settings_two_shards_equals_inline(tmp_path, cli):
    grids = write_grids(tmp_path / "g.h5", count=4, variant="corners")
    cache = tmp_path / "cache"
    done = cli(*launch_args(grids, cache, "difull,dipart", "--shards", 2))
    assert done.exit_code == 0, done.output
    # One real job array of 2 settings × 2 shards went through sbatch.
    (script,) = (cache / "submitit").glob("*_submission.sh")
    assert "#SBATCH --array=0-3" in script.read_text()
    paths = done.stdout.split()
    reference = inline(grids, tmp_path / "inline", ["difull", "dipart"])
    assert sorted(key_label(p) for p in paths) == sorted(reference)
    for path in paths:
        assert same_artifact(read_artifact(tmp_path / path), read_artifact(reference[key_label(path)]))
    assert not list(cache.rglob("*.shard-*"))


def test_failing_task_exits_1_with_its_error_and_merges_nothing(tmp_path, cli):
    """The grid file opens where the launch plans, but its images cannot be read in the tasks."""
    grids = write_grids(tmp_path / "g.h5", count=4, variant="corners")
    raw = tmp_path / "images.raw"
    with h5py.File(grids, "a") as handle:
        images = handle["images"][()]
        del handle["images"]
        images.tofile(raw)
        handle.create_dataset("images", shape=images.shape, dtype=images.dtype,
                              external=[(str(raw), 0, images.nbytes)])
    raw.unlink()
    cache = tmp_path / "cache"
    done = cli(*launch_args(grids, cache, "difull", "--shards", 2))
    assert done.exit_code == 1, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: task ") and "(setting difull, shard " in lines[0]
    assert f"failed: UserError: {grids}: cannot read its images" in lines[0]
    assert "(log: " in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not [p for p in cache.rglob("*.h5")]


def test_no_wait_then_status_shows_shards_then_merge_all(tmp_path, cli):
    grids = write_grids(tmp_path / "g.h5", count=4)
    cache = tmp_path / "cache"

    def states() -> dict[str, tuple[str, str]]:
        shown = cli("status", "--grids", grids, "--setting", "gridpg", "--model", MODEL, "--layer", "input,final",
                    "--method", "grad", "--cache-dir", cache, "--json")
        assert shown.exit_code == 0, shown.output
        return {row["key"]: (row["state"], row["detail"]) for row in json.loads(shown.stdout)}

    submitted = cli(*launch_args(grids, cache, "gridpg", "--shards", 2, "--no-wait", "--array-parallelism", 1))
    assert submitted.exit_code == 0, submitted.output
    assert [line.split()[0] for line in submitted.stderr.strip().splitlines()] == ["submitted"] * 2
    keys = sorted(key_label(p) for p in submitted.stdout.split())
    # The array runs one task at a time: once the first shard is written, status shows it.

    def shards() -> list[Path]:
        return list(cache.rglob("grad.shard-*-of-2.h5"))

    deadline = time.monotonic() + 300
    while not shards():
        assert time.monotonic() < deadline, "no shard was written"
        time.sleep(0.5)
    meanwhile = states()
    assert sorted(meanwhile) == keys
    assert {state for state, _ in meanwhile.values()} <= {"missing", "partial"}
    assert {detail for _, detail in meanwhile.values()} - {""} <= {"1 of 2 shards", "2 of 2 shards"}
    assert "partial" in {state for state, _ in meanwhile.values()}
    while len(shards()) < 2 * len(keys):
        assert time.monotonic() < deadline, f"shards missing: {shards()}"
        time.sleep(0.5)
    assert set(states().values()) == {("partial", "2 of 2 shards")}
    merged = cli("merge", "--all", "--cache-dir", cache)
    assert merged.exit_code == 0, merged.output
    assert sorted(key_label(p) for p in merged.stdout.split()) == keys
    assert {state for state, _ in states().values()} == {"done"}
    reference = inline(grids, tmp_path / "inline", ["gridpg"])
    for path in merged.stdout.split():
        assert same_artifact(read_artifact(tmp_path / path), read_artifact(reference[key_label(path)]))


def test_run_study_with_slurm_launcher(tmp_path, monkeypatch, trained_digits_cache):
    """`attrcli run --launcher slurm` on a small digits study (one model, two settings)."""
    from typer.testing import CliRunner

    from attrcli.cli.main import app
    study = (
        'name = "slurm-digits"\nmodels = ["digits-vgg11"]\nsettings = ["gridpg", "difull"]\n'
        'layers = ["input", "final"]\nmethods = ["grad", "gradcam"]\n'
        '[grids]\ncell_size = 32\ncount_distinct = 4\ncount_corners = 4\n'
        '[smoothing]\nsettings = []\n[compute]\nbatch_size = 16\n'
    )
    (tmp_path / "slurm.toml").write_text(study)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_digits_cache / "models", tmp_path / "cache" / "models")
    result = CliRunner().invoke(app, ["run", "slurm.toml", "--launcher", "slurm", "--device", "cpu",
                                      "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["computed"] == 8  # 2 settings × 2 layers × 2 methods
    assert len(list((tmp_path / "cache" / "submitit").glob("*_submission.sh"))) == 2  # one array per setting
    summary = Path(report["summary"]).read_text()
    assert "## gridpg · digits-vgg11" in summary and "## difull · digits-vgg11" in summary
    assert all(Path(f).is_file() and Path(f).stat().st_size > 0 for f in report["figures"])
    scores = sorted((tmp_path / "cache" / "scores").rglob("*.h5"))
    assert len(scores) == 8
