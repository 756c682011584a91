"""LRP (attrcli/methods/lrp.py): conservation on bias-free models, agreement with zennit's own
attributor (whole model, single cells, hidden layers), GridPG's window mean as average pooling,
and the models it refuses."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat
from zennit.rules import Epsilon

from attrcli.errors import UserError
from attrcli.methods import METHODS
from attrcli.methods.applicability import check_method
from attrcli.methods.lrp import ExactMergeBatchNorm, composite
from attrcli.models import create_model
from attrcli.models.adapter import vgg_adapter
from attrcli.names import PAPER_SETTINGS
from attrcli.settings import create_setting
from tests.engine.helpers import engine_maps, grid_images, grid_labels, tiny_vgg
from tests.models.tiny_families import tiny


def bias_free(model):
    """Zero every bias, and batch norms that merge into bias-free convolutions (random scales)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.module.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.running_mean.zero_()
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


def vgg_bn():
    torch.manual_seed(0)
    module = torchvision.models.VGG(make_layers([8, "M", 16, "M", 16, "M", 16, "M", 16, "M"], batch_norm=True), num_classes=10)
    module.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 10))
    with torch.no_grad():  # running statistics as after training, so merging them matters
        for norm in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
    return vgg_adapter(module.double(), name="vgg-bn", cell_size=32, mean=(0, 0, 0), std=(1, 1, 1), num_classes=10)


def digits_resnet():
    model = create_model("digits-resnet18", weights="random")
    model.module.double()
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops
TIGHT = "lrp:epsilon=1e-14,stabilizer=1e-14"
MODELS = {"tiny-vgg": tiny_vgg, "vgg-bn": vgg_bn, "digits-resnet18": digits_resnet}


