"""Attention rollout and Chefer et al.'s transformer attribution on a tiny torchvision ViT,
against the attention matrices of torchvision's own ``nn.MultiheadAttention`` (its returned
weights) and their autograd gradients, in GridPG and DiFull; refused on models without
attention and at hidden layers."""

from __future__ import annotations

import pytest
import torch

from attrcli.errors import UserError
from attrcli.methods import METHODS
from attrcli.methods.applicability import check_method
from attrcli.methods.attention import recorded_attention
from attrcli.settings import create_setting
from tests.engine.helpers import engine_maps
from tests.models.tiny_families import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
CELL, PATCH = 16, 4


def _torch_attention(model, images, *, heads_separate: bool = False):
    """Logits of ``images`` (single cells or grids, run by ``run``) and each block's attention
    weights as torchvision's MultiheadAttention returns them (need_weights forced on)."""
    weights = []

    def force(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": not heads_separate}

    def keep(module, args, kwargs, output):
        weights.append(output[1])

    handles = []
    for block in model.module.encoder.layers:
        handles.append(block.self_attention.register_forward_pre_hook(force, with_kwargs=True))
        handles.append(block.self_attention.register_forward_hook(keep, with_kwargs=True))
    try:
        features = model.run_blocks(images)
    finally:
        for handle in handles:
            handle.remove()
    return features, weights


def _class_row(total: torch.Tensor, size: int) -> torch.Tensor:
    side = int((total.shape[-1] - 1) ** 0.5)
    patches = total[:, 0, 1:].reshape(-1, side, side)
    factor = size // side
    return patches.repeat_interleave(factor, 1).repeat_interleave(factor, 2)


def _images(grids: int = 2, n: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(grids, 3, n * CELL, n * CELL, generator=g, dtype=torch.float64)


def test_explicit_attention_is_the_models_own():
    model = tiny("tiny-vit")
    x = _images()
    with torch.no_grad():
        plain = model.head(model.run_blocks(x))
        with recorded_attention(model.module) as store:
            explicit = model.head(model.run_blocks(x))
        _, weights = _torch_attention(model, x, heads_separate=True)
    torch.testing.assert_close(explicit, plain, rtol=1e-12, atol=1e-12)
    assert len(store) == len(weights) == 3
    for mine, theirs in zip(store, weights):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    assert "forward" not in model.module.encoder.layers[0].self_attention.__dict__  # restored


@pytest.mark.parametrize("setting_name", ["gridpg", "difull"])
def test_rollout_is_the_product_of_head_averaged_residual_mixed_attention(setting_name):
    model = tiny("tiny-vit")
    setting = create_setting(setting_name, model, 2)
    x = _images()
    labels = torch.tensor([[0, 1, 2, 0], [3, 4, 5, 3]])
    cells = [0, 3]
    maps = engine_maps(setting, x, labels, cells, ["input"], ["attention-rollout"])[("input", "attention-rollout")]
    with torch.no_grad():
        if setting_name == "gridpg":
            inputs = x
        else:  # each target's cell alone
            inputs = torch.stack([x[:, :, :CELL, :CELL], x[:, :, CELL:, CELL:]], 1).flatten(0, 1)
        _, weights = _torch_attention(model, inputs)
    eye = torch.eye(weights[0].shape[-1], dtype=torch.float64)
    total = eye
    for w in weights:
        mixed = 0.5 * w + 0.5 * eye
        total = (mixed / mixed.sum(-1, keepdim=True)) @ total
    expected = _class_row(total, inputs.shape[-1])
    if setting_name == "gridpg":
        for t in range(2):
            torch.testing.assert_close(maps[:, t], expected, rtol=1e-10, atol=1e-14)
    else:
        expected = expected.view(2, 2, CELL, CELL)
        torch.testing.assert_close(maps[:, 0, :CELL, :CELL], expected[:, 0], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(maps[:, 1, CELL:, CELL:], expected[:, 1], rtol=1e-10, atol=1e-14)
        assert torch.count_nonzero(maps[:, 0, CELL:]) == 0 and torch.count_nonzero(maps[:, 1, :CELL]) == 0
    assert (maps >= 0).all() and maps.amax() > 0


def test_chefer_weighs_attention_by_its_gradient_per_target():
    """GridPG: one head, each target its own class, so two targets get different maps: the
    rollout of ``I + mean_heads (∇A ⊙ A)⁺`` with torchvision's attention and autograd's gradient."""
    model = tiny("tiny-vit")
    setting = create_setting("gridpg", model, 2)
    x = _images()
    labels = torch.tensor([[0, 1, 2, 6], [3, 4, 5, 7]])
    cells = [0, 3]
    maps = engine_maps(setting, x, labels, cells, ["input"], ["chefer"])[("input", "chefer")]
    heads = model.module.encoder.layers[0].self_attention.num_heads
    for t, cell in enumerate(cells):
        features, weights = _torch_attention(model, x, heads_separate=True)
        used = [w._base for w in weights]  # the (B·heads, N, N) tensor torch multiplies with v
        logit = setting.heads(features)[torch.arange(2), 0, labels[:, cell]].sum()
        grads = torch.autograd.grad(logit, used)
        eye = torch.eye(weights[0].shape[-1], dtype=torch.float64)
        total = eye
        for w, g in zip(weights, grads):
            g = g.view_as(w)
            total = (eye + (g * w.detach()).clamp(min=0).mean(1)) @ total
        torch.testing.assert_close(maps[:, t], _class_row(total, 2 * CELL), rtol=1e-10, atol=1e-14)
    assert heads == 2 and not torch.allclose(maps[:, 0], maps[:, 1])


@pytest.mark.parametrize("name", ["attention-rollout", "chefer"])
def test_refused_without_attention_and_at_hidden_layers(name, conv_model):
    setting = create_setting("gridpg", conv_model(), 2)
    with pytest.raises(UserError, match=rf"^method {name} cannot run at layer input .*has no such attention") as refused:
        check_method(setting, METHODS.get(name), "input")
    assert "\n" not in str(refused.value)
    vit = create_setting("gridpg", tiny("tiny-vit"), 2)
    check_method(vit, METHODS.get(name), "input")
    with pytest.raises(UserError, match=r"to the input patches only"):
        check_method(vit, METHODS.get(name), "conv_proj")
    with pytest.raises(UserError):
        create_setting("dipart", tiny("tiny-vit"), 2)  # DiPart is not defined for ViTs
