"""One key for one computation: method specs are canonical before they name an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attrcli.stages.attribute import attribute
from attrcli.errors import UserError
from attrcli.methods import MethodSpec, parse_method
from attrcli.store import read_artifact
from tests.engine.helpers import tiny_vgg, write_grids


@pytest.fixture(scope="module")
def model():
    return tiny_vgg(dtype=torch.float32)


def _canonical(text: str, layer: str = "input", cell: int = 32) -> str:
    return parse_method(text).canonical_for(cell_size=cell, layer=layer).canonical()


def test_defaults_are_dropped_values_typed_and_sorted():
    assert _canonical("intgrad") == _canonical("intgrad:steps=20") == _canonical("intgrad:steps=20.0") == "intgrad"
    assert _canonical("intgrad:steps=5.0") == "intgrad:steps=5"
    assert _canonical("intgrad:steps=5,rule=gausslegendre") == "intgrad:steps=5"
    assert _canonical("intgrad:steps=5,rule=riemann_trapezoid") == "intgrad:rule=riemann_trapezoid,steps=5"
    # occlusion's defaults depend on the layer: K=4, s=2 at the input of 32-pixel cells, K=2, s=1 deeper
    assert _canonical("occlusion:k=4,s=2", "input") == "occlusion"
    assert _canonical("occlusion:k=4,s=2", "final") == "occlusion:k=4,s=2"
    assert _canonical("occlusion:k=5,s=2", "final", cell=224) == "occlusion"
    assert _canonical("occlusion:scheme=paper") == "occlusion"
    assert _canonical("gradcam:relu=1") == "gradcam" and _canonical("gradcam:relu=False") == "gradcam:relu=false"
    assert _canonical("rise:masks=7,p=0.50") == "rise:masks=7,p=0.5"
    with pytest.raises(UserError, match="steps must be int"):
        parse_method("intgrad:steps=20.5")


def test_equal_computations_share_one_artifact_and_a_changed_parameter_another(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    grids = write_grids(Path("data/grids/toy.h5"), count=2)
    first = attribute(grids=grids, setting="gridpg", model=model, layers="final",
                      methods="intgrad,intgrad:steps=20,intgrad:steps=20.0")
    assert len(first) == 1 and first[0].path.name == "intgrad.h5" and first[0].status == "computed"
    again = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="intgrad:steps=20.0")
    assert [(r.path, r.status) for r in again] == [(first[0].path, "up to date")]
    other = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="intgrad:steps=5")
    assert other[0].path.name == "intgrad:steps=5.h5" and other[0].status == "computed"
    assert read_artifact(first[0].path).attrs["method"] == "intgrad"


def test_an_artifact_under_a_legacy_spelling_is_adopted_not_recomputed(tmp_path, monkeypatch, model):
    """Earlier versions keyed ``intgrad:steps=20`` apart from ``intgrad``; such a file is moved to the
    canonical key when it holds the same computation."""
    monkeypatch.chdir(tmp_path)
    grids = write_grids(Path("data/grids/toy.h5"), count=2)
    (done,) = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="intgrad")
    legacy = done.path.with_name("intgrad:steps=20.h5")
    done.path.replace(legacy)
    content = legacy.read_bytes()
    (again,) = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="intgrad")
    assert again.status == "up to date" and again.path == done.path
    assert not legacy.exists() and done.path.read_bytes() == content
    # a legacy file of another computation is left alone
    other = done.path.with_name("intgrad:steps=7.h5")
    done.path.replace(other)
    (third,) = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="intgrad")
    assert third.status == "computed" and other.exists()


def test_a_window_larger_than_the_map_is_refused_before_anything_is_written(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    grids = write_grids(Path("data/grids/toy.h5"), count=2)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=r"occlusion:k=1000 is larger than the 64×64 map at layer input; valid: k <= 64"):
        attribute(grids=grids, setting="gridpg", model=model, layers="input", methods="occlusion:k=1000")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_the_window_check_uses_the_settings_own_map(tmp_path, monkeypatch, model):
    """gridpg-rescaled classifies the grid resized to one cell: its final map is one cell's
    (2×2 here), while gridpg's composite map is n times larger (4×4)."""
    monkeypatch.chdir(tmp_path)
    grids = write_grids(Path("data/grids/toy.h5"), count=1)
    with pytest.raises(UserError, match=r"occlusion:k=3 is larger than the 2×2 map at layer final"):
        attribute(grids=grids, setting="gridpg-rescaled", model=model, layers="final", methods="occlusion:k=3,s=1")
    (done,) = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="occlusion:k=3,s=1")
    assert read_artifact(done.path).data["maps"].shape[-2:] == (4, 4)
