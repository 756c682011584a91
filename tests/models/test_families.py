"""ConvNeXt, Swin and ViT: registry entries, adapters, `attrcli models`, and `attrcli attribute`
refusing the combinations that are not defined (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.engine.guided import guided_problem
from attrcli.errors import UserError
from attrcli.models import MODELS, create_model
from tests.engine.helpers import grid_images, resnet18, write_grids
from tests.models.tiny_families import CELL, tiny

runner = CliRunner()
NEW_FAMILIES = {
    "convnext": ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
    "swin": ["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"],
    "vit": ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"],
}


def test_the_families_are_registered_with_their_cell_sizes():
    for family, names in NEW_FAMILIES.items():
        for name in names:
            spec = MODELS.get(name)
            assert spec.family == family and spec.num_classes == 1000
            assert spec.cell_size == (256 if "_v2_" in name else 224)


def test_models_json_lists_the_families_aliases_and_layers():
    result = runner.invoke(app, ["models", "--json", "--model", "convnext_tiny,swin_t,swin_v2_b,vit_b_16,vit_l_32"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    convnext, swin, swin_v2, vit_b, vit_l = rows.values()
    assert convnext["family"] == "convnext" and swin["family"] == swin_v2["family"] == "swin"
    for row in (convnext, swin):
        assert row["aliases"] == {"input": "input", "middle": "features.3", "final": "features.7"}
        assert row["stage_layers"] == ["features.1", "features.3", "features.5", "features.7"]
    # convnext_tiny: depths 3, 3, 9, 3; swin_t: 2, 2, 6, 2 blocks per stage
    assert convnext["layers"][:5] == ["input", "features.0", "features.1.0", "features.1.1", "features.1.2"]
    assert len(convnext["layers"]) == 1 + 1 + 18 + 3 and len(swin["layers"]) == 1 + 1 + 12 + 3
    assert swin_v2["cell_size"] == 256 and "features.5.17" in swin_v2["layers"]  # swin_b: 18 blocks in stage 3
    assert vit_b["family"] == "vit" and vit_b["layers"][:3] == ["input", "conv_proj", "encoder.layers.encoder_layer_0"]
    assert vit_b["aliases"] == {
        "input": "input", "middle": "encoder.layers.encoder_layer_5", "final": "encoder.layers.encoder_layer_10",
    }
    assert vit_b["stage_layers"] == ["conv_proj"] + [f"encoder.layers.encoder_layer_{i}" for i in range(11)]
    assert vit_l["aliases"]["final"] == "encoder.layers.encoder_layer_22"


def test_models_table_shows_the_new_families(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["models", "--model", "convnext_tiny,vit_b_16"])
    assert result.exit_code == 0, result.output
    assert "convnext" in result.output and "vit" in result.output
    assert "final → encoder.layers.encoder_layer_10" in result.output and "final → features.7" in result.output


def test_default_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"no ImageNet weights for vit_b_16: attrcli does not download; put .*vit_b_16-c867db91\.pth"):
        create_model("vit_b_16")
    assert list(tmp_path.iterdir()) == []


def test_blocks_then_head_are_the_models_own_forward(tiny_family):
    model = tiny_family
    x = grid_images(3, n=1, cell=CELL)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), model.module(x), rtol=1e-12, atol=1e-12)


def test_stage_names_resolve_to_their_last_block_and_all_to_the_stages():
    swin, vit = tiny("tiny-swin"), tiny("tiny-vit")
    assert swin.canonical_layer("features.1") == "features.1.1" and swin.canonical_layer("final") == "features.3.1"
    assert swin.resolve_layers("all") == ["input", "features.1", "features.3"]
    assert vit.resolve_layers("all") == ["input", "conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert vit.is_token_layer("middle") and not vit.is_token_layer("conv_proj") and not swin.is_token_layer("final")
    with pytest.raises(UserError, match="model tiny-vit has no layer 'encoder.layers.encoder_layer_9'"):
        vit.canonical_layer("encoder.layers.encoder_layer_9")


def test_guided_backprop_is_defined_for_relu_networks_only():
    assert guided_problem(resnet18().module) is None
    assert guided_problem(tiny("tiny-vit").module) == (
        "guided backprop is defined for ReLU networks and the model has GELU (encoder.layers.encoder_layer_0.mlp.1)"
    )
    assert "GELU (features.1.0.block.4)" in guided_problem(tiny("tiny-convnext").module)
    assert guided_problem(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))) == "guided backprop needs nn.ReLU modules and the model has none"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def attribute(model: str, *args: str):
    return runner.invoke(app, [
        "attribute", "--model", f"tests.models.tiny_families:{model}", "--device", "cpu", "--quiet", *args,
    ])


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("tiny_vit_model", ["--setting", "dipart"], "setting dipart is not defined for tiny-vit"),
        ("tiny_vit_model", ["--layer", "middle", "--method", "grad,occlusion"],
         "method occlusion cannot run at layer middle of tiny-vit in gridpg"),
        ("tiny_swin_model", ["--method", "guided-backprop"], "guided backprop is defined for ReLU networks"),
    ],
)
def test_attribute_refuses_what_is_not_defined_in_one_line(workdir, model, args, message):
    variant = "corners" if "dipart" in args else "distinct"
    write_grids(Path("g.h5"), count=1, cell=CELL, variant=variant)
    result = attribute(model, "--grids", "g.h5", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "valid" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in workdir.rglob("*")) == ["g.h5"]


def test_attribute_runs_a_vit_at_its_token_layers_and_a_swin_in_dipart(workdir):
    write_grids(Path("d.h5"), count=2, cell=CELL)
    result = attribute("tiny_vit_model", "--grids", "d.h5", "--setting", "gridpg,gridpg-rescaled", "--layer",
                       "input,final", "--method", "grad,gradcam")
    assert result.exit_code == 0, result.output
    paths = result.stdout.splitlines()
    assert len(paths) == 8 and all(Path(p).is_file() for p in paths)
    assert "cache/attributions/d/gridpg-rescaled/tiny-vit/final/gradcam.h5" in paths
    write_grids(Path("c.h5"), count=2, cell=CELL, variant="corners")
    result = attribute("tiny_swin_model", "--grids", "c.h5", "--setting", "dipart,difull", "--layer", "final",
                       "--method", "occlusion")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
