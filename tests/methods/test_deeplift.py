"""DeepLIFT (rescale rule, zero baseline): summation-to-delta on tiny VGG and ResNet models in
every setting and at hidden layers, equality with Captum's DeepLift where Captum's rules are the
same, and refusal on models without rules."""

from __future__ import annotations

import pytest
import torch
from captum.attr import DeepLift
from torch import nn

from attrcli.errors import UserError
from attrcli.methods import METHODS
from attrcli.methods.applicability import check_method
from attrcli.models.adapter import ModelAdapter, resnet_adapter
from attrcli.models.digits import DigitsResNet
from attrcli.settings import create_setting
from tests.engine.helpers import CLASSES, MEAN, STD, engine_maps, grid_images, tiny_vgg
from tests.models.tiny_families import tiny

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # Captum's notes on its hooks


def tiny_resnet(seed: int = 0) -> ModelAdapter:
    """ResNet18's topology at a few channels (torchvision's BasicBlock), with torchvision's
    overlapping 3×3 stride-2 max pooling in the stem, float64; random batch-norm statistics so
    that batch norm is not the identity."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = DigitsResNet(widths=(4, 8, 8, 8), num_classes=CLASSES)
        module.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    return resnet_adapter(module.double(), name="tiny-resnet", cell_size=32, mean=MEAN, std=STD, num_classes=CLASSES)


def _logit_delta(setting, x, labels, cells, layer):
    """Each target's logit at the grid minus at the zero baseline at ``layer``, ``(B, T)``."""
    targets = setting.targets(labels, cells)
    index = setting.model.layer_index(layer)
    with torch.no_grad():
        a = setting.prefix(x, index)
        if setting.disconnected:
            rows = setting.target_rows(targets, len(x))
            model = setting.model
            classes = targets.classes.reshape(-1)
            value = model.head(model.run_blocks(a[rows], index)).gather(1, classes[:, None])[:, 0]
            zero = model.head(model.run_blocks(torch.zeros_like(a[rows]), index)).gather(1, classes[:, None])[:, 0]
            return (value - zero).view(len(x), -1)
        logits, zero = setting.suffix(a, index), setting.suffix(torch.zeros_like(a), index)
        picked = torch.arange(len(x))[:, None], targets.heads[None], targets.classes
        return logits[picked] - zero[picked]


@pytest.mark.parametrize("family", ["vgg", "resnet"])
@pytest.mark.parametrize("setting_name", ["gridpg", "difull", "dipart"])
def test_maps_sum_to_the_logit_difference_from_the_baseline(family, setting_name):
    model = tiny_vgg() if family == "vgg" else tiny_resnet()
    setting = create_setting(setting_name, model, 2)
    x = grid_images(2)
    labels = torch.tensor([[1, 2, 3, 1], [4, 5, 6, 4]])
    cells = setting.default_cells()
    layers = ["input", "middle", "final"]
    maps = engine_maps(setting, x, labels, cells, layers, ["deeplift"], batch_size=1 if family == "resnet" else 2)
    for layer in layers:
        delta = _logit_delta(setting, x, labels, cells, layer)
        total = maps[(layer, "deeplift")].sum(dim=(-2, -1))
        assert delta.abs().max() > 1e-3, layer  # a test that can fail: the deltas are not all zero
        torch.testing.assert_close(total, delta, rtol=1e-4, atol=0), (family, layer)
        if layer != "final":  # nonlinear modules between the layer and the logits: not the gradient
            ixg = engine_maps(setting, x, labels, cells, [layer], ["ixg"])[(layer, "ixg")]
            assert not torch.allclose(ixg, maps[(layer, "deeplift")], rtol=1e-3, atol=1e-6), layer


def _no_pool_cnn() -> ModelAdapter:
    """Convolutions, ReLUs and a linear head, no max pooling: Captum's rules and attrcli's agree."""
    torch.manual_seed(3)
    feats = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1, stride=2), nn.ReLU())
    head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))
    module = nn.Sequential(feats, head).double().eval()
    return ModelAdapter(
        name="no-pool", module=module, blocks=[(f"0.{i}", m) for i, m in enumerate(feats)], head=head,
        gap_head=False, aliases={"middle": "0.1", "final": "0.3"}, stage_layers=["0.1", "0.3"], cell_size=8,
        num_classes=5, mean=(0, 0, 0), std=(1, 1, 1),
    )


@pytest.mark.parametrize("build", [_no_pool_cnn, tiny_vgg], ids=["cnn", "tiny-vgg"])
def test_equals_captums_deeplift_on_each_difull_cell(build):
    """DiFull's head t is the plain model on cell t: its map there is Captum's DeepLift map of the
    cell (zero baseline, summed over channels), and zero elsewhere. Captum's max-pooling rule
    and attrcli's agree on VGG's non-overlapping windows."""
    model = build()
    d = model.cell_size
    setting = create_setting("difull", model, 2)
    x = torch.randn(2, 3, 2 * d, 2 * d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0], [3, 4, 1, 3]])
    maps = engine_maps(setting, x, labels, [0, 3], ["input"], ["deeplift"])[("input", "deeplift")]
    cells = setting.split(x).view(2, 4, 3, d, d)
    explainer = DeepLift(model.module)
    for t, cell in enumerate([0, 3]):
        expected = explainer.attribute(cells[:, cell].clone(), baselines=0.0, target=labels[:, cell]).sum(1)
        r, c = divmod(cell, 2)
        inside = (slice(None), t, slice(d * r, d * r + d), slice(d * c, d * c + d))
        assert expected.abs().max() > 1e-4
        torch.testing.assert_close(maps[inside], expected.detach(), rtol=1e-9, atol=1e-15)
        outside = maps[:, t].clone()
        outside[:, d * r : d * r + d, d * c : d * c + d] = 0
        assert torch.count_nonzero(outside) == 0


def test_refused_on_models_without_rescale_rules():
    setting = create_setting("gridpg", tiny("tiny-convnext"), 2)
    with pytest.raises(UserError, match=r"^method deeplift cannot run at layer input .*deeplift has rescale rules") as refused:
        check_method(setting, METHODS.get("deeplift"), "input")
    assert "\n" not in str(refused.value)
