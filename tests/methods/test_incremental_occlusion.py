"""Incremental occlusion (attrcli.methods._incremental) equals the plain path, which runs every
occluded map through the whole network after the layer.

Small random VGG-, ResNet- and oddly-strided models in float64 cover every setting, both
occlusion schemes, the input and hidden layers, windows at the borders, blocks that are not
understood (the whole-map fallback) and chunk sizes; torchvision's vgg11 and resnet18 with random
weights run on small cells (slow). Receptive fields and cones are checked against their
definitions.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from attrcli.engine.context import AttributionContext
from attrcli.methods import occlusion
from attrcli.methods._cones import POINT, Axis, cone, receptive_field
from attrcli.methods._incremental import IncrementalSuffix
from attrcli.methods.occlusion import Occlusion, OcclusionConfig
from attrcli.models.adapter import ModelAdapter, resnet_adapter, vgg_adapter
from attrcli.settings import create_setting
from tests.models.tiny_families import BUILDERS, tiny

CLASSES, N = 5, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops


def _randomise_batch_norm(module: nn.Module, gen: torch.Generator) -> None:
    """Running statistics and affine parameters away from the identity, so eval-mode batch norm
    does something."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


class TinyVGG(nn.Module):
    """16-pixel cells to 4×4 maps: conv, batch norm, pooling, dropout and a dilated conv."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
            nn.Conv2d(6, 6, 3, padding=2, dilation=2), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(6 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, CLASSES))


class TinyResNet(nn.Module):
    """32-pixel cells: a strided stem, max-pool, and BasicBlock / Bottleneck stages with
    downsampling shortcuts, to 1×1 maps and a global-average-pooling head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

        self.layer1 = nn.Sequential(BasicBlock(4, 4))
        self.layer2 = nn.Sequential(BasicBlock(4, 8, 2, down(4, 8)), BasicBlock(8, 8))
        self.layer3 = nn.Sequential(Bottleneck(8, 2, 2, down(8, 8)))
        self.layer4 = nn.Sequential(BasicBlock(8, 8, 2, down(8, 8)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)


class GlobalShift(nn.Module):
    """Adds each channel's mean over the map: not local, so not understood (whole-map fallback)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean((2, 3), keepdim=True)


def _build(factory, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    _randomise_batch_norm(module, gen)
    return module.double()


def tiny_vgg() -> ModelAdapter:
    module = _build(TinyVGG, 0)
    return vgg_adapter(module, name="tiny-vgg", cell_size=16, mean=(0,) * 3, std=(1,) * 3, num_classes=CLASSES)


def tiny_resnet() -> ModelAdapter:
    module = _build(TinyResNet, 1)
    return resnet_adapter(module, name="tiny-resnet", cell_size=32, mean=(0,) * 3, std=(1,) * 3, num_classes=CLASSES)


def odd_model(shift: bool = False) -> ModelAdapter:
    """Asymmetric kernels and strides, padding 0 and 2, ceil-mode pooling, average pooling without
    the padding, a 1×1 conv, a nested Sequential; optionally a block that is not understood."""
    def blocks() -> list[nn.Module]:  # built under the seed (not from the global generator)
        return [
            nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2)), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(4, 5, 1),
            *([GlobalShift()] if shift else []),
            nn.Sequential(nn.Conv2d(5, 5, 3, stride=2), nn.ReLU()), nn.AvgPool2d(2, ceil_mode=True),
        ]

    module = _build(lambda: nn.Sequential(*blocks(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, CLASSES)), 2)
    features = len(module) - 3  # the head: pooling, flatten, linear

    def head(f: torch.Tensor) -> torch.Tensor:
        return module[features + 2](module[features + 1](module[features](f)))

    return ModelAdapter(
        name="odd", module=module.eval(), blocks=[(str(i), module[i]) for i in range(features)], head=head,
        gap_head=True, aliases={"middle": "3", "final": str(features - 1)}, stage_layers=["3"], cell_size=24,
        num_classes=CLASSES, mean=(0,) * 3, std=(1,) * 3,
    )


def context(model: ModelAdapter, setting_name: str, layer: str, *, grids: int = 2, batch_size: int = 3,
            seed: int = 0, cells: str = "all") -> AttributionContext:
    setting = create_setting(setting_name, model, N)
    gen = torch.Generator().manual_seed(seed)
    size = N * model.cell_size
    x = torch.randn(grids, 3, size, size, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (grids, N * N), generator=gen)
    return AttributionContext(
        setting=setting, x=x, targets=setting.targets(labels, setting.resolve_cells(cells)), layer=layer,
        layer_index=model.layer_index(layer), batch_size=batch_size,
    )


def both_paths(ctx: AttributionContext, config: OcclusionConfig, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of the incremental path (checked to be taken) and of the plain path."""
    assert IncrementalSuffix.of(ctx) is not None
    got = Occlusion(config).attribute(ctx)
    monkeypatch.setattr(occlusion, "INCREMENTAL", False)
    plain = Occlusion(config).attribute(ctx)
    monkeypatch.setattr(occlusion, "INCREMENTAL", True)
    return got, plain


def assert_equal_maps(got: torch.Tensor, plain: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the map's scale, and not trivially zero."""
    assert plain.abs().max() > 0
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5 * float(plain.abs().max()))


# --- maps equal the plain path -------------------------------------------------------------------

CONFIGS = {  # (input, hidden) windows per scheme; odd and even K, overhanging and flush borders
    "paper": (OcclusionConfig(k=5, s=3), OcclusionConfig(k=2, s=1)),
    "inside": (OcclusionConfig(k=4, s=3, scheme="inside"), OcclusionConfig(k=3, s=2, scheme="inside")),
}
CASES = [
    (tiny_vgg, "input"), (tiny_vgg, "features.3"), (tiny_vgg, "features.8"),
    (tiny_resnet, "input"), (tiny_resnet, "relu"), (tiny_resnet, "layer2.0"),
]


@pytest.mark.parametrize("setting", ["gridpg", "dipart", "difull"])
@pytest.mark.parametrize("scheme", list(CONFIGS))
@pytest.mark.parametrize("factory,layer", CASES, ids=[f"{f.__name__}-{layer}" for f, layer in CASES])
def test_incremental_equals_plain_path(factory, layer, scheme, setting, monkeypatch):
    ctx = context(factory(), setting, layer)
    config = CONFIGS[scheme][layer != "input"]
    assert_equal_maps(*both_paths(ctx, config, monkeypatch))


@pytest.mark.parametrize("setting", ["gridpg", "difull"])
@pytest.mark.parametrize("scheme", list(CONFIGS))
@pytest.mark.parametrize("layer", ["input", "1"])
@pytest.mark.parametrize("shift", [False, True], ids=["understood", "fallback"])
def test_odd_strides_paddings_and_fallback(layer, scheme, setting, shift, monkeypatch):
    ctx = context(odd_model(shift), setting, layer, grids=1)
    config = CONFIGS[scheme][layer != "input"]
    assert_equal_maps(*both_paths(ctx, config, monkeypatch))


@pytest.mark.parametrize("setting", ["gridpg", "dipart", "difull"])
def test_maps_do_not_depend_on_the_batch_size(setting):
    """Chunks of one window (a single row to expand) up to all windows at once: uniform crop
    sizes differ per chunk, the maps do not."""
    config = OcclusionConfig(k=4, s=3)
    maps = [Occlusion(config).attribute(context(tiny_vgg(), setting, "input", batch_size=b)) for b in (1, 7, 400)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("setting", ["gridpg", "difull"])
def test_plain_path_with_masks_made_per_batch(setting, monkeypatch):
    """The plain path's other branch (window masks too large to make once) agrees too."""
    ctx = context(tiny_vgg(), setting, "features.3")
    got, plain = both_paths(ctx, CONFIGS["inside"][1], monkeypatch)
    monkeypatch.setattr(occlusion, "INCREMENTAL", False)
    monkeypatch.setattr(occlusion, "TABLE_BYTES", 0)
    per_batch = Occlusion(CONFIGS["inside"][1]).attribute(ctx)
    torch.testing.assert_close(per_batch, plain, rtol=0, atol=0)
    assert_equal_maps(got, per_batch)


def test_windows_covering_most_of_the_map_run_whole(monkeypatch):
    config = OcclusionConfig(k=7, s=3)
    assert_equal_maps(*both_paths(context(tiny_vgg(), "gridpg", "features.8"), config, monkeypatch))


def test_crops_are_smaller_than_the_map():
    """The first conv after the input sees crops around each window, not the 32-pixel grid."""
    model = tiny_vgg()
    ctx = context(model, "gridpg", "input", grids=1)
    seen: list[tuple[int, int]] = []
    hook = model.blocks[0][1].register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    try:
        Occlusion(OcclusionConfig(k=4, s=2)).attribute(ctx)
    finally:
        hook.remove()
    whole = [s for s in seen if s == (32, 32)]
    assert len(whole) == 1  # the unperturbed pass, once per row
    assert max(h * w for h, w in seen if (h, w) != (32, 32)) <= 8 * 8


def test_gridpg_rescaled_at_a_hidden_layer(monkeypatch):
    """The grid resized to one cell first; after it the blocks are the model's own."""
    ctx = context(tiny_vgg(), "gridpg-rescaled", "features.3")
    assert_equal_maps(*both_paths(ctx, CONFIGS["paper"][1], monkeypatch))


def test_nothing_to_save_uses_the_plain_path():
    model = odd_model(shift=True)
    assert IncrementalSuffix.of(context(model, "gridpg", "5")) is None  # next: not understood, whole head
    assert IncrementalSuffix.of(context(model, "gridpg", "6")) is not None
    rescaled = context(tiny_vgg(), "gridpg-rescaled", "input", grids=1)  # a resize first
    assert IncrementalSuffix.of(rescaled) is None
    # DiPart re-runs only the parts a patch overlaps, but not after a block that is not understood
    assert IncrementalSuffix.of(context(model, "dipart", "5")) is None
    assert IncrementalSuffix.of(context(tiny_vgg(), "dipart", "features.9")) is not None  # the head only


def test_gridpg_vgg_head_runs_its_first_layer_on_the_patch_only(monkeypatch):
    """VGG's head is recognised as linear-first (only the patch's positions are multiplied), and
    only if it gives exactly the head's logits: a head that differs runs window by window."""
    model = tiny_vgg()
    ctx = context(model, "gridpg", "features.3")
    suffix = IncrementalSuffix.of(ctx)
    suffix.row(ctx.evaluated[:1])
    assert suffix.sliding.linear is not None
    classifier = model.module.classifier
    other = dataclasses.replace(model, head=lambda f: classifier(f.flatten(1)) * 2)
    ctx = context(other, "gridpg", "features.3")
    suffix = IncrementalSuffix.of(ctx)
    suffix.row(ctx.evaluated[:1])
    assert suffix.sliding.linear is None
    assert_equal_maps(*both_paths(ctx, CONFIGS["paper"][1], monkeypatch))


@pytest.mark.parametrize("setting", ["gridpg", "dipart", "difull"])
@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_torchvision_models_with_random_weights(arch, setting, monkeypatch):
    """vgg11 and resnet18 on 32-pixel cells (vgg11 with a small classifier: 1×1 maps per cell),
    at the input (paper scheme, overhanging windows) and the middle layer (inside scheme)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = getattr(torchvision.models, arch)(weights=None, num_classes=CLASSES)
    if arch == "vgg11":
        module.avgpool = nn.Identity()
        module.classifier = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, CLASSES))
        adapter = vgg_adapter
    else:
        _randomise_batch_norm(module, torch.Generator().manual_seed(0))
        adapter = resnet_adapter
    model = adapter(module.double(), name=arch, cell_size=32, mean=(0,) * 3, std=(1,) * 3, num_classes=CLASSES)
    windows = (("input", OcclusionConfig(k=9, s=32)), ("middle", OcclusionConfig(k=3, s=3, scheme="inside")))
    for layer, config in windows:
        ctx = context(model, setting, layer, grids=1, batch_size=4)
        assert_equal_maps(*both_paths(ctx, config, monkeypatch))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_other_families_fall_back_exactly(name, monkeypatch):
    """ConvNeXt, Swin and ViT blocks are not understood: wherever occlusion runs on them (the
    input, and their map layers), the maps still equal the plain path's."""
    model = tiny(name)
    layers = ["input"] + [layer for layer in model.stage_layers if not model.is_token_layer(layer)]
    for setting in ["gridpg", "difull", "gridpg-rescaled"] + (["dipart"] if model.part_heads else []):
        for layer in layers:
            ctx = context(model, setting, layer, grids=1)
            config = OcclusionConfig(k=2, s=2)
            got = Occlusion(config).attribute(ctx)
            monkeypatch.setattr(occlusion, "INCREMENTAL", False)
            plain = Occlusion(config).attribute(ctx)
            monkeypatch.setattr(occlusion, "INCREMENTAL", True)
            assert_equal_maps(got, plain)


# --- receptive fields and cones ---------------------------------------------------------------------


def test_receptive_fields_by_hand():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert receptive_field(conv) == (Axis(3, 1, 1),) * 2
    assert receptive_field(nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))) == (Axis(4, 2, 1),) * 2
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert receptive_field(resnet.conv1) == (Axis(7, 2, 3),) * 2
    assert receptive_field(resnet.maxpool) == (Axis(3, 2, 1),) * 2
    # 3×3 stride 2 then 3×3: k = 2·2 + 3, p = 1·2 + 1; the 1×1 stride-2 shortcut lies inside
    assert receptive_field(resnet.layer2[0]) == (Axis(7, 2, 3),) * 2
    assert receptive_field(resnet.layer1[0]) == (Axis(5, 1, 2),) * 2
    wide = torchvision.models.resnet50(weights=None).eval()
    assert receptive_field(wide.layer2[0]) == (Axis(3, 2, 1),) * 2  # 1×1, 3×3 stride 2, 1×1
    assert receptive_field(nn.Conv2d(1, 1, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 3))) == (
        Axis(3, 2, 1), Axis(13, 1, 2))
    assert receptive_field(nn.BatchNorm2d(3).eval()) == POINT


