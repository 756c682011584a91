"""The model registry: names, adapters, aliases and safe weight loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attrcli.errors import UserError
from attrcli.models import (
    MODELS,
    ModelAdapter,
    ModelSpec,
    create_model,
    describe_model,
    list_models,
)
from attrcli.models.digits import DigitsVGG
from attrcli.models.torchvision_models import hub_weights_path

TORCHVISION = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")] + [
    f"resnet{d}" for d in (18, 34, 50, 101, 152)
]
NEWER = [f"convnext_{s}" for s in ("tiny", "small", "base", "large")] + [
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32",
]


# Building and hashing the big torchvision models takes seconds each on CPU: the rest are slow.
# Of the newer families one model each is built (the others share its adapter; tiny versions
# of all four are tested in tests/settings/test_family_settings.py).
FAST = ("digits-vgg11", "digits-resnet18", "vgg11", "resnet18")
BUILT_NEWER = ("convnext_tiny", "swin_t", "swin_v2_t", "vit_b_32")
EVERY_MODEL = [
    name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
    for name in list_models() if name not in NEWER or name in BUILT_NEWER
]


def test_registry_lists_every_model():
    assert list_models() == sorted(TORCHVISION + NEWER + ["digits-vgg11", "digits-resnet18"])


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'vgg12'.*digits-vgg11.*resnet18"):
        create_model("vgg12", weights="random")


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_adapter_logits_equal_module_forward(name):
    adapter = create_model(name, weights="random")
    assert not adapter.module.training
    size = 32 if adapter.cell_size == 32 else 64  # torchvision models pool adaptively
    if name.startswith("vit"):
        size = adapter.cell_size  # torchvision's ViT forward takes its own image size only
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapter.module(x)
        got = adapter.logits(x)
    assert expected.shape == (2, adapter.num_classes)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert len(adapter.weights_hash) == 64


@pytest.mark.parametrize("name", list_models())
def test_structure_is_consistent(name):
    info = describe_model(name)
    assert info.layers[0] == "input" and len(set(info.layers)) == len(info.layers)
    assert set(info.aliases) == {"input", "middle", "final"}
    for layer in info.stage_layers + [info.aliases["middle"], info.aliases["final"]]:
        assert layer in info.layers or f"{layer}.0" in info.layers
    order = [info.layers.index(l) if l in info.layers else info.layers.index(f"{l}.0") for l in info.stage_layers]
    assert order == sorted(order)


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_structure_without_weights_matches_built_model(name):
    info = describe_model(name)
    adapter = create_model(name, weights="random")
    assert info.layers == adapter.layers
    assert info.aliases == {"input": "input", **adapter.aliases}
    for alias in ("middle", "final"):
        assert adapter.canonical_layer(alias) in adapter.layers


def test_vgg11_and_resnet18_aliases_follow_the_paper():
    vgg = describe_model("vgg11")
    assert (vgg.aliases["middle"], vgg.aliases["final"]) == ("features.12", "features.19")
    resnet = describe_model("resnet18")
    assert (resnet.aliases["middle"], resnet.aliases["final"]) == ("layer2", "layer4")
    assert resnet.stage_layers == ["layer1", "layer2", "layer3", "layer4"]


def test_digits_aliases_and_feature_sizes():
    vgg = create_model("digits-vgg11", weights="random")
    assert vgg.aliases == {"middle": "features.7", "final": "features.14"}  # conv3, conv6
    convs = [m for m in vgg.module.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    x = torch.zeros(1, 3, 32, 32)
    final = vgg.run_blocks(x, stop=vgg.layer_index("final"))
    assert final.shape[-2:] == (4, 4)
    assert vgg.run_blocks(x).shape[-2:] == (2, 2)
    resnet = create_model("digits-resnet18", weights="random")
    assert resnet.aliases == {"middle": "layer2", "final": "layer4"}
    assert "maxpool" not in resnet.layers
    assert resnet.run_blocks(x, stop=resnet.layer_index("layer4")).shape[-2:] == (4, 4)
    assert resnet.run_blocks(x, stop=resnet.layer_index("layer2")).shape[-2:] == (16, 16)


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a = create_model("digits-resnet18", weights="random")
    b = create_model("digits-resnet18", weights="random")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.weights_hash == b.weights_hash
    for (key, x), (_, y) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert torch.equal(x, y), key


def test_weights_file_roundtrip_sets_hash(tmp_path):
    source = create_model("digits-vgg11", weights="random")
    state = {k: v + 1.0 for k, v in source.module.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded = create_model("digits-vgg11", weights=tmp_path / "w.pt")
    assert torch.equal(loaded.module.classifier[0].bias, state["classifier.0.bias"])
    assert loaded.weights_hash != source.weights_hash
    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    assert create_model("digits-vgg11", weights=str(tmp_path / "ckpt.pt")).weights_hash == loaded.weights_hash


def test_weights_of_wrong_shape_name_the_parameter(tmp_path):
    state = create_model("digits-vgg11", weights="random").module.state_dict()
    state["features.3.weight"] = torch.zeros(32, 16, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"features\.3\.weight has shape \(32, 16, 5, 5\).*needs \(32, 16, 3, 3\)"):
        create_model("digits-vgg11", weights=tmp_path / "bad.pt")


def test_weights_missing_or_extra_key(tmp_path):
    state = create_model("digits-vgg11", weights="random").module.state_dict()
    missing = {k: v for k, v in state.items() if k != "classifier.6.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"classifier\.6\.bias \(shape \(10,\)\) is missing"):
        create_model("digits-vgg11", weights=tmp_path / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="unexpected parameter extra.weight"):
        create_model("digits-vgg11", weights=tmp_path / "extra.pt")


class _Payload:
    """Pickles to a call of os.system: loading it without weights_only would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"features.0.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused: unpickling it would need to run code"):
        create_model("digits-vgg11", weights=tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "does not exist"), (b"not a checkpoint", "not a readable weights file"), ([1, 2], "not a state dict")],
)
def test_unreadable_weights(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=match) as info:
        create_model("digits-vgg11", weights=path)
    assert "\n" not in str(info.value)


