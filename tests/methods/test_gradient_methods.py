"""The gradient methods: their formulas, the integrated-gradients axioms, and the paper's
structural claims on randomly initialised torchvision VGG11 / ResNet18 (and, slow, on the
trained digits models).

Structural claims (Rao, Böhle & Schiele, CVPR 2022; supplement A, B.2):
- DiFull: grad, guided-backprop, ixg, intgrad and layercam (and every registered method that
  declares ``MethodTesting.difull_exact``) are exactly zero outside the target cell at every
  layer (layer resolution), so their localization is exactly 1.0 at the input;
- GridPG with ResNet18 at the final layer: grad and guided-backprop are spatially uniform (global
  average pooling follows), so their localization is exactly 1/n².
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrcli.methods import METHODS
from attrcli.metrics.localization import localization_scores
from attrcli.settings import create_setting
from tests.engine.helpers import (
    engine_maps,
    grid_images,
    grid_labels,
    resnet18,
    tiny_vgg,
    vgg11,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops
GRADIENT_METHODS = ("grad", "guided-backprop", "ixg", "gradcam", "gradcam++", "layercam")
#: Every registered method that declares the DiFull structural claim, as its tiny spec (methods
#: defined on one family only, ``MethodTesting.model``, are checked on it by the generic tests)
EXACT = [METHODS.get(m).testing.spec(m) for m in METHODS.names()
         if METHODS.get(m).testing.difull_exact and not METHODS.get(m).testing.model]


def test_the_papers_exact_methods_declare_the_claim():
    declared = {spec.partition(":")[0] for spec in EXACT}
    assert {"grad", "guided-backprop", "ixg", "intgrad", "layercam"} <= declared
    assert not {"gradcam", "gradcam++", "occlusion", "rise", "scorecam", "ablationcam"} & declared


def _tensors(seed: int = 0, B: int = 2, T: int = 3, C: int = 4, h: int = 5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, 1, C, h, h, generator=g, dtype=torch.float64).relu()
    grads = torch.randn(B, T, C, h, h, generator=g, dtype=torch.float64)
    return a, grads


def test_every_gradient_method_is_registered_with_its_pass():
    for name in GRADIENT_METHODS:
        cls = METHODS.get(name)
        assert cls.kind == "gradient" and cls.guided == (name == "guided-backprop")
    assert METHODS.get("intgrad").kind == "model"


def test_pointwise_methods_follow_their_definitions():
    a, g = _tensors()
    maps = {name: METHODS.get(name)().from_gradients(a, g) for name in GRADIENT_METHODS}
    assert torch.equal(maps["grad"], g.abs().sum(2))
    assert torch.equal(maps["guided-backprop"], g.abs().sum(2))  # the guidance is in the gradients
    assert torch.equal(maps["ixg"], (a * g).sum(2))
    assert torch.equal(maps["layercam"], (a * g.clamp(min=0)).sum(2))  # a >= 0: the ReLU is a no-op
    weights = g.mean(dim=(-2, -1))  # Grad-CAM: one weight per channel and target
    signed = torch.einsum("btc,bchw->bthw", weights, a[:, 0])
    assert (signed < 0).any()  # so the ReLU below is tested
    torch.testing.assert_close(maps["gradcam"], signed.clamp(min=0))
    for value in maps.values():
        assert value.shape == (2, 3, 5, 5)


def _gradcampp_reference(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ straight from Eq. 19 of Chattopadhay et al., one channel at a time."""
    B, T, C, h, w = g.shape
    out = torch.zeros(B, T, h, w, dtype=g.dtype)
    for b in range(B):
        for t in range(T):
            for c in range(C):
                grad, act = g[b, t, c], a[b, 0, c]
                denominator = 2 * grad**2 + act.sum() * grad**3
                alpha = torch.where(denominator != 0, grad**2 / denominator, torch.zeros_like(grad))
                out[b, t] += (alpha * grad.clamp(min=0)).sum() * act
    return out


def test_gradcampp_matches_the_papers_formula():
    a, g = _tensors(1)
    ours = METHODS.get("gradcam++")().from_gradients(a, g)
    torch.testing.assert_close(ours, _gradcampp_reference(a, g).clamp(min=0), rtol=1e-12, atol=1e-12)
    # signed input-layer activations may make a denominator vanish: that term is dropped
    a = torch.ones(1, 1, 1, 1, 2, dtype=torch.float64) * torch.tensor([-1.0, 0.0], dtype=torch.float64)
    g = torch.tensor([[[[[2.0, 1.0]]]]], dtype=torch.float64)  # 2 + Σa·g = 0 where g = 2
    expected = _gradcampp_reference(a, g)
    assert torch.isfinite(expected).all()
    method = METHODS.get("gradcam++")()
    torch.testing.assert_close(method.from_gradients(a, g), expected.clamp(min=0))
    assert method.diagnostics() == {"ill_conditioned": 1}


