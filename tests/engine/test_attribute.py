"""``attribute`` as a library call: artifacts, freshness, resume after a kill, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import attrcli.engine.attribute as engine
from attrcli.stages.attribute import attribute
from attrcli.errors import UserError
from attrcli.methods.grad import Gradient
from attrcli.settings import create_setting
from attrcli.store import ArtifactKey, file_hash, read_artifact
from tests.engine.helpers import engine_maps, tiny_vgg, write_grids

METHODS = "guided-backprop,intgrad:steps=3,gradcam"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def model():
    return tiny_vgg(dtype=torch.float32)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_one_artifact_per_key_with_the_documented_contents(workdir, model):
    grids = write_grids(workdir / "data" / "grids" / "toy.h5", count=3, variant="corners")
    results = attribute(
        grids=grids, setting="difull,dipart", model=model, layers="input,features.19",
        methods=METHODS, batch_size=2,
    )
    assert len(results) == 2 * 2 * 3 and {r.status for r in results} == {"computed"}
    expected = {
        ArtifactKey("attributions", "toy", s, "tiny-vgg", layer, m).path(Path("cache"))
        for s in ("difull", "dipart") for layer in ("input", "features.19")
        for m in ("guided-backprop", "intgrad:steps=3", "gradcam")
    }
    assert {r.path for r in results} == expected
    assert set(_files(Path("cache"))) == expected  # locks are removed on release

    images = read_artifact(grids).data
    x, labels = torch.from_numpy(images["images"]), torch.from_numpy(images["labels"])
    for setting_name in ("difull", "dipart"):
        setting = create_setting(setting_name, model, 2)
        reference = engine_maps(setting, x, labels, [0, 3], ["input", "features.19"], METHODS.split(","), batch_size=3)
        for (layer, method), maps in reference.items():
            artifact = read_artifact(ArtifactKey("attributions", "toy", setting_name, "tiny-vgg", layer, method).path("cache"))
            torch.testing.assert_close(torch.from_numpy(artifact.data["maps"]), maps, rtol=1e-5, atol=1e-6)
            assert artifact.data["maps"].dtype == np.float32
            assert artifact.data["grid_index"].tolist() == [0, 1, 2]
            assert artifact.data["cells"].tolist() == [0, 3] and artifact.data["heads"].tolist() == [0, 3]
            assert np.array_equal(artifact.data["classes"], images["labels"][:, [0, 3]])
            attrs = artifact.attrs
            assert (attrs["grids"], attrs["setting"], attrs["layer"], attrs["method"]) == ("toy", setting_name, layer, method)
            assert attrs["layer_module"] == model.canonical_layer(layer) and attrs["image_size"] == 64 and attrs["n"] == 2
            assert artifact.provenance["inputs"] == {"grids": file_hash(grids), "model": model.weights_hash}
            assert artifact.provenance["config"]["identity"]["cells"] == [0, 3]


def test_gridpg_evaluates_every_cell_of_head_zero(workdir, model):
    grids = write_grids(Path("g.h5"), count=2)
    (result,) = attribute(grids=grids, setting="gridpg", model=model, layers="final", methods="gradcam++")
    data = read_artifact(result.path).data
    assert data["maps"].shape == (2, 4, 4, 4) and data["heads"].tolist() == [0, 0, 0, 0]
    assert data["cells"].tolist() == [0, 1, 2, 3]


def test_rerun_skips_up_to_date_force_recomputes_and_a_changed_input_is_stale(workdir, model, monkeypatch):
    grids = write_grids(Path("g.h5"), count=2)
    calls = []
    compute = engine.compute_maps
    monkeypatch.setattr(engine, "compute_maps", lambda *a, **k: calls.append(1) or compute(*a, **k))
    run = dict(grids=grids, setting="gridpg", model=model, layers="input,final", methods="grad,ixg")
    first = attribute(**run)
    stamps = {r.path: os.stat(r.path).st_mtime_ns for r in first}
    assert len(calls) == 1
    again = attribute(**run)
    assert [r.status for r in again] == ["up to date"] * 4 and len(calls) == 1
    assert {r.path: os.stat(r.path).st_mtime_ns for r in again} == stamps
    forced = attribute(**run, force=True)
    assert [r.status for r in forced] == ["computed"] * 4 and len(calls) == 2
    write_grids(grids, count=2, seed=1)  # new content under the same name
    assert [r.status for r in attribute(**run)] == ["computed"] * 4 and len(calls) == 3
    other = tiny_vgg(dtype=torch.float32, seed=1)  # other weights
    assert [r.status for r in attribute(**{**run, "model": other})] == ["computed"] * 4


def test_a_killed_run_resumes_from_its_last_finished_chunk(workdir, model, monkeypatch):
    grids = write_grids(Path("g.h5"), count=5, variant="corners")
    run = dict(grids=grids, setting="dipart", model=model, layers="input,middle", methods="grad,intgrad:steps=3", batch_size=2)
    reference = attribute(**run, cache_root="clean")

    original = Gradient.from_gradients
    calls = {"grad": 0, "chunks": 0}

    def dies_on_third_chunk(self, a, g):
        if calls["grad"] == 2 * 2:  # two layers per chunk: chunks 0 and 1 finished
            raise KeyboardInterrupt("killed")
        calls["grad"] += 1
        return original(self, a, g)

    monkeypatch.setattr(Gradient, "from_gradients", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        attribute(**run)
    partial = sorted(p.name for p in Path("cache").rglob("chunk-*.npy"))
    assert partial == ["chunk-000000.npy"] * 4 + ["chunk-000001.npy"] * 4
    assert not any(p.suffix == ".h5" for p in Path("cache").rglob("*"))

    monkeypatch.setattr(Gradient, "from_gradients", original)
    compute = engine.compute_maps

    def counting(setting, x, *args, **kwargs):
        calls["chunks"] += 1
        return compute(setting, x, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_maps", counting)
    resumed = attribute(**run)
    assert calls["chunks"] == 1  # only the third chunk (row 4) was left
    assert [r.status for r in resumed] == ["resumed"] * 4
    for done, clean in zip(resumed, reference):
        assert np.array_equal(read_artifact(done.path).data["maps"], read_artifact(clean.path).data["maps"])
    assert not list(Path("cache").rglob("*.partial"))


def _killed_after_the_first_chunk(monkeypatch, **run) -> None:
    """Run ``attribute`` with grad failing from its second chunk on, then undo the failure."""
    original = Gradient.from_gradients
    state = {"calls": 0}

    def dies(self, a, g):
        state["calls"] += 1
        if state["calls"] > 1:
            raise RuntimeError("killed")
        return original(self, a, g)

    monkeypatch.setattr(Gradient, "from_gradients", dies)
    with pytest.raises(RuntimeError):
        attribute(**run)
    monkeypatch.setattr(Gradient, "from_gradients", original)


def test_checkpoints_of_another_config_are_discarded(workdir, model, monkeypatch):
    grids = write_grids(Path("g.h5"), count=4)
    _killed_after_the_first_chunk(
        monkeypatch, grids=grids, setting="gridpg", model=model, layers="input", methods="grad", batch_size=2
    )
    (result,) = attribute(grids=grids, setting="gridpg", model=model, layers="input", methods="grad", batch_size=3)
    assert result.status == "computed"  # the batch size changed: the old chunks do not fit
    (clean,) = attribute(grids=grids, setting="gridpg", model=model, layers="input", methods="grad", cache_root="c2")
    maps, expected = read_artifact(result.path).data["maps"], read_artifact(clean.path).data["maps"]
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(layers="input,layer9"), r"model tiny-vgg has no layer 'layer9'; valid: input, middle, final, all"),
        (dict(setting="difull"), r"setting difull needs corners grids but .* holds distinct grids"),
        (dict(setting="gridpg,difull"), r"setting difull needs corners grids"),
        (dict(grid_args=dict(cell=16)), r"has 16-pixel cells but tiny-vgg expects 32-pixel cells"),
        (dict(grid_args=dict(classes=5)), r"built from a 5-class dataset but tiny-vgg has 10 classes"),
        (dict(methods="grad,nope"), r"unknown method 'nope'; valid: .*gradcam"),
        (dict(heads="0,7"), r"invalid --heads '0,7'"),
        (dict(batch_size=0), r"--batch-size must be at least 1"),
        (dict(device="tpu"), r"unknown device 'tpu'"),
        (dict(setting="gridpq"), r"unknown setting 'gridpq'; valid: difull, dipart, gridpg"),
        (dict(grids="missing.h5"), r"missing.h5: no such file"),
    ],
)
def test_bad_input_raises_before_anything_is_written(workdir, model, change, message):
    change = dict(change)
    grids = write_grids(Path("g.h5"), count=2, **change.pop("grid_args", {}))
    run = {**dict(grids=grids, setting="gridpg", model=model, layers="input", methods="grad"), **change}
    before = _files(workdir)
    with pytest.raises(UserError, match=message):
        attribute(**run)
    assert _files(workdir) == before


def test_registered_models_are_checked_before_their_weights_are_loaded_or_trained(workdir, monkeypatch):
    import attrcli.models.digits as digits

    monkeypatch.setattr(digits, "_train", lambda *a, **k: pytest.fail("trained before validating"))
    grids = write_grids(Path("g.h5"), count=1, cell=16)
    with pytest.raises(UserError, match="16-pixel cells but digits-vgg11 expects 32"):
        attribute(grids=grids, setting="gridpg", model="digits-vgg11", layers="input", methods="grad")
    grids = write_grids(Path("g.h5"), count=1)
    with pytest.raises(UserError, match="model digits-resnet18 has no layer 'features.3'"):
        attribute(grids=grids, setting="gridpg", model="digits-resnet18", layers="features.3", methods="grad")
    assert _files(workdir) == [workdir / "g.h5"]


def test_the_geometry_is_checked_once_per_setting_on_the_weightless_copy_when_there_is_one(workdir, monkeypatch):
    from attrcli.settings.base import GridSetting

    checked = []
    check = GridSetting.check_geometry

    def spying(self):
        checked.append((self.name, next(self.model.module.parameters()).device.type))
        return check(self)

    monkeypatch.setattr(GridSetting, "check_geometry", spying)
    grids = write_grids(Path("g.h5"), count=1, variant="corners")
    kwargs = dict(grids=grids, setting="difull,dipart", layers="final", methods="grad", force=True)
    attribute(model="digits-vgg11", weights="random", **kwargs)  # registered: a meta copy first
    assert checked == [("difull", "meta"), ("dipart", "meta")]
    checked.clear()
    attribute(model="tests.engine.helpers:tiny_vgg_model", **kwargs)  # a factory has no meta copy
    assert checked == [("difull", "cpu"), ("dipart", "cpu")]


def test_user_models_given_as_module_attr_and_layer_all(workdir):
    grids = write_grids(Path("g.h5"), count=2)
    results = attribute(grids=grids, setting="gridpg", model="tests.engine.helpers:tiny_vgg_model", layers="all", methods="layercam")
    model = tiny_vgg(dtype=torch.float32)
    assert [r.key.layer for r in results] == ["input", *model.stage_layers]
    assert all(r.key.model == "tiny-vgg" for r in results)
    assert read_artifact(results[-1].path).data["maps"].shape == (2, 4, 4, 4)


def test_a_single_chunk_writes_no_checkpoint_and_clears_a_stale_one(workdir, model, monkeypatch):
    grids = write_grids(Path("g.h5"), count=4)
    run = dict(grids=grids, setting="gridpg", model=model, layers="input", methods="grad")
    _killed_after_the_first_chunk(monkeypatch, **run, batch_size=2)  # chunk 0 of 2 checkpointed
    (stale,) = Path("cache").rglob("*.partial")

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("a job of one chunk has nothing to resume")

    monkeypatch.setattr(engine, "Checkpoint", no_checkpoint)
    (result,) = attribute(**run, batch_size=4)
    assert result.status == "computed" and not stale.exists()
    assert sorted(p.name for p in Path("cache").rglob("*") if p.is_file()) == ["grad.h5"]


def test_maps_are_computed_channels_last_with_frozen_weights_and_both_are_put_back(workdir, model, monkeypatch):
    grids = write_grids(Path("g.h5"), count=3)
    model.module.classifier[0].weight.requires_grad_(False)  # a user's own flag survives too
    weights = {name: (p.data_ptr(), p.stride(), p.requires_grad) for name, p in model.module.named_parameters()}
    seen = []
    compute = engine.compute_maps

    def spying(setting, x, *args, **kwargs):
        conv = next(p for p in setting.model.module.parameters() if p.dim() == 4)
        frozen = not any(p.requires_grad for p in setting.model.module.parameters())
        seen.append((conv.is_contiguous(memory_format=torch.channels_last), frozen))
        return compute(setting, x, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_maps", spying)
    try:
        results = attribute(grids=grids, setting="gridpg", model=model, layers="input,final", methods="grad,gradcam")
        restored = {name: (p.data_ptr(), p.stride(), p.requires_grad) for name, p in model.module.named_parameters()}
    finally:
        model.module.classifier[0].weight.requires_grad_(True)
    assert seen == [(True, True)]  # channels-last and frozen while maps are computed
    assert restored == weights
    setting = create_setting("gridpg", model, 2)
    x = torch.from_numpy(read_artifact(grids).data["images"])
    labels = torch.from_numpy(read_artifact(grids).data["labels"])
    plain = engine_maps(setting, x, labels, [0, 1, 2, 3], ["input", "final"], ["grad", "gradcam"])
    for result in results:
        expected = plain[(result.key.layer, result.key.method)].numpy()
        maps = read_artifact(result.path).data["maps"]
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