def test_missing_torchvision_cache_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_weights_path("resnet18") == expected
    with pytest.raises(UserError) as info:
        create_model("resnet18")
    assert str(expected) in str(info.value) and "--weights FILE" in str(info.value)
    assert not expected.parent.exists()  # nothing downloaded or created


def test_torchvision_cache_file_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    state = {k: torch.full_like(v, 0.5) for k, v in create_model("resnet18", weights="random").module.state_dict().items()}
    path = hub_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    adapter = create_model("resnet18")
    assert torch.equal(adapter.module.fc.weight, state["fc.weight"])


def test_bad_device_is_a_user_error():
    with pytest.raises(UserError, match="valid: auto, cpu"):
        create_model("digits-vgg11", weights="random", device="tpu")


def _user_adapter() -> ModelAdapter:
    """A user's own model."""
    return create_model("digits-vgg11", weights="random")


USER_SPEC = ModelSpec(
    name="my-vgg",
    family="vgg",
    factory=lambda: DigitsVGG(width=4, hidden=8),
    cell_size=32,
    num_classes=10,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    description="tiny",
)


def test_user_models_from_module_attr():
    factory = create_model(f"{__name__}:_user_adapter")
    assert factory.aliases["final"] == "features.14"
    spec = create_model(f"{__name__}:USER_SPEC", weights="random")
    assert spec.name == "my-vgg" and spec.module.features[0].out_channels == 4
    with pytest.raises(UserError, match="no default weights"):
        create_model(f"{__name__}:USER_SPEC")
    with pytest.raises(UserError, match="must be a ModelSpec or a zero-argument factory"):
        create_model(f"{__name__}:test_bad_device_is_a_user_error")
    with pytest.raises(UserError, match="cannot load model"):
        create_model(f"{__name__}:missing")
    assert "digits-vgg11" in MODELS
