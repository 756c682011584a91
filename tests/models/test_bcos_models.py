"""B-cos networks as ``bcos:NAME`` and the ``bcos`` method.

- the adapter encodes the normalised grid as the package's input ``[x, 1 − x]``, so its blocks
  and head are the package's forward; the family properties of every new family hold;
- ``bcos``: the contribution map of the dynamic linear form; summed over the input it equals the
  explained logit minus the logit layer's fixed bias, per head, in GridPG and DiFull (relative
  tolerance 1e-12 in float64, 1e-5 in float32; measured ≤ 3e-15 and ≤ 1.3e-6);
- the post-hoc methods run on B-cos models too, and ``bcos`` is refused on networks that are not
  dynamic linear; weights only from torch.hub's cache.

Small members at 32-pixel cells with 10 classes (random weights); the 224-pixel bar is one slow
test. The package's VGG-11 (a 7×7 convolution with 4096 channels in its classifier) is built
only on the meta device here and at 224 pixels in the slow test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.errors import UserError
from attrcli.methods import METHODS
from attrcli.methods.applicability import check_method, valid_methods
from attrcli.models import MODELS, ModelAdapter, create_model
from attrcli.models.bcos_models import bcos_spec, encoding_of
from attrcli.models.registry import build_module
from attrcli.settings import create_setting
from attrcli.store import read_artifact
from tests.engine.helpers import engine_maps, grid_images, grid_labels, write_grids
from tests.models.test_timm_models import assert_difull_input_exact, assert_single_cell_heads_are_the_model
from tests.models.tiny_families import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SMALL = ("resnet18", "densenet121", "convnext_tiny", "simple_vit_ti_patch16_224")


def small(name: str, *, cell: int = 32, dtype: torch.dtype = torch.float32) -> ModelAdapter:
    spec = bcos_spec(name, cell_size=cell, num_classes=10)
    model = spec.adapter(build_module(spec))
    model.module.to(dtype)
    return model


def bcos_resnet18_32() -> ModelAdapter:
    """B-cos ResNet-18 at 32-pixel cells, 10 classes (for --model tests.models.test_bcos_models:bcos_resnet18_32)."""
    return small("resnet18")


def plain(model: ModelAdapter):
    """The package's own forward on the encoded image."""
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)

    def forward(z: torch.Tensor) -> torch.Tensor:
        x = z * std.to(z.dtype) + mean.to(z.dtype)
        return model.module(torch.cat([x, 1 - x], dim=1))

    return forward


def logit_layer(model: ModelAdapter) -> torch.nn.Module:
    return next(m for m in model.module.modules() if type(m).__name__ == "LogitLayer")


@pytest.mark.parametrize("name", SMALL)
def test_small_members_have_the_family_properties(name):
    model = small(name)
    assert_single_cell_heads_are_the_model(model, plain(model))
    assert_difull_input_exact(model)
    assert_difull_input_exact(model, methods=("bcos",))


def test_the_encoding_undoes_the_normalisation_and_passes_an_encoded_image():
    model = small("resnet18", dtype=torch.float64)
    encode = encoding_of(model)
    z = grid_images(2, n=1, cell=32)
    x = z * torch.tensor(model.std, dtype=z.dtype).view(1, 3, 1, 1) + torch.tensor(model.mean, dtype=z.dtype).view(1, 3, 1, 1)
    encoded = encode(z)
    torch.testing.assert_close(encoded, torch.cat([x, 1 - x], 1), rtol=0, atol=1e-12)
    assert torch.equal(encode(encoded), encoded)
    with torch.no_grad():  # the first block takes either form
        assert torch.equal(model.blocks[0][1](encoded), model.blocks[0][1](z))


def test_aliases_and_layers_in_attrcli_models():
    names = ["bcos:resnet18", "bcos:densenet121", "bcos:vgg11_bnu", "bcos:convnext_tiny", "bcos:simple_vit_ti_patch16_224"]
    result = runner.invoke(app, ["models", "--json", *names])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {name: (row["aliases"]["middle"], row["aliases"]["final"]) for name, row in rows.items()} == {
        "bcos:resnet18": ("layer2", "layer4"),
        "bcos:densenet121": ("features.denseblock2", "features.denseblock4"),
        "bcos:vgg11_bnu": ("features.12", "features.19"),  # the norms after conv 5 and conv 8
        "bcos:convnext_tiny": ("features.4", "features.8"),
        "bcos:simple_vit_ti_patch16_224": ("0.transformer.encoder_5", "0.transformer.encoder_11"),
    }
    assert all(row["family"] == "bcos" and row["cell_size"] == 224 for row in rows.values())
    assert rows["bcos:resnet18"]["layers"][:5] == ["input", "conv1", "bn1", "pool", "layer1.0"]
    with torch.device("meta"):  # VGG's classifier starts with a 7×7 convolution: GridPG slides it
        vgg = MODELS.get("bcos:vgg11_bnu")
        assert not vgg.adapter(vgg.factory()).gap_head
    listed = json.loads(runner.invoke(app, ["models", "--family", "bcos", "--json"]).stdout)
    assert {"bcos:resnet18", "bcos:vgg11_bnu", "bcos:simple_vit_ti_patch16_224"} <= {row["name"] for row in listed}
    assert not [row for row in listed if "standard_" in row["name"]]  # the package's non-B-cos ViTs


