"""Chunk checkpoints (and resuming from them) and grid-file checks of the engine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import attrcli.engine.attribute as engine
from attrcli.stages.attribute import attribute
from attrcli.engine.checkpoint import Checkpoint
from attrcli.data.gridfile import check_fit, load_grid_file
from attrcli.stages.plan import sampling_identity
from attrcli.errors import AttrcliWarning, UserError
from attrcli.models import create_model
from attrcli.store import read_artifact, write_artifact
from tests.engine.helpers import tiny_vgg, write_grids
from tests.scale.helpers import dead_pid


def test_chunks_survive_a_restart_with_the_same_meta_only(tmp_path):
    artifact = tmp_path / "a" / "grad.h5"
    first = Checkpoint(artifact, {"method": "grad", "chunk": 2})
    maps = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    first.save(1, maps)
    assert first.done() == [1] and first.has(1) and not first.has(0)
    assert not list(first.folder.glob(".*tmp"))  # written under a temporary name, then renamed
    again = Checkpoint(artifact, {"chunk": 2, "method": "grad"})
    assert again.done() == [1] and np.array_equal(again.load(1), maps)
    other = Checkpoint(artifact, {"method": "grad", "chunk": 3})
    assert other.done() == []
    other.remove()
    assert not other.folder.exists()


def test_a_corrupt_meta_discards_the_chunks(tmp_path):
    artifact = tmp_path / "grad.h5"
    checkpoint = Checkpoint(artifact, {"a": 1})
    checkpoint.save(0, np.zeros((1, 1, 1, 1), np.float32))
    (checkpoint.folder / "meta.json").write_text("{not json")
    assert Checkpoint(artifact, {"a": 1}).done() == []


def test_grid_files_are_read_and_checked(tmp_path):
    path = write_grids(tmp_path / "toy.h5", count=2, variant="corners")
    grids = load_grid_file(path)
    assert (grids.name, grids.n, grids.cell_size, grids.variant, grids.count) == ("toy", 2, 32, "corners", 2)
    assert grids.images.dtype == np.float32 and grids.image_size == 64 and grids.num_classes == 10
    check_fit(grids, setting_name="difull", variant="corners", model=tiny_vgg())
    with pytest.raises(UserError, match="setting gridpg needs distinct grids .* make-grids --variant distinct"):
        check_fit(grids, setting_name="gridpg", variant="distinct", model=tiny_vgg())


@pytest.mark.parametrize(
    "data, attrs, message",
    [
        ({"images": np.zeros((2, 3, 60, 60), np.float32)}, {}, r"images of shape \(2, 3, 60, 60\), expected"),
        ({"images": np.zeros((0, 3, 64, 64), np.float32), "labels": np.zeros((0, 4), np.int64)}, {}, "expected"),
        ({"labels": np.zeros((2, 3), np.int64)}, {}, r"labels of shape \(2, 3\), expected \(2, 4\)"),
        ({}, {"variant": None}, "is not a grid file"),
    ],
)
def test_malformed_grid_files_are_user_errors(tmp_path, data, attrs, message):
    good = tmp_path / "good.h5"
    write_grids(good, count=2)
    from attrcli.store import read_artifact

    artifact = read_artifact(good)
    merged_attrs = {k: v for k, v in {**artifact.attrs, **attrs}.items() if v is not None}
    bad = write_artifact(tmp_path / "bad.h5", data={**artifact.data, **data}, attrs=merged_attrs)
    with pytest.raises(UserError, match=message):
        load_grid_file(bad)
    with pytest.raises(UserError, match="no such file"):
        load_grid_file(Path(tmp_path / "none.h5"))


# --- resuming: what a checkpoint must match, and what happens to chunks that cannot be used ---

COUNT = 6  # grid images; three chunks of two


@pytest.fixture(scope="module")
def digits():
    """digits-vgg11 with its fixed-seed random weights: the real registered model, no training."""
    return create_model("digits-vgg11", weights="random")


@pytest.fixture
def run(tmp_path, digits):
    grids = write_grids(tmp_path / "g.h5", count=COUNT)

    def call(root="cache", methods="grad", **kw):
        options = dict(grids=grids, setting="gridpg", model=digits, layers="input", methods=methods,
                       batch_size=2, cache_root=tmp_path / root)
        return attribute(**{**options, **kw})

    return call


def _killed_after(monkeypatch, run, chunks: int = 1, **kw) -> None:
    """Run with the engine interrupted after ``chunks`` chunks (their checkpoints stay)."""
    real, calls = engine.compute_maps, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "compute_maps", dies)
    with pytest.raises(KeyboardInterrupt):
        run(**kw)
    monkeypatch.setattr(engine, "compute_maps", real)


def _partial(root: Path) -> Path:
    (folder,) = root.rglob("*.partial")
    return folder


def _counting(monkeypatch) -> list[int]:
    """Grid images of each chunk the engine computes from now on."""
    real, seen = engine.compute_maps, []
    monkeypatch.setattr(engine, "compute_maps", lambda s, x, *a, **k: seen.append(len(x)) or real(s, x, *a, **k))
    return seen


def test_a_damaged_chunk_is_discarded_with_one_warning_and_computed_again(tmp_path, run, monkeypatch):
    reference = read_artifact(run(root="ref")[0].path)
    damage = {
        "truncated": lambda f: f.write_bytes(f.read_bytes()[:60]),
        "too many rows": lambda f: np.save(f, np.zeros((3, 4, 64, 64), np.float32)),
        "other size": lambda f: np.save(f, np.zeros((2, 4, 32, 32), np.float32)),
        "float64": lambda f: np.save(f, np.zeros((2, 4, 64, 64), np.float64)),
        "nan": lambda f: np.save(f, np.full((2, 4, 64, 64), np.nan, np.float32)),
        "not an array": lambda f: f.write_text("{}"),
    }
    for name, spoil in damage.items():
        root = tmp_path / name
        _killed_after(monkeypatch, lambda **kw: run(root=name, **kw), chunks=2)
        partial = _partial(root)
        first = sorted(partial.glob("chunk-*.npy"))[0]
        spoil(first)
        seen = _counting(monkeypatch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (result,) = run(root=name)
        monkeypatch.undo()
        ours = [w for w in caught if issubclass(w.category, AttrcliWarning)]
        assert len(ours) == 1 and "discarded checkpoint chunk" in str(ours[0].message), name
        assert "\n" not in str(ours[0].message)
        assert result.status == "resumed" and seen == [2, 2], name  # the spoilt chunk and the third
        artifact = read_artifact(result.path)
        assert np.array_equal(artifact.data["maps"], reference.data["maps"]), name
        assert artifact.data["grid_index"].tolist() == list(range(COUNT)) and not partial.exists()


def test_force_starts_from_scratch(run, monkeypatch):
    _killed_after(monkeypatch, run, chunks=2)
    seen = _counting(monkeypatch)
    (result,) = run(force=True)
    assert result.status == "computed" and seen == [2, 2, 2]


def test_a_resume_with_another_seed_starts_over(tmp_path, run, monkeypatch):
    rise = "rise:masks=6"
    _killed_after(monkeypatch, lambda **kw: run(methods=rise, seed=0, **kw), chunks=2)
    seen = _counting(monkeypatch)
    (result,) = run(methods=rise, seed=1)
    assert result.status == "computed" and seen == [2, 2, 2]
    monkeypatch.undo()
    (fresh,) = run(root="ref", methods=rise, seed=1)
    assert np.array_equal(read_artifact(result.path).data["maps"], read_artifact(fresh.path).data["maps"])


def test_the_seed_and_chunking_of_a_sampling_method_are_part_of_its_identity(run):
    rise = "rise:masks=6"
    (first,) = run(methods=rise, seed=0)
    seed0 = read_artifact(first.path).data["maps"]
    assert [r.status for r in run(methods=rise, seed=0)] == ["up to date"]
    (other,) = run(methods=rise, seed=1)
    assert other.status == "computed"
    assert not np.allclose(read_artifact(other.path).data["maps"], seed0)
    assert read_artifact(other.path).provenance["config"]["identity"]["seed"] == 1
    assert [r.status for r in run(methods=rise, seed=1, batch_size=3)] == ["computed"]
    # a method that draws nothing keeps its key whatever the seed or batch size
    (grad,) = run(methods="grad", seed=0)
    assert [r.status for r in run(methods="grad", seed=5, batch_size=3)] == ["up to date"]
    assert "seed" not in read_artifact(grad.path).provenance["config"]["identity"]


def test_sampling_identity_names_shard_counts_only_when_they_move_chunk_boundaries():
    assert sampling_identity(seed=3, batch_size=2, count=6) == {"seed": 3, "chunk": 2}
    assert sampling_identity(seed=3, batch_size=2, count=6, shards=3) == {"seed": 3, "chunk": 2}
    assert sampling_identity(seed=3, batch_size=4, count=6, shards=3) == {"seed": 3, "chunk": 4, "shards": 3}


def test_temporary_chunks_of_dead_writers_are_removed_when_the_checkpoint_opens(tmp_path):
    artifact = tmp_path / "grad.h5"
    checkpoint = Checkpoint(artifact, {"a": 1})
    checkpoint.save(0, np.zeros((1, 1, 2, 2), np.float32))
    stale = checkpoint.folder / f".chunk-000001.npy.{dead_pid()}.tmp"
    stale.write_bytes(b"half a chunk")
    again = Checkpoint(artifact, {"a": 1})
    assert not stale.exists() and again.done() == [0]
    assert Checkpoint(artifact, {"a": 1}, fresh=True).done() == []
    (checkpoint.folder / "chunk-x.npy").write_bytes(b"")  # a stray name is not a chunk
    assert Checkpoint(artifact, {"a": 1}).done() == []


def test_torch_threads_are_restored_after_attribution(run):
    before = torch.get_num_threads()
    run()
    assert torch.get_num_threads() == before
