"""GridPG, DiFull and DiPart against the plain model: the equalities that define them (SPEC §1)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers

from attrcli.errors import UserError
from attrcli.models.adapter import vgg_adapter
from attrcli.settings import SETTINGS, DiFull, create_setting
from attrcli.settings.base import final_feature_size
from tests.engine.helpers import grid_images, grid_labels, resnet18, tiny_vgg, vgg11

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops

MODELS = {
    "tiny-vgg": lambda: tiny_vgg(),
    "vgg11": lambda: vgg11(dtype=torch.float64),
    "resnet18": lambda: resnet18(dtype=torch.float64),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def cells_of(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The n² cells of grid images, row-major."""
    c = x.shape[-1] // n
    return [x[..., (k // n) * c : (k // n + 1) * c, (k % n) * c : (k % n + 1) * c] for k in range(n * n)]


def test_registry_names_and_unknown_setting():
    assert SETTINGS.names() == ["difull", "dipart", "gridpg", "gridpg-rescaled"]
    with pytest.raises(UserError, match="unknown setting 'grid'.*difull, dipart, gridpg, gridpg-rescaled"):
        create_setting("grid", tiny_vgg(), 2)


@pytest.mark.parametrize("name", SETTINGS.names())
def test_single_cell_wrapper_equals_the_models_own_forward(model, name):
    x = grid_images(3, n=1, cell=model.cell_size)
    with torch.no_grad():
        wrapped = create_setting(name, model, 1).forward(x)
        plain = model.module(x)
    assert wrapped.shape == (3, 1, 10)
    torch.testing.assert_close(wrapped[:, 0], plain, rtol=1e-12, atol=1e-12)


def test_difull_head_i_is_the_model_on_cell_i_alone(model):
    x = grid_images(2, n=3, cell=model.cell_size)
    with torch.no_grad():
        heads = create_setting("difull", model, 3).forward(x)
        for i, cell in enumerate(cells_of(x, 3)):
            torch.testing.assert_close(heads[:, i], model.module(cell), rtol=1e-12, atol=1e-12)


def test_dipart_head_i_classifies_part_i_of_the_grid_features(model):
    x = grid_images(2, cell=model.cell_size)
    with torch.no_grad():
        heads = create_setting("dipart", model, 2).forward(x)
        features = model.run_blocks(x)
        for i, part in enumerate(cells_of(features, 2)):
            torch.testing.assert_close(heads[:, i], model.head(part), rtol=1e-12, atol=1e-12)
        # the parts see their neighbours through the receptive field: not DiFull
        alone = create_setting("difull", model, 2).forward(x)
    assert not torch.allclose(heads, alone)


def test_gridpg_resnet_head_is_global_average_pooling_of_the_whole_grid():
    model = resnet18(dtype=torch.float64)
    x = grid_images(2, cell=32)
    with torch.no_grad():
        logits = create_setting("gridpg", model, 2).forward(x)
        pooled = model.run_blocks(x).mean(dim=(-2, -1))
        torch.testing.assert_close(logits[:, 0], model.module.fc(pooled), rtol=1e-12, atol=1e-12)


def test_gridpg_vgg_equals_the_convolutional_classifier_on_224_pixel_cells():
    """torchvision's VGG at 224-pixel cells (7×7 cell features, so its AdaptiveAvgPool2d((7, 7))
    is the identity): the sliding-window head averages the logits of a classifier turned into
    convolutions, first FC -> 7×7 conv, the others 1×1 (SPEC §1). Narrow widths keep it fast."""
    torch.manual_seed(0)
    module = torchvision.models.VGG(make_layers([4, "M", 4, "M", 4, "M", 4, "M", 8, "M"]), num_classes=5)
    module.classifier = nn.Sequential(
        nn.Linear(8 * 7 * 7, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 5)
    )
    module = module.double()
    model = vgg_adapter(module, name="vgg-224", cell_size=224, mean=(0, 0, 0), std=(1, 1, 1), num_classes=5)
    assert final_feature_size(model, 224) == (7, 7)
    x = grid_images(1, cell=224)
    first, second, last = module.classifier[0], module.classifier[3], module.classifier[6]
    convified = nn.Sequential(
        nn.Conv2d(8, 6, 7), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU(), nn.Conv2d(6, 5, 1)
    ).double()
    with torch.no_grad():
        convified[0].weight.copy_(first.weight.view(6, 8, 7, 7))
        convified[0].bias.copy_(first.bias)
        for conv, linear in ((convified[2], second), (convified[4], last)):
            conv.weight.copy_(linear.weight[:, :, None, None])
            conv.bias.copy_(linear.bias)
        features = model.run_blocks(x)
        expected = convified(features)  # (1, 5, 8, 8): one logit vector per window
        logits = create_setting("gridpg", model, 2).forward(x)
    assert features.shape[-1] == 14 and expected.shape[-1] == 8
    torch.testing.assert_close(logits[:, 0], expected.mean(dim=(-2, -1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SETTINGS.names())
def test_prefix_then_suffix_is_the_whole_setting_at_every_layer(name):
    model = tiny_vgg()
    setting = create_setting(name, model, 2)
    x = grid_images(2)
    with torch.no_grad():
        whole = setting.forward(x)
        for layer in model.layers:
            index = model.layer_index(layer)
            a = setting.prefix(x, index)
            torch.testing.assert_close(setting.suffix(a, index), whole, rtol=1e-12, atol=1e-12)


def test_difull_activations_are_per_cell_activations_stitched():
    model = tiny_vgg()
    setting = create_setting("difull", model, 2)
    x = grid_images(2)
    index = model.layer_index("middle")
    with torch.no_grad():
        stitched = setting.to_map(setting.prefix(x, index))
        for k, cell in enumerate(cells_of(x, 2)):
            part = cells_of(stitched, 2)[k]
            torch.testing.assert_close(part, model.run_blocks(cell, -1, index), rtol=0, atol=0)
    assert torch.equal(setting.from_map(stitched), setting.prefix(x, index))


def test_difull_split_is_row_major_cells_and_to_map_inverts_it():
    setting = DiFull(tiny_vgg(), 3)
    x = grid_images(2, n=3, cell=4)
    split = setting.split(x)
    assert split.shape == (18, 3, 4, 4)
    for k, cell in enumerate(cells_of(x, 3)):
        assert torch.equal(split.view(2, 9, 3, 4, 4)[:, k], cell)
    assert torch.equal(setting.to_map(split), x)


def test_targets_heads_and_default_cells():
    model = tiny_vgg()
    labels = torch.from_numpy(grid_labels(3, variant="corners"))
    gridpg, difull, dipart = (create_setting(s, model, 2) for s in ("gridpg", "difull", "dipart"))
    assert gridpg.resolve_cells(None) == [0, 1, 2, 3] and difull.resolve_cells("default") == [0, 3]
    assert dipart.resolve_cells("all") == [0, 1, 2, 3] and dipart.resolve_cells("2,1") == [2, 1]
    targets = gridpg.targets(labels, [0, 1, 2, 3])
    assert targets.heads.tolist() == [0, 0, 0, 0] and torch.equal(targets.classes, labels)
    targets = difull.targets(labels, [3, 0])
    assert targets.heads.tolist() == [3, 0] and torch.equal(targets.classes, labels[:, [3, 0]])
    for bad in ("4", "0,0", "", "-1"):
        with pytest.raises(UserError, match="invalid --heads"):
            difull.resolve_cells(bad)


def test_cell_mask_assigns_every_position_to_its_cell():
    setting = create_setting("gridpg", tiny_vgg(), 2)
    mask = setting.cell_mask(torch.tensor([0, 3]), (4, 4))
    expected0 = torch.zeros(4, 4, dtype=torch.bool)
    expected0[:2, :2] = True
    assert torch.equal(mask[0], expected0) and torch.equal(mask[1], expected0.flip(0, 1))
    everything = setting.cell_mask(torch.arange(4), (6, 6)).sum(0)
    assert torch.equal(everything, torch.ones(6, 6, dtype=torch.long))


def test_geometry_check_rejects_cells_whose_features_do_not_tile_the_grid():
    model = resnet18()
    model.cell_size = 48  # 48 px -> 2×2 features, but 96 px -> 3×3, not 4×4
    for name in ("gridpg", "dipart"):
        with pytest.raises(UserError, match="48-pixel cell to a 2x2 feature map but the 96-pixel grid to 3x3"):
            create_setting(name, model, 2).check_geometry()
    create_setting("difull", model, 2).check_geometry()  # cells run alone
    model.cell_size = 64
    for name in ("gridpg", "difull", "dipart"):
        create_setting(name, model, 2).check_geometry()


def test_geometry_is_traced_without_computing():
    model = vgg11()
    assert final_feature_size(model, 32) == (1, 1) and final_feature_size(model, 448) == (14, 14)
    assert final_feature_size(resnet18(), 224) == (7, 7)
