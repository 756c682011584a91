"""Method diagnostics (Grad-CAM++'s ill-conditioned terms) travel from the method into the
artifact, whatever the chunking, across a resume and through a shard merge, and reach the
study summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import attrcli.methods.gradcampp as gradcampp
from attrcli.stages.attribute import attribute
from attrcli.stages.merge import merge
from attrcli.store import ArtifactKey, read_artifact, write_artifact
from attrcli.stages.report import conditioning_notes
from tests.engine.helpers import tiny_vgg, write_grids


@pytest.fixture(scope="module")
def model():
    return tiny_vgg(dtype=torch.float32)


def _count(path: Path) -> int:
    return read_artifact(path, names=[]).attrs["diagnostics"]["ill_conditioned"]


def test_counts_add_up_over_chunks_and_shards(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    # a loose threshold makes some input-layer terms "ill-conditioned", so the counts are not 0
    monkeypatch.setattr(gradcampp, "ILL_CONDITIONED", 0.5)
    grids = write_grids(Path("data/grids/toy.h5"), count=3)
    art = read_artifact(grids)  # darker images: channel sums ΣA < 0, so 2 + ΣA·g can vanish
    write_artifact(grids, data={**art.data, "images": art.data["images"] - 3}, attrs=art.attrs)
    run = lambda cache, **kw: attribute(grids=grids, setting="gridpg", model=model, layers="input",  # noqa: E731
                                        methods="gradcam++", cache_root=cache, **kw)
    (whole,) = run("one", batch_size=3)  # one chunk, held in memory
    (chunked,) = run("three", batch_size=1)  # three checkpointed chunks
    total = _count(whole.path)
    assert total > 0 and _count(chunked.path) == total
    for i in range(3):
        run("sharded", batch_size=1, shard=(i, 3))
    merged = merge(ArtifactKey.from_path(whole.path).path("sharded"))
    assert _count(merged) == total


def test_the_summary_names_keys_with_ill_conditioned_terms(tmp_path):
    def artifact(method, counts):
        path = ArtifactKey("attributions", "toy", "gridpg", "m", "input", method).path(tmp_path)
        return write_artifact(path, data={"maps": np.zeros((1, 1, 2, 2), np.float32)},
                              attrs={"diagnostics": counts}, provenance={})

    paths = [artifact("gradcam++", {"ill_conditioned": 7}), artifact("gradcam", {}),
             artifact("layercam", {"ill_conditioned": 0})]
    notes = conditioning_notes(paths)
    assert len(notes) == 1 and notes[0].startswith("gridpg/m/input/gradcam++: 7 ill-conditioned")
