"""``summarize_cache``: every key under a cache, counted per grid file, setting and model."""

from __future__ import annotations

import numpy as np
import pytest

from attrcli.errors import UserError
from attrcli.store import ArtifactKey, file_hash, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.inventory import summarize_cache


def _artifact(root, grid_file, *parts, shard=None):
    key = ArtifactKey(*parts, shard=shard)
    path = key.path(root)
    write_artifact(path, data={"maps": np.zeros((1, 1, 2, 2), np.float32)}, attrs={"grid_path": str(grid_file)},
                   provenance=make_provenance(config={}, inputs={"grids": file_hash(grid_file)}))
    return path


def test_counts_done_stale_partial_and_corrupt_keys(tmp_path):
    root = tmp_path / "cache"
    grid_file = tmp_path / "g.h5"
    grid_file.write_bytes(b"grids, version 1")
    for method in ("grad", "ixg", "rise"):
        _artifact(root, grid_file, "attributions", "g", "gridpg", "m", "input", method)
    _artifact(root, grid_file, "scores", "g", "gridpg", "m", "input", "grad")
    _artifact(root, grid_file, "attributions", "g", "gridpg", "m", "final", "grad", shard=(0, 2))
    _artifact(root, grid_file, "attributions", "g", "gridpg", "m", "final", "grad", shard=(1, 2))
    (root / "attributions/g/gridpg/m/final/ixg.h5.partial").mkdir()
    (root / "attributions/g/gridpg/m/input/rise.h5").write_bytes(b"truncated")
    (root / "attributions/g/gridpg/m/input/.grad.h5.123.tmp").write_bytes(b"")
    other = tmp_path / "c.h5"
    other.write_bytes(b"corner grids")
    _artifact(root, other, "attributions", "c", "difull", "m", "input", "grad")
    other.write_bytes(b"corner grids, changed")

    groups = {(g.grids, g.setting, g.model): g.as_dict() for g in summarize_cache(root)}
    assert list(groups) == [("c", "difull", "m"), ("g", "gridpg", "m")]
    mine = groups[("g", "gridpg", "m")]
    assert (mine["attributions"], mine["scores"], mine["aggatt"]) == (2, 1, 0)
    assert (mine["partial"], mine["corrupt"], mine["stale"]) == (2, 1, 0)
    assert mine["grid_files"] == [str(grid_file)]
    assert (groups[("c", "difull", "m")]["attributions"], groups[("c", "difull", "m")]["stale"]) == (1, 1)
    assert summarize_cache(tmp_path / "nothing") == []
    with pytest.raises(UserError, match="not a folder"):
        summarize_cache(grid_file)