# --- the bcos method ---------------------------------------------------------------------------------


def _explained_logits(setting, x, labels, cells) -> torch.Tensor:
    """Logit of each evaluated head for its class, less the logit layer's bias ``(B, T)`` (computed
    without the bias, so the small logits of random weights lose no digits to it)."""
    layer = logit_layer(setting.model)
    bias, layer.logit_bias = layer.logit_bias, None
    try:
        with torch.no_grad():
            logits = setting.forward(x)  # (B, heads, classes)
    finally:
        layer.logit_bias = bias
    assert bias == pytest.approx(-np.log(999))  # the package sets the ImageNet bias, whatever the classes
    heads = torch.tensor([setting.head_of_cell(c) for c in cells])
    return logits[torch.arange(len(x))[:, None], heads[None], labels[:, cells]]


@pytest.mark.parametrize("setting_name", ["gridpg", "difull"])
def test_bcos_maps_sum_to_the_explained_logit_per_head(setting_name):
    """Completeness of the dynamic linear form: Σ map = logit − logit bias, per head, at the input
    and at hidden layers (a B-cos network has no other bias)."""
    model = small("resnet18", dtype=torch.float64)
    setting = create_setting(setting_name, model, 2)
    x = grid_images(1, n=2, cell=32)
    labels = torch.from_numpy(grid_labels(1, n=2, variant=setting.variant))
    cells = list(range(4))
    maps = engine_maps(setting, x, labels, cells, ["input", "middle", "final"], ["bcos"], batch_size=1)
    expected = _explained_logits(setting, x, labels, cells)
    assert expected.abs().min() > 0
    for layer in ("input", "middle", "final"):
        torch.testing.assert_close(maps[(layer, "bcos")].sum((-2, -1)), expected, rtol=1e-12, atol=0)


def test_bcos_completeness_in_float32_and_on_the_vit():
    """float32: within 1e-5 (relative). The Simple ViT adds its sin-cos position embedding after the patch
    embedding, a constant the input map does not contain, so completeness holds from the first
    encoder on."""
    model = small("resnet18")
    setting = create_setting("gridpg", model, 2)
    x = grid_images(1, n=2, cell=32, dtype=torch.float32)
    labels = torch.from_numpy(grid_labels(1, n=2))
    maps = engine_maps(setting, x, labels, [0, 1, 2, 3], ["input"], ["bcos"])
    expected = _explained_logits(setting, x, labels, [0, 1, 2, 3])
    torch.testing.assert_close(maps[("input", "bcos")].sum((-2, -1)), expected, rtol=1e-5, atol=0)
    vit = small("simple_vit_ti_patch16_224", dtype=torch.float64)
    for setting_name in ("gridpg", "difull"):
        setting = create_setting(setting_name, vit, 2)
        x = grid_images(1, n=2, cell=32)
        labels = torch.from_numpy(grid_labels(1, n=2, variant=setting.variant))
        layer = "0.transformer.encoder_0"
        maps = engine_maps(setting, x, labels, [0, 3], [layer, "final"], ["bcos"])
        expected = _explained_logits(setting, x, labels, [0, 3])
        for key in (layer, "final"):
            torch.testing.assert_close(maps[(key, "bcos")].sum((-2, -1)), expected, rtol=1e-12, atol=0)


