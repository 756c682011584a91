"""Shards: ``attribute(shard=...)`` and :func:`merge` (coverage and provenance checks)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from attrcli.engine.shards import parse_shard, shard_paths, shard_rows
from attrcli.errors import UserError
from attrcli.stages.attribute import attribute
from attrcli.stages.merge import merge, merge_all
from attrcli.store import read_artifact, write_artifact
from tests.scale.helpers import MODEL, grids, same_artifact

SELECTION = dict(setting="gridpg", model=MODEL, layers="input,final", methods="grad")


def run(g, root, shard=None, **kw):
    return attribute(grids=g, cache_root=root, batch_size=2, shard=shard, **{**SELECTION, **kw})


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A grid file of 6 images, its single-process artifacts, and 3 shards of each key.

    Shard boundaries fall on batch boundaries (6 = 3 × 2), so every forward pass sees the same
    images as in the single run and the maps agree bit for bit; other splits agree to float
    rounding only (CPU kernels sum in an order that depends on the batch size).
    """
    tmp = tmp_path_factory.mktemp("sharded")
    g = grids(tmp, count=6)
    full = run(g, tmp / "full")
    for i in range(3):
        run(g, tmp / "sh", (i, 3))
    return g, full, tmp / "sh"


@pytest.fixture
def sharded(computed, tmp_path):
    """A fresh copy of the shards for each test."""
    g, full, root = computed
    shutil.copytree(root, tmp_path / "sh")
    return g, full, tmp_path / "sh"


def test_parse_and_rows():
    assert parse_shard("3/16") == (3, 16) and parse_shard(None) is None
    for bad in ("16/16", "-1/4", "a/b", "1/0", "1"):
        with pytest.raises(UserError):
            parse_shard(bad)
    rows = [shard_rows(10, (i, 4)) for i in range(4)]
    assert [list(r) for r in rows] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    with pytest.raises(UserError, match="at most 3"):
        shard_rows(3, (0, 4))


def test_shards_merge_to_the_single_process_artifact(sharded, tmp_path):
    g, full, root = sharded
    shard = read_artifact(root / "attributions/g/gridpg/tiny-vgg/input/grad.shard-1-of-3.h5")
    assert shard.data["grid_index"].tolist() == [2, 3]
    assert len(list(root.rglob("*.shard-*.h5"))) == 6
    merged = merge_all(root)
    assert len(merged) == 2 and not list(root.rglob("*.shard-*.h5"))
    for result in full:
        mine = read_artifact(root / result.path.relative_to(result.path.parents[5]))
        assert same_artifact(mine, read_artifact(result.path))
        assert mine.provenance["config"]["shards"] == 3
    assert {r.status for r in run(g, root)} == {"up to date"}


def _rewrite(path, **data):
    art = read_artifact(path)
    write_artifact(path, data={**art.data, **data}, attrs=art.attrs, provenance=art.provenance)


def test_missing_shard(sharded):
    _, _, root = sharded
    target = root / "attributions/g/gridpg/tiny-vgg/input/grad.h5"
    shard_paths(target)[1].unlink()
    with pytest.raises(UserError, match="shard 1 of 3 .* is missing"):
        merge(target)
    assert len(shard_paths(target)) == 2 and not target.exists()


def test_overlap_and_gap(sharded):
    _, _, root = sharded
    target = root / "attributions/g/gridpg/tiny-vgg/input/grad.h5"
    one = shard_paths(target)[1]
    _rewrite(one, grid_index=np.array([1, 2]))
    with pytest.raises(UserError, match="shards 0 and 1 overlap at grid rows 1"):
        merge(target)
    _rewrite(one, grid_index=np.array([3, 3]))
    with pytest.raises(UserError, match="twice"):
        merge(target)
    _rewrite(one, grid_index=np.array([2, 4]))
    with pytest.raises(UserError, match="shards 1 and 2 overlap at grid rows 4"):
        merge(target)
    _rewrite(one, grid_index=np.array([3]), maps=read_artifact(one).data["maps"][:1], classes=read_artifact(one).data["classes"][:1])
    with pytest.raises(UserError, match="grid rows 2 are in no shard"):
        merge(target)
    assert not target.exists()


def test_other_grid_file_or_config(sharded):
    _, _, root = sharded
    target = root / "attributions/g/gridpg/tiny-vgg/input/grad.h5"
    two = shard_paths(target)[2]
    art = read_artifact(two)
    prov = {**art.provenance, "inputs": {**art.provenance["inputs"], "grids": "0" * 64}}
    write_artifact(two, data=art.data, attrs=art.attrs, provenance=prov)
    with pytest.raises(UserError, match="shard 2 was computed from another grid file"):
        merge(target)
    config = {**art.provenance["config"], "identity": {**art.provenance["config"]["identity"], "cells": [0]}}
    write_artifact(two, data=art.data, attrs=art.attrs, provenance={**art.provenance, "config": config})
    with pytest.raises(UserError, match="another method config"):
        merge(target)


def test_mixed_counts_and_corrupt_shard(sharded, tmp_path):
    g, _, root = sharded
    target = root / "attributions/g/gridpg/tiny-vgg/input/grad.h5"
    run(g, root, (0, 2))
    with pytest.raises(UserError, match="disagree on their count"):
        merge(target)
    for p in shard_paths(target):
        if "-of-2" in p.name:
            p.unlink()
    first = shard_paths(target)[0]
    first.write_bytes(first.read_bytes()[:300])
    with pytest.raises(UserError, match="corrupt or truncated"):
        merge(target)


def test_stale_grid_file_is_refused(sharded, tmp_path):
    _, _, root = sharded
    target = root / "attributions/g/gridpg/tiny-vgg/final/grad.h5"
    changed = grids(tmp_path, seed=1)  # the grid file the shards name, rewritten since
    for path in shard_paths(target):
        art = read_artifact(path)
        write_artifact(path, data=art.data, attrs={**art.attrs, "grid_path": str(changed)}, provenance=art.provenance)
    with pytest.raises(UserError, match="another version of"):
        merge(target)


def test_derived_methods_shard_and_merge(tmp_path):
    g = grids(tmp_path, count=4)
    kw = dict(layers="input", methods="s-ixg:k=3")
    full = {r.key.method: r for r in run(g, tmp_path / "full", **kw)}
    for i in range(2):
        run(g, tmp_path / "sh", (i, 2), **kw)
    merged = merge_all(tmp_path / "sh")
    assert [p.name for p in merged] == ["ixg.h5", "s-ixg:k=3.h5"]
    for path in merged:
        assert same_artifact(read_artifact(path), read_artifact(full[path.stem].path))
    assert {r.status for r in run(g, tmp_path / "sh", **kw)} == {"up to date"}
    assert dataclasses.is_dataclass(full["ixg"])