@pytest.mark.parametrize("name", ["gradcam", "gradcam++"])
def test_cam_relu_comes_before_upsampling(name):
    """The papers' ReLU acts at the layer's resolution. On a signed 2×2 map, clamping first
    spreads the positive cell into its neighbours when upsampled, while upsampling the signed
    map first cancels that spread against the negative cells; the stored map is clamped before, so maps and scores differ here."""
    a = torch.tensor([[3.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)[None, None, None]  # (1,1,1,2,2)
    g = torch.full((1, 1, 1, 2, 2), 0.5, dtype=torch.float64)
    maps = METHODS.get(name)().from_gradients(a, g)
    signed = METHODS.get(name)(METHODS.get(name).Config(relu=False)).from_gradients(a, g)
    assert (signed < 0).any() and torch.equal(maps, signed.clamp(min=0))
    up = lambda m: torch.nn.functional.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False)
    relu_first, relu_after = up(maps).clamp(min=0), up(signed).clamp(min=0)
    assert not torch.allclose(relu_first, relu_after)
    scores = {which: _scores(m, [0], 8) for which, m in (("first", maps), ("after", signed))}
    assert abs(scores["first"][0, 0] - scores["after"][0, 0]) > 0.1  # 0.77 against 0.93 here


def test_gradcampp_does_not_depend_on_float32_rounding():
    """A constructed input-layer case: signed activations whose denominators 2 + ΣA·g cross zero
    within float32 rounding of the gradients. float32 and float64 runs agree within 1e-4."""
    gen = torch.Generator().manual_seed(0)
    C, h = 3, 6
    a = torch.randn(1, 1, C, h, h, generator=gen, dtype=torch.float64)
    total = a.sum(dim=(-2, -1), keepdim=True)  # (1, 1, C, 1, 1)
    g = torch.rand(1, 2, C, h, h, generator=gen, dtype=torch.float64) * 2 / total.abs()
    g[:, :, :, 0, 0] = (-2 / total[..., 0, 0]) * (1 + 1e-7)  # a pole, within float32 rounding
    g[:, :, :, 1, 1] = (-2 / total[..., 0, 0]) * (1 - 3e-8)
    method64 = METHODS.get("gradcam++")()
    method32 = METHODS.get("gradcam++")()
    in64 = method64.from_gradients(a, g)
    in32 = method32.from_gradients(a.float(), g.float())
    torch.testing.assert_close(in32.double(), in64, rtol=1e-4, atol=1e-4 * float(in64.abs().max()))
    assert method64.diagnostics()["ill_conditioned"] > 0
    assert method32.diagnostics() == method64.diagnostics()


def test_cam_methods_at_the_input_weigh_the_image_channels():
    model = tiny_vgg()
    setting = create_setting("gridpg", model, 2)
    x, labels = grid_images(1), torch.from_numpy(grid_labels(1))
    maps = engine_maps(setting, x, labels, [0, 2], ["input"], ["gradcam", "ixg"])
    h = x.clone().requires_grad_(True)
    logits = setting.forward(h)
    for slot, cell in enumerate([0, 2]):
        (grad,) = torch.autograd.grad(logits[0, 0, labels[0, cell]], h, retain_graph=True)
        weights = grad[0].mean(dim=(-2, -1))  # three channel weights
        torch.testing.assert_close(maps[("input", "gradcam")][0, slot], (weights[:, None, None] * x[0]).sum(0).clamp(min=0))
        torch.testing.assert_close(maps[("input", "ixg")][0, slot], (grad[0] * x[0]).sum(0))


@pytest.mark.parametrize("layer", ["input", "middle"])
def test_intgrad_completeness(layer):
    """Σ IG = f(a) − f(0) (Sundararajan et al.'s completeness axiom), to quadrature accuracy."""
    model = tiny_vgg()
    setting = create_setting("dipart", model, 2)
    x, labels = grid_images(1), torch.from_numpy(grid_labels(1, variant="corners"))
    maps = engine_maps(setting, x, labels, [0, 3], [layer], ["intgrad:steps=128"], batch_size=64)
    ig = maps[(layer, "intgrad:steps=128")].sum(dim=(-2, -1))
    index = model.layer_index(layer)
    with torch.no_grad():
        a = setting.prefix(x, index)
        full, zero = setting.suffix(a, index), setting.suffix(torch.zeros_like(a), index)
    for slot, cell in enumerate([0, 3]):
        rows = torch.arange(1)
        expected = full[rows, cell, labels[:, cell]] - zero[rows, cell, labels[:, cell]]
        # the integrand of a ReLU network jumps along the path, so quadrature converges slowly
        torch.testing.assert_close(ig[:, slot], expected, rtol=2e-2, atol=1e-2 * float(expected.abs().max()))


def test_intgrad_equals_ixg_where_the_rest_is_linear():
    """After ResNet's final layer only global average pooling and the FC layer remain (linear),
    so the path integral is exact whatever the number of steps."""
    model = resnet18(dtype=torch.float64)
    setting = create_setting("gridpg", model, 2)
    x, labels = grid_images(1), torch.from_numpy(grid_labels(1))
    maps = engine_maps(setting, x, labels, [0, 1, 2, 3], ["final"], ["intgrad:steps=3", "ixg"])
    torch.testing.assert_close(maps[("final", "intgrad:steps=3")], maps[("final", "ixg")], rtol=1e-12, atol=1e-14)


def _scores(maps: torch.Tensor, cells: list[int], image_size: int) -> np.ndarray:
    scores, _ = localization_scores(maps.float().numpy(), cells=np.array(cells), n=2, image_size=image_size)
    return scores


def has_positive(maps: torch.Tensor) -> np.ndarray:
    """``(B, T)``: maps with positive values (a signed map may have none: LRP of a negative
    logit; the scorer drops negatives, so such a map scores 0 wherever it lies)."""
    return (maps.flatten(2).amax(-1) > 0).numpy()


STRUCTURAL_MODELS = {"vgg11": vgg11, "resnet18": resnet18}


@pytest.mark.parametrize("name", list(STRUCTURAL_MODELS))
def test_difull_maps_are_zero_outside_the_target_cell_at_every_layer(name):
    model = STRUCTURAL_MODELS[name]()
    setting = create_setting("difull", model, 2)
    x, labels = grid_images(2, dtype=torch.float32), torch.from_numpy(grid_labels(2, variant="corners"))
    cells = [0, 1, 2, 3]
    layers = model.resolve_layers("all")
    maps = engine_maps(setting, x, labels, cells, layers, EXACT)
    for (layer, method), value in maps.items():
        outside = ~setting.cell_mask(torch.tensor(cells), value.shape[-2:])
        assert torch.count_nonzero(value * outside[None]) == 0, (layer, method)
        assert torch.count_nonzero(value * ~outside[None]) > 0, (layer, method)
        scores = _scores(value, cells, 64)
        if layer == "input":
            positive = has_positive(value)
            # only LRP may have maps without a positive part (a negative logit's relevance)
            assert positive.all() or method.partition(":")[0] == "lrp", (method, positive)
            assert np.all(scores[positive] == 1.0), (method, scores)
        else:  # bilinear upsampling leaks a border (SPEC §1): the layer-resolution check above
            assert np.all(scores <= 1.0), (layer, method, scores)
    # the model's own gradient, without the engine's per-cell bookkeeping, is zero there too
    h = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(setting.forward(h)[:, 1, labels[:, 1]].sum(), h)
    assert torch.count_nonzero(grad * ~setting.cell_mask(torch.tensor([1]), (64, 64))) == 0


def test_resnet18_final_layer_gridpg_grad_is_uniform_so_it_scores_one_over_n_squared():
    model = resnet18()
    setting = create_setting("gridpg", model, 2)
    x, labels = grid_images(2, dtype=torch.float32), torch.from_numpy(grid_labels(2))
    cells = [0, 1, 2, 3]
    maps = engine_maps(setting, x, labels, cells, ["final"], ["grad", "guided-backprop"])
    for method in ("grad", "guided-backprop"):
        value = maps[("final", method)]
        assert value.shape == (2, 4, 2, 2) and value.min() > 0
        assert torch.equal(value, value[..., :1, :1].expand_as(value)), method
        np.testing.assert_allclose(_scores(value, cells, 64), 0.25, rtol=0, atol=1e-7)
    assert torch.equal(maps[("final", "grad")], maps[("final", "guided-backprop")])  # no ReLU after layer4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-vgg11", "digits-resnet18"])
def test_structural_claims_on_the_trained_digits_models(name, trained_digits_cache):
    from attrcli.models import create_model

    model = create_model(name, cache_dir=trained_digits_cache)
    x, labels = grid_images(3, dtype=torch.float32), torch.from_numpy(grid_labels(3, variant="corners"))
    difull = create_setting("difull", model, 2)
    layers = model.resolve_layers("all")
    maps = engine_maps(difull, x, labels, [0, 3], layers, EXACT)
    for (layer, method), value in maps.items():
        outside = ~difull.cell_mask(torch.tensor([0, 3]), value.shape[-2:])
        assert torch.count_nonzero(value * outside[None]) == 0, (layer, method)
        if layer == "input":
            positive = has_positive(value)
            assert positive.all() or method.partition(":")[0] == "lrp", (method, positive)
            assert np.all(_scores(value, [0, 3], 64)[positive] == 1.0), method
    gridpg = create_setting("gridpg", model, 2)
    with torch.no_grad():
        cell = x[:, :, :32, :32]
        torch.testing.assert_close(create_setting("gridpg", model, 1).forward(cell)[:, 0], model.module(cell))
        torch.testing.assert_close(difull.forward(x)[:, 3], model.module(x[:, :, 32:, 32:]))
    if name == "digits-resnet18":
        labels = torch.from_numpy(grid_labels(3))
        maps = engine_maps(gridpg, x, labels, [0, 1, 2, 3], ["final"], ["grad", "guided-backprop"])
        for value in maps.values():
            np.testing.assert_allclose(_scores(value, [0, 1, 2, 3], 64), 0.25, rtol=0, atol=1e-7)