def test_post_hoc_methods_run_on_b_cos_models_and_bcos_only_on_dynamic_linear_ones():
    """grad, ixg, intgrad, Grad-CAM and occlusion (cheap configs) beside bcos, at the input and the
    final layer, in GridPG, DiFull and rescaled GridPG: finite maps that are not all zero."""
    model = small("resnet18")
    methods = ["grad", "ixg", "intgrad:steps=4", "gradcam:relu=false", "occlusion:k=16,s=16", "bcos"]
    for setting_name in ("gridpg", "difull", "gridpg-rescaled"):
        setting = create_setting(setting_name, model, 2)
        valid = valid_methods(setting, "input")
        assert {"grad", "ixg", "intgrad", "gradcam", "occlusion", "bcos", "rise"} <= set(valid)
        x = grid_images(1, n=2, cell=32, dtype=torch.float32)
        labels = torch.from_numpy(grid_labels(1, n=2, variant=setting.variant))
        cells = setting.default_cells()
        maps = engine_maps(setting, x, labels, cells, ["input"], methods)
        maps.update(engine_maps(setting, x, labels, cells, ["final"], [m for m in methods if "occlusion" not in m]))
        for key, value in maps.items():
            assert torch.isfinite(value).all() and value.abs().amax() > 0, (setting_name, key)
    convnext = create_setting("gridpg", tiny("tiny-convnext"), 2)
    with pytest.raises(UserError, match=r"^method bcos cannot run at layer input of tiny-convnext in gridpg: bcos "
                                        r"explains dynamic linear networks .* has LayerNorm2d \(features\.0\.1\); valid there: ") as refused:
        check_method(convnext, METHODS.get("bcos"), "input")
    assert "\n" not in str(refused.value) and "bcos" not in str(refused.value).rpartition("valid there:")[2]


def test_one_attribute_call_compares_bcos_with_post_hoc_methods(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_grids(Path("g.h5"), count=1, n=3, cell=32)
    result = runner.invoke(app, [
        "attribute", "--grids", "g.h5", "--model", "tests.models.test_bcos_models:bcos_resnet18_32",
        "--setting", "gridpg,gridpg-rescaled", "--layer", "input,final", "--method", "bcos,gradcam",
        "--device", "cpu", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    paths = result.stdout.splitlines()
    assert len(paths) == 8 and "cache/attributions/g/gridpg-rescaled/bcos:resnet18+custom/input/bcos.h5" in paths
    maps = read_artifact(next(p for p in paths if p.endswith("/gridpg/bcos:resnet18+custom/input/bcos.h5"))).data["maps"]
    assert maps.shape == (1, 9, 96, 96) and np.isfinite(maps).all()


# --- weights and the package -------------------------------------------------------------------------


def test_default_weights_come_from_torch_hubs_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"^no ImageNet weights for bcos:resnet18: attrcli does not download; put "
                                        r"the bcos package's file at .*/hub/checkpoints/resnet_18-68b4160fff\.pth") as refused:
        create_model("bcos:resnet18")
    assert "\n" not in str(refused.value) and not (tmp_path / "hub").exists()
    state = create_model("bcos:resnet18", weights="random").module.state_dict()
    state["fc.linear.weight"] = state["fc.linear.weight"] * 2
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "resnet_18-68b4160fff.pth")
    assert torch.equal(create_model("bcos:resnet18").module.fc.linear.weight, state["fc.linear.weight"])


def test_unknown_names_and_a_missing_package_are_one_line(monkeypatch):
    with pytest.raises(UserError, match=r"^unknown B-cos model 'resnet19'; valid: .*resnet18"):
        MODELS.get("bcos:resnet19")
    with pytest.raises(UserError, match=r"^unknown B-cos model 'standard_simple_vit_ti_patch16_224'"):
        MODELS.get("bcos:standard_simple_vit_ti_patch16_224")
    monkeypatch.setitem(sys.modules, "bcos", None)
    monkeypatch.setitem(sys.modules, "bcos.models.pretrained", None)
    monkeypatch.setattr(MODELS, "_packages", {})
    with pytest.raises(UserError, match=r"^B-cos models need the bcos package, which is not installed: "
                                        r"pip install 'attrcli\[bcos\]'$"):
        MODELS.get("bcos:resnet18")


@pytest.mark.slow
def test_the_224_pixel_bar():
    """bcos:resnet18 at 224-pixel cells, random weights: DiFull grad/ixg (and bcos) at the input
    exactly 1.0; GridPG and DiFull heads on a single cell equal the package's forward within
    1e-5. The package's VGG-11 on one cell too."""
    model = create_model("bcos:resnet18", weights="random")
    assert_single_cell_heads_are_the_model(model, plain(model))
    assert_difull_input_exact(model, methods=("grad", "ixg", "bcos"))
    vgg = create_model("bcos:vgg11_bnu", weights="random")
    x = grid_images(1, n=1, cell=224, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(create_setting("gridpg", vgg, 1).forward(x)[:, 0], plain(vgg)(x), rtol=0, atol=1e-5)