@pytest.mark.parametrize("name", ["tiny-vgg", "vgg-bn"])
@pytest.mark.parametrize("setting_name", PAPER_SETTINGS)  # conservation: not through a resize
def test_relevance_sums_to_the_target_logit_without_biases(name, setting_name):
    """Conservation: every rule of the composite passes on all the relevance it gets when no
    layer has a bias (ε and the stabilisers set tiny), at the input and at hidden layers.
    (Not on ResNets: the z+ rule drops the relevance of a residual branch whose convolution has
    no positive contribution, which ReLU-free branch ends can have; docs/methods.md.)"""
    model = bias_free(MODELS[name]())
    setting = create_setting(setting_name, model, 2)
    x = grid_images(1)
    labels = torch.from_numpy(grid_labels(1, variant="distinct" if setting_name == "gridpg" else "corners"))
    cells = [0, 1, 2, 3]
    maps = engine_maps(setting, x, labels, cells, ["input", "middle"], [TIGHT])
    with torch.no_grad():
        logits = setting.forward(x)
    targets = setting.targets(labels, cells)
    expected = logits[torch.arange(1)[:, None], targets.heads[None], targets.classes]
    for layer in ("input", "middle"):
        total = maps[(layer, TIGHT)].sum(dim=(-2, -1))
        torch.testing.assert_close(total, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_difull_maps_are_zennits_relevance_of_each_cell_alone(name):
    """Reference: zennit's Gradient attributor with the same composite on the plain model and
    one cell, output relevance the target logit; at the hidden layer, the relevance zennit's
    backward leaves at that block's output."""
    model = MODELS[name]()
    setting = create_setting("difull", model, 2)
    x, labels = grid_images(2), torch.from_numpy(grid_labels(2, variant="corners"))
    maps = engine_maps(setting, x, labels, [0, 3], ["input", "middle"], ["lrp"])
    block = model.blocks[model.layer_index("middle")][1]
    for slot, (top, left) in enumerate([(0, 0), (32, 32)]):
        cell = x[:, :, top : top + 32, left : left + 32]
        one_hot = nn.functional.one_hot(labels[:, 3 * slot], 10).double()
        kept = {}

        def keep(module, inputs, out, kept=kept):
            out.retain_grad()
            kept["out"] = out

        handle = block.register_forward_hook(keep)
        try:
            with Gradient(model=model.module, composite=composite()) as attributor:
                _, relevance = attributor(cell, lambda out, one_hot=one_hot: one_hot * out)
        finally:
            handle.remove()
        ours = maps[("input", "lrp")][:, slot]
        torch.testing.assert_close(ours[:, top : top + 32, left : left + 32], relevance.sum(1), rtol=1e-9, atol=1e-15)
        assert torch.count_nonzero(ours) == torch.count_nonzero(ours[:, top : top + 32, left : left + 32])
        hidden = maps[("middle", "lrp")][:, slot]
        h = hidden.shape[-1] // 2
        part = hidden[:, (top > 0) * h : (top > 0) * h + h, (left > 0) * h : (left > 0) * h + h]
        torch.testing.assert_close(part, kept["out"].grad.sum(1), rtol=1e-9, atol=1e-15)


class ConvifiedLinear(nn.Conv2d):
    """A fully connected layer turned into a convolution (keeps the ε rule of a linear layer)."""


def test_gridpg_vgg_is_zennits_lrp_of_the_convolutional_classifier():
    """GridPG's VGG head is the classifier as convolutions followed by average pooling (SPEC §1);
    zennit on that network (ε rule kept for the former linear layers, average pooling's
    proportional rule) gives the same relevance as attrcli's sliding head and window mean."""
    torch.manual_seed(0)
    module = torchvision.models.VGG(make_layers([4, "M", 4, "M", 4, "M", 4, "M", 8, "M"]), num_classes=5)
    module.classifier = nn.Sequential(nn.Linear(8 * 7 * 7, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 5))
    module = module.double()
    model = vgg_adapter(module, name="vgg-224", cell_size=224, mean=(0, 0, 0), std=(1, 1, 1), num_classes=5)
    first, last = module.classifier[0], module.classifier[3]
    head = nn.Sequential(ConvifiedLinear(8, 6, 7), nn.ReLU(), ConvifiedLinear(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    convified = nn.Sequential(module.features, head).double().eval()
    with torch.no_grad():
        head[0].weight.copy_(first.weight.view(6, 8, 7, 7))
        head[0].bias.copy_(first.bias)
        head[2].weight.copy_(last.weight[:, :, None, None])
        head[2].bias.copy_(last.bias)
    x, labels = grid_images(1, cell=224), torch.tensor([[1, 0, 3, 4]])
    maps = engine_maps(create_setting("gridpg", model, 2), x, labels, [0, 2], ["input"], [TIGHT])
    # tiny stabilisers: VGG's AdaptiveAvgPool2d((7, 7)), the identity on a window, is not in the reference
    reference = EpsilonPlusFlat(epsilon=1e-14, stabilizer=1e-14, layer_map=[(ConvifiedLinear, Epsilon(epsilon=1e-14))])
    for slot, cls in enumerate((1, 3)):
        with Gradient(model=convified, composite=reference) as attributor:
            _, relevance = attributor(x, lambda out, cls=cls: nn.functional.one_hot(torch.tensor([cls]), 5).double() * out)
        torch.testing.assert_close(maps[("input", TIGHT)][:, slot], relevance.sum(1), rtol=1e-8, atol=1e-14)


def test_batch_norm_merge_is_exact_and_undone():
    model = vgg_bn()
    x = grid_images(2, n=1)
    with torch.no_grad():
        plain = model.module(x)
        with composite().context(model.module):
            merged = model.module(x)
    torch.testing.assert_close(merged, plain, rtol=1e-12, atol=1e-14)
    norms = [m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {m.eps for m in norms} == {1e-5} and all(torch.all(m.running_var > 0.5) for m in norms)
    assert ExactMergeBatchNorm().copy().__class__ is ExactMergeBatchNorm


@pytest.mark.parametrize(("name", "module"), [("tiny-vit", "LayerNorm (encoder.layers.encoder_layer_0.ln_1)"),
                                              ("tiny-convnext", "LayerNorm2d (features.0.1)")])
def test_lrp_is_refused_where_it_has_no_rules(name, module):
    setting = create_setting("difull", tiny(name), 2)
    pattern = f"^method lrp cannot run at layer input of {name} in difull: lrp has rules for ReLU CNNs .* the model has {re.escape(module)}; valid there: "
    with pytest.raises(UserError, match=pattern):
        check_method(setting, METHODS.get("lrp"), "input")
    check_method(create_setting("difull", tiny_vgg(), 2), METHODS.get("lrp"), "middle")
    with pytest.raises(UserError, match="lrp needs epsilon > 0 and stabilizer > 0"):
        METHODS.get("lrp").Config(epsilon=0)
