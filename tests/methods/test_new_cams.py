"""HiResCAM, XGrad-CAM and EigenCAM: their formulas on random tensors and, through the engine,
on the toy CNN and a tiny ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrcli.methods import METHODS, parse_method
from attrcli.methods.eigencam import first_component
from attrcli.methods.xgradcam import xgradcam_weights
from attrcli.settings import create_setting
from tests.engine.helpers import engine_maps
from tests.methods.registry_helpers import case, run_maps
from tests.models.tiny_families import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(seed: int = 0, B: int = 2, T: int = 3, C: int = 4, h: int = 5, signed: bool = False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, 1, C, h, h, generator=g, dtype=torch.float64)
    grads = torch.randn(B, T, C, h, h, generator=g, dtype=torch.float64)
    return (a if signed else a.relu()), grads


def test_hirescam_is_gradient_times_activation_summed_over_channels():
    a, g = _tensors(signed=True)
    signed = (g * a).sum(2)
    assert (signed < 0).any() and (signed > 0).any()
    assert torch.equal(METHODS.get("hirescam")().from_gradients(a, g), signed.clamp(min=0))
    assert torch.equal(parse_method("hirescam:relu=false").build(cell_size=8, layer="input").from_gradients(a, g), signed)


def test_hirescam_through_the_engine_equals_ixg_clamped(conv_model):
    """The engine's HiResCAM maps are exactly its Input×Gradient maps (the same product, summed
    over channels) with the CAM ReLU, at every layer and in every setting."""
    for setting_name in ("gridpg", "difull", "dipart"):
        setting, x, labels = case(conv_model(), setting_name)
        cells = setting.default_cells()
        maps = engine_maps(setting, x, labels, cells, ["input", "middle", "final"], ["hirescam", "ixg"])
        for layer in ("input", "middle", "final"):
            assert torch.equal(maps[(layer, "hirescam")], maps[(layer, "ixg")].clamp(min=0)), (setting_name, layer)


def test_xgradcam_weights_are_activation_weighted_gradient_means():
    a, g = _tensors()
    a[0, 0, 1] = 0  # a channel without activations gets weight 0, not a division by zero
    weights = xgradcam_weights(a, g)[..., 0, 0]  # (B, T, C)
    B, T, C = weights.shape
    for b in range(B):
        for t in range(T):
            for c in range(C):
                act, grad = a[b, 0, c], g[b, t, c]
                expected = 0.0 if act.sum() == 0 else float((act * grad).sum() / act.sum())
                assert weights[b, t, c].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    maps = METHODS.get("xgradcam")().from_gradients(a, g)
    signed = torch.einsum("btc,bchw->bthw", weights, a[:, 0])
    assert (signed < 0).any()
    torch.testing.assert_close(maps, signed.clamp(min=0), rtol=1e-12, atol=1e-14)


def test_xgradcam_equals_gradcam_where_activations_are_constant_per_channel():
    """With every channel constant over positions, Σ(g·A)/ΣA is the mean gradient: Grad-CAM."""
    a, g = _tensors()
    a = a.mean(dim=(-2, -1), keepdim=True).expand_as(a).clone() + 0.5
    torch.testing.assert_close(
        METHODS.get("xgradcam")().from_gradients(a, g), METHODS.get("gradcam")().from_gradients(a, g),
        rtol=1e-12, atol=1e-14,
    )


def test_eigencam_projects_on_the_first_singular_vector_with_the_documented_sign():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    out = first_component(maps)
    for i in range(3):
        matrix = maps[i].reshape(4, -1).T.numpy()  # positions × channels
        _, _, vh = np.linalg.svd(matrix, full_matrices=False)
        projection = torch.from_numpy(matrix @ vh[0]).view(5, 6)
        if float((projection * maps[i].sum(0)).sum()) < 0:
            projection = -projection
        torch.testing.assert_close(out[i], projection, rtol=1e-10, atol=1e-12)
        assert float((out[i] * maps[i].sum(0)).sum()) >= 0
    torch.testing.assert_close(first_component(-maps), -out, rtol=1e-10, atol=1e-12)
    centred = first_component(maps, center=True)
    assert centred.flatten(1).sum(1).abs().max() < 1e-10  # projections of centred rows sum to 0


def test_eigencam_needs_no_class_and_sees_each_difull_cell_alone(conv_model):
    setting, x, labels = case(conv_model(), "gridpg")
    maps = run_maps(setting, x, labels, [0, 1, 2, 3], ["final"], "eigencam")["final"]
    assert torch.equal(maps[:, 0], maps[:, 3])  # one map for every target
    expected = first_component(setting.prefix(x, setting.model.layer_index("final"))).clamp(min=0)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-12, atol=1e-14)
    difull, x, labels = case(conv_model(), "difull")
    maps = run_maps(difull, x, labels, [0, 3], ["final"], "eigencam")["final"]
    cells = difull.split(x)
    index = difull.model.layer_index("final")
    alone = first_component(difull.model.run_blocks(cells.view(2, 4, *cells.shape[1:])[:, 3], -1, index)).clamp(min=0)
    h = alone.shape[-1]
    torch.testing.assert_close(maps[:, 1, h:, h:], alone, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(maps[:, 1, :h]) == 0 and torch.count_nonzero(maps[:, 1, :, :h]) == 0


def test_eigencam_runs_at_a_vit_token_layer():
    """It reads the layer and runs nothing after it, so unlike the perturbation methods it is
    defined at a ViT encoder block: the patch tokens as a map."""
    model = tiny("tiny-vit")
    setting = create_setting("gridpg", model, 2)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 3]])
    maps = run_maps(setting, x, labels, [0, 3], ["middle"], "eigencam")["middle"]
    tokens = setting.prefix(x, model.layer_index("middle"))
    torch.testing.assert_close(maps[:, 0], first_component(model.spatial(tokens)).clamp(min=0))
