"""Chunk checkpoints and grid-file checks of the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrcli.engine.checkpoint import Checkpoint
from attrcli.engine.grids import check_fit, load_grid_file
from attrcli.errors import UserError
from attrcli.store import write_artifact
from tests.engine.helpers import tiny_vgg, write_grids


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
