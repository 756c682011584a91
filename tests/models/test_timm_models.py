"""timm models as ``timm:NAME``: the adapter read from timm's structure, the properties every
family must have (DiFull gradients exactly in the target cell, GridPG / DiFull heads on one cell
equal to timm's own forward), aliases in ``attrcli models``, weights from the local cache only,
and one-line refusals (an unfitting family, timm missing).

Fast tests use small members or small inputs (random weights); the 224-pixel bar models run in
one slow test."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.errors import UserError
from attrcli.metrics.localization import localization_scores
from attrcli.models import MODELS, create_model
from attrcli.models.registry import build_module
from attrcli.models.timm_models import cached_weights_file, timm_spec
from attrcli.settings import create_setting
from tests.engine.helpers import engine_maps, grid_images, grid_labels

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

#: One small member (or small input) per supported timm family, 32-pixel cells.
SMALL = {
    "resnet18": {},
    "efficientnet_b0": {},
    "convnext_atto": {},
    "regnety_002": {},
    "deit_tiny_patch16_224": {"img_size": 32, "depth": 3},
    "vit_tiny_patch16_224": {"img_size": 32, "depth": 3, "global_pool": "avg", "class_token": False},
}


def small(name: str, cell: int = 32):
    spec = timm_spec(name, cell_size=cell, **SMALL[name])
    return spec.adapter(build_module(spec))


# --- properties shared with the B-cos tests ----------------------------------------------------------


def assert_difull_input_exact(model, methods=("grad", "ixg"), n: int = 2) -> None:
    """DiFull at the input: maps exactly zero outside the target cell, so a score of exactly 1.0."""
    setting = create_setting("difull", model, n)
    x = grid_images(1, n=n, cell=model.cell_size, dtype=torch.float32)
    labels = torch.from_numpy(grid_labels(1, n=n, variant="corners"))
    cells = setting.default_cells()
    maps = engine_maps(setting, x, labels, cells, ["input"], list(methods), batch_size=1)
    for method in methods:
        value = maps[("input", method)]
        outside = ~setting.cell_mask(torch.tensor(cells), value.shape[-2:])
        assert torch.count_nonzero(value * outside[None]) == 0, method
        scores, _ = localization_scores(value.numpy(), cells=np.array(cells), n=n, image_size=n * model.cell_size)
        positive = (value.flatten(2).amax(-1) > 0).numpy()
        assert positive.any() and np.all(scores[positive] == 1.0), (method, scores)


def assert_single_cell_heads_are_the_model(model, plain, *, atol: float = 1e-5) -> None:
    """On a 1×1 grid the GridPG head and the DiFull head equal the plain model's logits."""
    x = grid_images(2, n=1, cell=model.cell_size, dtype=torch.float32)
    with torch.no_grad():
        expected = plain(x)
        for name in ("gridpg", "difull"):
            logits = create_setting(name, model, 1).forward(x)[:, 0]
            torch.testing.assert_close(logits, expected, rtol=0, atol=atol)
    assert expected.std() > 0


# --- small members -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_members_have_the_family_properties(name):
    model = small(name)
    assert_single_cell_heads_are_the_model(model, model.module)
    assert_difull_input_exact(model)
    with torch.no_grad():  # blocks then head are timm's forward exactly
        x = grid_images(1, n=1, cell=32, dtype=torch.float32)
        assert torch.equal(model.logits(x), model.module(x))


def test_gridpg_on_a_whole_grid_tiles_the_cells():
    """A CNN's pooling head on the composite map; a ViT's position embeddings resampled by timm."""
    for name, final in (("resnet18", (2, 2)), ("deit_tiny_patch16_224", (4, 4))):
        model = small(name)
        setting = create_setting("gridpg", model, 2)
        setting.check_geometry()
        assert setting.map_size(model.layer_index("final")) == final  # n × one cell's map
        x = grid_images(1, n=2, cell=32, dtype=torch.float32)
        with torch.no_grad():
            logits = setting.forward(x)
        assert logits.shape == (1, 1, 1000) and torch.isfinite(logits).all()