@pytest.mark.parametrize("module", [
    nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Linear(3, 3), GlobalShift(),
    nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"), nn.MaxPool2d(2, return_indices=True),
    nn.Sequential(nn.Conv2d(3, 3, 3), GlobalShift()),
], ids=lambda m: type(m).__name__)
def test_modules_not_understood(module):
    module.train()  # batch norm and dropout in training mode are not local
    assert receptive_field(module) is None


@pytest.mark.parametrize("module", [
    nn.Conv2d(2, 2, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    BasicBlock(2, 4, 2, nn.Sequential(nn.Conv2d(2, 4, 1, stride=2), nn.BatchNorm2d(4))),
    Bottleneck(4, 1, 2, nn.Sequential(nn.Conv2d(4, 4, 1, stride=2), nn.BatchNorm2d(4))),
], ids=lambda m: type(m).__name__)
def test_an_output_depends_only_on_its_field(module):
    """The gradient of output (i, j) is zero outside the field [i·s − p, i·s − p + k) × …."""
    module = module.double().eval()
    fy, fx = receptive_field(module)
    x = torch.randn(1, 2 if not isinstance(module, Bottleneck) else 4, 13, 11, dtype=torch.float64, requires_grad=True)
    out = module(x)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            (g,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
            outside = torch.ones(13, 11, dtype=torch.bool)
            outside[max(i * fy.s - fy.p, 0) : max(i * fy.s - fy.p + fy.k, 0),
                    max(j * fx.s - fx.p, 0) : max(j * fx.s - fx.p + fx.k, 0)] = False
            assert g[0][:, outside].abs().max() == 0


def test_cones_against_their_definition():
    """For random geometries and patches: the changed outputs lie in the output range; the crop
    holds the inputs those outputs read and the patch, starts on the stride's grid, lies in the
    map and ends at the border whenever it is one size for all (shifted) windows."""
    rng = random.Random(0)
    for _ in range(3000):
        axis = Axis(rng.randint(1, 7), rng.randint(1, 3), 0)
        axis = Axis(axis.k, axis.s, rng.randint(0, axis.k - 1))
        size = rng.randint(axis.k, 30)
        out_size = (size + 2 * axis.p - axis.k) // axis.s + 1
        n = rng.randint(1, size)
        start = torch.tensor([rng.randint(0, size - n) for _ in range(rng.randint(1, 5))])
        lo, m, first, length = cone(start, n, size, out_size, axis)
        assert 1 <= m <= out_size and 1 <= length <= size and (size - length) % axis.s == 0
        for a, l, f in zip(start.tolist(), lo.tolist(), first.tolist()):
            assert 0 <= l <= out_size - m and f % axis.s == 0 and 0 <= f <= size - length
            changed = [o for o in range(out_size) if o * axis.s - axis.p < a + n and o * axis.s - axis.p + axis.k > a]
            assert all(l <= o < l + m for o in changed)
            reads = [o * axis.s - axis.p + d for o in range(l, l + m) for d in range(axis.k)]
            inside = [r for r in reads if 0 <= r < size] + [a, a + n - 1]
            assert f <= min(inside) and max(inside) < f + length
            if any(r < 0 for r in reads):
                assert f == 0  # starts at the border, padded as the map is
            if any(r >= size for r in reads):
                assert f + length == size
