"""``launch_attribute`` (with an in-process stand-in for submitit), ``status`` and ``plan``."""

from __future__ import annotations

import pytest

from attrcli.errors import TaskError, UserError
from attrcli.stages import launch
from attrcli.stages.attribute import attribute, run_attribute
from attrcli.stages.launch import LaunchOptions
from attrcli.stages.plan import AttributeRequest
from attrcli.store import ArtifactKey, read_artifact
from tests.scale.helpers import MODEL, grids, same_artifact, subprocess_env

JOB = dict(setting=["gridpg"], model=MODEL, layers=["input", "final"], methods=["grad"])


class _Done:
    def __init__(self, fn, kwargs):
        self.job_id, self.error, self.value = "7_0", None, None
        self.paths = type("Paths", (), {"stderr": "log.err"})()
        try:
            self.value = fn(kwargs)
        except Exception as exc:  # noqa: BLE001 - mimics submitit's wrapping
            self.error = exc

    def done(self):
        return True

    def result(self):
        if self.error:
            raise RuntimeError(f"Traceback ...\n{type(self.error).__name__}: {self.error}")
        return self.value


class FakeExecutor:
    """Runs the array in this process, in order."""

    calls: list = []

    def map_array(self, fn, kwargs):
        FakeExecutor.calls = list(kwargs)
        return [_Done(fn, k) for k in kwargs]


def request(root, **kw):
    """The launched request: ``JOB`` on ``root`` with ``kw`` (``grids``, ``shards``...)."""
    return AttributeRequest(**{**JOB, **kw}, device="cpu", batch_size=2, force=False, cache_root=root, weights=None)


def test_launch_shards_then_merges(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_executor", lambda *a: FakeExecutor())
    g = grids(tmp_path, count=4)
    full = attribute(grids=g, cache_root=tmp_path / "full", batch_size=2, **{**JOB, "layers": "input,final", "methods": "grad"})
    out = launch.launch_attribute(request(tmp_path / "c", grids=g, shards=2), LaunchOptions(launcher="local"))
    assert [c.shard for c in FakeExecutor.calls] == [(0, 2), (1, 2)]
    assert {r.status for r in out} == {"computed"} and len(out) == 2
    for mine, ref in zip(sorted(r.path for r in out), sorted(r.path for r in full)):
        assert same_artifact(read_artifact(mine), read_artifact(ref))
    assert not list((tmp_path / "c").rglob("*.shard-*"))
    again = launch.launch_attribute(request(tmp_path / "c", grids=g, shards=2), LaunchOptions(launcher="local"))
    assert {r.status for r in again} == {"up to date"}


def test_launch_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_executor", lambda *a: FakeExecutor())
    g = grids(tmp_path, count=2)
    with pytest.raises(UserError, match="unknown launcher"):
        launch.launch_attribute(request(tmp_path, grids=g), LaunchOptions(launcher="pbs"))
    with pytest.raises(UserError, match="at most 2"):
        launch.launch_attribute(request(tmp_path, grids=g, shards=3), LaunchOptions(launcher="local"))
    with pytest.raises(TypeError, match="shard_count"):  # a misspelt option is an error, not ignored
        LaunchOptions(launcher="local", shard_count=2)
    with pytest.raises(TypeError, match="batchsize"):
        AttributeRequest(grids=g, batchsize=2)
    with pytest.raises(UserError, match="shards=2 without a shard"):  # inline: one process, no shards
        run_attribute(request(tmp_path, grids=g, shards=2))
    assert not (tmp_path / "attributions").exists()
    monkeypatch.setattr(launch, "_run_task", lambda kw: (_ for _ in ()).throw(UserError("boom")))
    with pytest.raises(TaskError, match=r"task 7_0 \(setting gridpg, shard 0/2\) failed: UserError: boom"):
        launch.launch_attribute(request(tmp_path, grids=g, shards=2), LaunchOptions(launcher="local"))
    assert not (tmp_path / "attributions").exists()


def test_status_and_plan(tmp_path):
    g = grids(tmp_path, count=4)
    sel = dict(grids=g, setting="gridpg", model=MODEL, layers="input", methods="grad,ixg,gradcam", cache_root=tmp_path)
    attribute(grids=g, setting="gridpg", model=MODEL, layers="input", methods="grad", cache_root=tmp_path)
    attribute(grids=g, setting="gridpg", model=MODEL, layers="input", methods="ixg", cache_root=tmp_path, shard=(0, 2))
    corrupt = tmp_path / "attributions/g/gridpg/tiny-vgg/input/gradcam.h5"
    corrupt.write_bytes(b"not hdf5")
    states = {s.label.rsplit("/", 1)[1]: (s.state, s.detail) for s in launch.status(AttributeRequest(**sel))}
    assert states == {"grad": ("done", ""), "ixg": ("partial", "1 of 2 shards"), "gradcam": ("corrupt", states["gradcam"][1])}
    lines = launch.plan_commands(AttributeRequest(**sel, shards=2))
    assert len(lines) == 4 and "--shard 1/2" in lines[1] and "--method ixg,gradcam" in lines[0]
    assert lines[2:] == [f"attrcli merge {tmp_path}/attributions/g/gridpg/tiny-vgg/input/{m}.h5" for m in ("ixg", "gradcam")]
    grids(tmp_path, count=4, seed=3)  # the grid file changes: grad is stale now
    assert launch.status(AttributeRequest(**sel))[0].state == "stale"


def test_status_details(tmp_path):
    """A key made for other cells is stale ("config changed"); checkpointed chunks make it partial."""
    g = grids(tmp_path, count=4)
    sel = {"grids": g, "setting": "gridpg", "model": MODEL, "layers": "input", "cache_root": tmp_path}
    attribute(**sel, methods="grad", heads="0")
    (found,) = launch.status(AttributeRequest(**sel, methods="grad"))
    assert (found.state, found.detail) == ("stale", "config changed")
    (ixg,) = launch.status(AttributeRequest(**sel, methods="ixg"))
    assert ixg.state == "missing"
    folder = ArtifactKey.from_path(ixg.path).checkpoint_folder(tmp_path)
    folder.mkdir()
    for chunk in (0, 1):
        (folder / f"chunk-{chunk:06d}.npy").write_bytes(b"")
    (ixg,) = launch.status(AttributeRequest(**sel, methods="ixg"))
    assert (ixg.state, ixg.detail) == ("partial", "2 chunks checkpointed")


@pytest.mark.slow
def test_local_launcher_digits_four_shards(tmp_path, trained_digits_cache):
    """submitit's local executor on the digits grids: 4 shard subprocesses, merged, equal a single run."""
    import shutil

    from attrcli.stages.make_grids import make_grids

    cache = tmp_path / "cache"
    shutil.copytree(trained_digits_cache, cache)
    (g,) = make_grids(dataset="digits", variant="distinct", n=2, count=8, models=["digits-vgg11"], out_dir=tmp_path, cache_dir=cache, device="cpu")
    job = dict(grids=g, setting=["gridpg"], model="digits-vgg11", layers=["input", "final"], methods=["grad", "gradcam"])
    single = attribute(**job, cache_root=tmp_path / "single", batch_size=2, weights=str(cache / "models/digits-vgg11.pt"))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    out = launch.launch_attribute(AttributeRequest(**job, shards=4, device="cpu", batch_size=2, cache_root=cache),
                                  LaunchOptions(launcher="local"))
    monkeypatch.undo()
    assert len(out) == 4
    for mine, ref in zip(sorted(r.path for r in out), sorted(r.path for r in single)):
        assert same_artifact(read_artifact(mine), read_artifact(ref))