def test_aliases_follow_the_stages_and_the_token_head():
    rows = {
        row["name"]: row for row in json.loads(runner.invoke(app, [
            "models", "--json", "timm:resnet50", "timm:efficientnet_b0", "timm:convnext_tiny", "timm:regnety_016",
            "timm:deit_small_patch16_224", "timm:vit_small_patch16_224",
        ]).stdout)
    }
    alias = {name: (row["aliases"]["middle"], row["aliases"]["final"]) for name, row in rows.items()}
    assert alias == {
        "timm:resnet50": ("layer2", "layer4"),
        "timm:efficientnet_b0": ("blocks.2", "blocks.6"),
        "timm:convnext_tiny": ("stages.1", "stages.3"),
        "timm:regnety_016": ("s2", "s4"),
        "timm:deit_small_patch16_224": ("blocks.5", "blocks.10"),  # class token: block L-2, as torchvision's ViT
        "timm:vit_small_patch16_224": ("blocks.5", "blocks.10"),
    }
    resnet = rows["timm:resnet50"]
    assert resnet["family"] == "timm" and resnet["cell_size"] == 224 and resnet["num_classes"] == 1000
    assert resnet["layers"][:6] == ["input", "conv1", "bn1", "act1", "maxpool", "layer1.0"]
    assert resnet["stage_layers"] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert rows["timm:vit_small_patch16_224"]["layers"][:3] == ["input", "patch_embed", "blocks.0"]
    assert MODELS.get("timm:vit_small_patch16_224").mean == (0.5, 0.5, 0.5)  # from the pretrained config
    avg = small("vit_tiny_patch16_224")
    assert avg.aliases["final"] == "blocks.2" and avg.is_token_layer("final")  # average pooling: the last block


def test_family_listing_and_refusals_name_what_is_valid():
    listed = runner.invoke(app, ["models", "--family", "timm", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [row["name"] for row in json.loads(listed.stdout)]
    assert {"timm:resnet50", "timm:efficientnet_b0", "timm:convnext_tiny", "timm:regnety_016",
            "timm:deit_small_patch16_224", "timm:vit_small_patch16_224"} <= set(names)
    for name, message in [
        ("timm:densenet121", "its family does not fit the adapter; valid: the timm families convnext, deit"),
        ("timm:deit_small_distilled_patch16_224", "it is a VisionTransformerDistilled"),
        ("timm:nosuch_net", "unknown timm model 'nosuch_net'; valid:"),
    ]:
        result = runner.invoke(app, ["models", name])
        assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.output
    with pytest.raises(UserError, match="does not start with global average pooling .max."):
        timm_spec("resnet18", global_pool="max")


def test_without_timm_the_name_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    monkeypatch.setattr(MODELS, "_packages", {})
    with pytest.raises(UserError, match=r"^timm models need the timm package, which is not installed: "
                                        r"pip install 'attrcli\[timm\]'$"):
        MODELS.get("timm:resnet18")
    result = runner.invoke(app, ["models", "timm:resnet18"])
    assert result.exit_code == 2 and "pip install 'attrcli[timm]'" in result.stderr


def test_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"no pretrained weights for timm:resnet18 in the local cache: attrcli does "
                                        r"not download; fetch them once with .* or pass --weights FILE") as refused:
        create_model("timm:resnet18")
    assert "\n" not in str(refused.value) and not (tmp_path / "hf").exists() and not (tmp_path / "torch").exists()
    # the file where timm.create_model(pretrained=True) leaves it in the hub cache
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in create_model("timm:resnet18", weights="random")
             .module.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    assert cached_weights_file("resnet18") == snapshot / "model.safetensors"
    loaded = create_model("timm:resnet18")
    assert torch.equal(loaded.module.fc.bias, state["fc.bias"])


@pytest.mark.slow
def test_the_224_pixel_bar_models():
    """The issue's bar at 224-pixel cells, random weights: DiFull grad/ixg at the input exactly
    1.0; GridPG and DiFull heads on a single cell equal timm's forward within 1e-5."""
    for name in ("timm:resnet50", "timm:efficientnet_b0", "timm:convnext_tiny", "timm:vit_small_patch16_224"):
        model = create_model(name, weights="random")
        assert model.cell_size == 224
        assert_single_cell_heads_are_the_model(model, model.module)
        assert_difull_input_exact(model)
