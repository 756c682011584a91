"""The command line under abuse (issue 19) and its small frictions (issue 15): user-named outputs,
a full disk, both ``--weights`` spellings, ``status`` of a whole cache, grid names, help order."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import attrcli.cli.scale as scale_cli
import attrcli.stages.run as study
from attrcli.cli.main import app
from attrcli.models import create_model
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids
from tests.scale.helpers import small_tmpfs

MODEL = ["--model", "digits-vgg11", "--weights", "random"]  # the registered model, nothing trained
QUICK = ["--layer", "input", "--method", "grad", "--device", "cpu", "-q"]


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_grids(tmp_path / "g.h5", count=2)
    return tmp_path


@pytest.fixture
def scores(workdir) -> str:
    attribution = invoke("attribute", "--grids", "g.h5", *MODEL, *QUICK).stdout.strip()
    result = invoke("score", attribution, "-q")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_plot_out_never_replaces_a_device_a_pipe_or_a_folder(workdir, scores):
    os.mkfifo(workdir / "fifo.png")
    (workdir / "adir.png").mkdir()
    targets = ["fifo.png", "adir.png"]
    try:
        os.mknod(workdir / "null.png", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append("null.png")
    except OSError:
        pass  # not root: the pipe stands for every non-regular file
    before = _tree(workdir)
    for target in targets:
        result = invoke("plot", "boxes", scores, "--out", target)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "regular file" in result.stderr or "is a folder" in result.stderr
    assert _tree(workdir) == before
    if "null.png" in targets:
        assert stat.S_ISCHR(os.stat(workdir / "null.png").st_mode)


def test_plot_out_writes_through_a_symlink(workdir, scores):
    (workdir / "figures").mkdir()
    (workdir / "figures/boxes.png").write_bytes(b"old")
    (workdir / "latest.png").symlink_to("figures/boxes.png")
    result = invoke("plot", "boxes", scores, "--out", "latest.png")
    assert result.exit_code == 0 and result.stdout.strip() == "latest.png", result.output
    assert (workdir / "latest.png").is_symlink()
    assert (workdir / "figures/boxes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = invoke("plot", "boxes", scores, "--out", "bad/x.foo")
    assert bad.exit_code == 2 and ".foo is not a figure format" in bad.stderr and not (workdir / "bad").exists()


@pytest.mark.parametrize("batch", ["2", "32"])  # checkpointed chunks, or one chunk written at the end
def test_a_full_disk_exits_1_in_one_line_and_leaves_no_temporary_file(workdir, batch):
    write_grids(workdir / "big.h5", count=8)  # 8 grids × 4 targets × 64×64 float32: 512 kB of maps
    with small_tmpfs(workdir / "disk", "256k") as disk:
        result = invoke("attribute", "--grids", "big.h5", *MODEL, *QUICK, "--batch-size", batch,
                        "--cache-dir", str(disk))
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert "no space left" in result.stderr and "Traceback" not in result.output
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".h5")]


def _state_dict(path: Path) -> Path:
    torch.save(create_model("digits-vgg11", weights="random").module.state_dict(), path)
    return path


def test_both_weights_spellings_on_attribute_plan_launch_and_run(workdir, monkeypatch):
    _state_dict(workdir / "w.pt")
    hashes = set()
    for i, spelling in enumerate(("w.pt", "digits-vgg11=w.pt")):
        result = invoke("attribute", "--grids", "g.h5", "--model", "digits-vgg11", "--weights", spelling,
                        *QUICK, "--cache-dir", f"c{i}", "--json")
        assert result.exit_code == 0, result.output
        hashes.add(read_artifact(json.loads(result.stdout)[0]["path"]).provenance["inputs"]["model"])
    assert len(hashes) == 1
    wrong = invoke("attribute", "--grids", "g.h5", "--model", "digits-vgg11", "--weights", "vgg11=w.pt", *QUICK)
    assert wrong.exit_code == 2 and "is for model vgg11, but --model is digits-vgg11" in wrong.stderr
    for spelling in ("w.pt", "digits-vgg11=w.pt"):
        plan = invoke("plan", "--grids", "g.h5", "--model", "digits-vgg11", "--weights", spelling, "--layer", "input")
        assert plan.exit_code == 0 and "--weights w.pt" in plan.stdout, plan.output

    seen = []
    monkeypatch.setattr("attrcli.stages.launch.launch_attribute",
                        lambda request, options, progress=None: seen.append(request.weights) or [])
    monkeypatch.setattr(scale_cli, "print_results", lambda *a: None)
    for spelling in ("w.pt", "digits-vgg11=w.pt"):
        assert invoke("launch", "--grids", "g.h5", "--model", "digits-vgg11", "--weights", spelling).exit_code == 0
    assert seen == ["w.pt", "w.pt"]

    runs = []
    monkeypatch.setattr(study, "run_study", lambda **kw: runs.append(kw["weights"]) or (_ for _ in ()).throw(SystemExit(0)))
    invoke("run", "--weights", "digits-vgg11=w.pt")
    assert runs == [{"digits-vgg11": "w.pt"}]
    bare = invoke("run", "--weights", "w.pt")
    assert bare.exit_code == 2 and "use MODEL=FILE with one of digits-vgg11, digits-resnet18" in bare.stderr


def test_run_checks_weights_before_writing_anything(workdir):
    (workdir / "junk.pt").write_bytes(b"not a state dict")
    before = _tree(workdir)
    result = invoke("run", "--weights", "digits-vgg11=junk.pt", "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "junk.pt" in result.stderr
    assert _tree(workdir) == before  # no grid files, no cache, no report


def test_a_refused_weights_file_is_one_line_unless_verbose(workdir):
    with open(workdir / "legacy.pt", "wb") as handle:
        pickle.dump({"a": 1}, handle, protocol=4)  # torch warns about the protocol before refusing
    args = ["attribute", "--grids", "g.h5", "--model", "digits-vgg11", "--weights", "legacy.pt", *QUICK]
    quiet = invoke(*args)
    assert quiet.exit_code == 2 and quiet.stderr.count("\n") == 1 and "legacy.pt" in quiet.stderr
    loud = invoke("--verbose", *args)
    assert loud.exit_code == 2 and "error: legacy.pt" in loud.stderr


def test_status_without_grids_summarizes_the_cache(workdir):
    name = "my grids ü"  # a space and a non-ASCII letter: a valid key
    write_grids(workdir / f"{name}.h5", count=2)
    made = invoke("attribute", "--grids", f"{name}.h5", *MODEL, *QUICK, "--method", "grad,ixg")
    assert made.exit_code == 0, made.output
    assert f"attributions/{name}/gridpg/digits-vgg11/input/grad.h5" in made.stdout
    assert invoke("score", *made.stdout.split("\n")[:1], "-q").exit_code == 0
    write_grids(workdir / "c.h5", count=2, variant="corners")
    corners = invoke("attribute", "--grids", "c.h5", *MODEL, *QUICK, "--setting", "difull,dipart")
    assert corners.exit_code == 0, corners.output
    write_grids(workdir / "c.h5", count=2, variant="corners", seed=9)  # changed: its keys are stale
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    rows = {(r["grids"], r["setting"]): r for r in json.loads(result.stdout)}
    assert set(rows) == {(name, "gridpg"), ("c", "difull"), ("c", "dipart")}
    mine = rows[(name, "gridpg")]
    assert (mine["attributions"], mine["scores"], mine["stale"], mine["partial"], mine["corrupt"]) == (2, 1, 0, 0, 0)
    assert (rows[("c", "difull")]["attributions"], rows[("c", "difull")]["stale"]) == (1, 1)
    table = invoke("status")
    assert table.exit_code == 0 and name in table.stdout
    assert json.loads(invoke("status", "--json", "--model", "nope").stdout) == []


def test_help_lists_commands_in_pipeline_order():
    listed = re.findall(r"^[^\w-]*\s([a-z][a-z-]*)  ", invoke("--help").stdout, re.M)  # a row per command
    order = ["make-grids", "import-grids", "attribute", "score", "aggatt", "correlate", "compare", "sanity", "plot",
             "run", "export", "report", "models", "launch", "plan", "merge", "status"]
    assert {"make-grids", "attribute", "score", "plot", "run", "status"} <= set(listed)
    assert listed == [name for name in order if name in listed]
    assert {"sanity", "export", "report"} <= set(listed)
