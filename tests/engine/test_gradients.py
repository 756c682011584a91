"""The shared gradient pass against Captum, and its hygiene (no hook left, inputs untouched).

Captum is run the straightforward way: one explained row per (grid image, target), on modules
that wrap the setting, in float64. Layer-level references run Captum on the rest of the network
applied to the (grid-layout) activations, or hook an identity placed on them; DiFull's stitched
map passes through that identity, so Captum sees exactly the layer the engine explains.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Saliency,
)
from torch import nn

from attrcli.engine.gradients import gradient_pass, shared_gradients
from attrcli.methods import METHODS
from attrcli.models import create_model
from attrcli.settings import GridSetting, Targets, create_setting
from tests.engine.helpers import engine_maps, grid_images, grid_labels, resnet18, tiny_vgg

SETTINGS = ("gridpg", "difull", "dipart")


def assert_agrees(ours: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal to 1e-5 relative; values below 1e-9 of the map's scale compare in absolute terms
    (Captum rounds its integration weights to float32, which shows on near-zero values)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        ours, expected, rtol=1e-5, atol=1e-9 * scale, msg=lambda m: f"{what}: {m}"
    )


class Rest(nn.Module):
    """The setting after layer ``index``, from grid-layout activations; holds the model so that
    Captum's GuidedBackprop hooks the model's own ReLUs. An identity at the start gives
    LayerIntegratedGradients a layer whose baseline is zero."""

    def __init__(self, setting: GridSetting, index: int) -> None:
        super().__init__()
        self.model, self.setting, self.index = setting.model.module, setting, index
        self.start = nn.Identity()

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.setting.suffix(self.setting.from_map(self.start(m)), self.index)


class Whole(nn.Module):
    """The whole setting from grid images, its layer-``index`` activations (grid layout, DiFull
    stitched) passing through the identity ``at_layer`` for Captum's layer methods."""

    def __init__(self, setting: GridSetting, index: int) -> None:
        super().__init__()
        self.model, self.setting, self.index = setting.model.module, setting, index
        self.at_layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.setting
        m = self.at_layer(s.to_map(s.prefix(x, self.index)))
        return s.suffix(s.from_map(m), self.index)


def captum_maps(
    method: str, setting: GridSetting, x: torch.Tensor, targets: Targets, index: int, steps: int = 20
) -> torch.Tensor:
    """Captum's maps ``(B, T, h, w)``, one explained row per (grid image, target)."""
    B, T = x.shape[0], targets.count
    rows = x.repeat_interleave(T, 0)
    target = [(int(targets.heads[t]), int(targets.classes[b, t])) for b in range(B) for t in range(T)]
    with torch.no_grad():
        a = setting.to_map(setting.prefix(rows, index)).requires_grad_(True)
    rest = Rest(setting, index)
    if method == "grad":
        out = Saliency(rest).attribute(a, target=target, abs=True)
    elif method == "guided-backprop":
        out = GuidedBackprop(rest).attribute(a, target=target).abs()
    elif method == "ixg":
        out = InputXGradient(rest).attribute(a, target=target)
    elif method == "ixg-layer":
        whole = Whole(setting, index)
        out = LayerGradientXActivation(whole, whole.at_layer).attribute(rows, target=target)
    elif method == "intgrad":
        out = IntegratedGradients(rest).attribute(
            a, baselines=torch.zeros_like(a), target=target, n_steps=steps, method="gausslegendre"
        )
    elif method == "intgrad-layer":
        out = LayerIntegratedGradients(rest, rest.start).attribute(
            a, baselines=torch.zeros_like(a), target=target, n_steps=steps, method="gausslegendre"
        )
    elif method == "gradcam":
        whole = Whole(setting, index)
        out = LayerGradCam(whole, whole.at_layer).attribute(rows, target=target, relu_attributions=True)
    else:
        raise ValueError(method)
    return out.detach().sum(1).view(B, T, *out.shape[-2:])


REFERENCES = {  # engine method -> Captum references
    "grad": ["grad"],
    "guided-backprop": ["guided-backprop"],
    "ixg": ["ixg", "ixg-layer"],
    "intgrad": ["intgrad", "intgrad-layer"],
    "gradcam": ["gradcam"],
}


def _case(model, name: str, grids: int):
    setting = create_setting(name, model, 2)
    variant = "distinct" if name == "gridpg" else "corners"
    x = grid_images(grids, cell=model.cell_size)
    labels = torch.from_numpy(grid_labels(grids, variant=variant))
    return setting, x, labels


@pytest.fixture(scope="module")
def vgg():
    return tiny_vgg()


@pytest.fixture(scope="module")
def resnet():
    """The digits ResNet18 topology (BasicBlock, batch norm), random weights, float64."""
    adapter = create_model("digits-resnet18", weights="random")
    adapter.module.double()
    return adapter


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_gradient_methods_agree_with_captum_at_input_and_hidden_layers(request, which, name):
    model = request.getfixturevalue(which)
    setting, x, labels = _case(model, name, grids=2 if which == "vgg" else 1)
    cells = setting.resolve_cells("all" if name == "difull" and which == "vgg" else None)
    layers = ["input", "middle", "final"]
    steps = 20 if which == "vgg" else 6  # the paper's 20 steps once; fewer keep the ResNet cases fast
    intgrad = "intgrad" if steps == 20 else f"intgrad:steps={steps}"
    methods = [intgrad if m == "intgrad" else m for m in REFERENCES]
    maps = engine_maps(setting, x, labels, cells, layers, methods, batch_size=3)
    targets = setting.targets(labels, cells)
    for layer in layers:
        for method, references in REFERENCES.items():
            ours = maps[(layer, intgrad if method == "intgrad" else method)]
            for reference in references:
                if reference == "intgrad-layer" and layer == "input":
                    continue  # the same computation as "intgrad" there
                expected = captum_maps(reference, setting, x, targets, model.layer_index(layer), steps)
                assert_agrees(ours, expected, f"{layer} {method} vs Captum {reference}")
            assert ours.abs().max() > 0


def test_torchvision_resnet18_single_pass_methods_agree_with_captum():
    model = resnet18(dtype=torch.float64)
    setting, x, labels = _case(model, "dipart", grids=1)
    cells = setting.resolve_cells(None)
    targets = setting.targets(labels, cells)
    maps = engine_maps(setting, x, labels, cells, ["input", "middle"], ["grad", "guided-backprop", "ixg"])
    for layer in ("input", "middle"):
        for method in ("grad", "guided-backprop", "ixg"):
            expected = captum_maps(method, setting, x, targets, model.layer_index(layer))
            assert_agrees(maps[(layer, method)], expected, f"{layer} {method}")


@pytest.mark.parametrize("name", SETTINGS)
def test_one_shared_pass_equals_one_pass_per_layer_and_rule(vgg, name):
    setting, x, labels = _case(vgg, name, grids=2)
    targets = setting.targets(labels, setting.resolve_cells(None))
    indices = [vgg.layer_index(layer) for layer in ("input", "features.4", "final")]
    shared = shared_gradients(setting, x, targets, {"plain": indices, "guided": indices[1:]}, whole=indices)
    for rule, wanted in (("plain", indices), ("guided", indices[1:])):
        for index in wanted:
            (a, g), = gradient_pass(setting, x, targets, [index], guided=rule == "guided").values()
            assert torch.equal(shared[rule][index].activations, a)
            torch.testing.assert_close(shared[rule][index].gradients, g, rtol=1e-12, atol=1e-15)
    # guided and plain differ, and guided only changes what lies behind a ReLU
    assert not torch.allclose(shared["plain"][indices[1]].gradients, shared["guided"][indices[1]].gradients)


def test_maps_do_not_depend_on_the_chunk_or_the_intgrad_batch(vgg):
    setting, x, labels = _case(vgg, "dipart", grids=2)
    cells = setting.resolve_cells(None)
    methods = ["grad", "gradcam++", "intgrad:steps=5"]
    whole = engine_maps(setting, x, labels, cells, ["input", "middle"], methods, batch_size=7)
    for row in range(2):
        alone = engine_maps(setting, x[row : row + 1], labels[row : row + 1], cells, ["input", "middle"], methods, batch_size=1)
        for key, value in alone.items():
            torch.testing.assert_close(whole[key][row : row + 1], value, rtol=1e-10, atol=1e-14)


def _hooks(module: nn.Module) -> list:
    found = []
    for sub in module.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            found += list(getattr(sub, name).values())
        if "forward" in sub.__dict__:
            found.append(sub.__dict__["forward"])
    return found


class _FailInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward failed")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_no_patch_or_hook_survives_an_exception_in_a_guided_pass(vgg, where, monkeypatch):
    setting, x, labels = _case(vgg, "gridpg", grids=1)
    targets = setting.targets(labels, [0, 1])
    before = shared_gradients(setting, x, targets, {"plain": [-1, 7], "guided": [-1, 7]})
    assert _hooks(vgg.module) == []
    heads = setting.heads

    def failing(features):
        if where == "forward":
            raise RuntimeError("head failed")
        return heads(_FailInBackward.apply(features))

    monkeypatch.setattr(setting, "heads", failing)
    with pytest.raises(RuntimeError, match="head failed" if where == "forward" else "backward failed"):
        shared_gradients(setting, x, targets, {"plain": [-1], "guided": [-1, 7]})
    monkeypatch.undo()
    assert _hooks(vgg.module) == []
    assert all(type(m).forward is m.forward.__func__ for m in vgg.module.modules())
    after = shared_gradients(setting, x, targets, {"plain": [-1, 7], "guided": [-1, 7]})
    for rule in ("plain", "guided"):
        for index in (-1, 7):
            assert torch.equal(before[rule][index].gradients, after[rule][index].gradients)
    # and a plain autograd pass through the setting gives the same gradient again
    h = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(setting.forward(h)[0, 0, targets.classes[0, 0]], h)
    assert torch.equal(grad[0], before["plain"][-1].gradients[0, 0])


@pytest.mark.parametrize("name", SETTINGS)
def test_inputs_are_not_modified(vgg, name):
    setting, x, labels = _case(vgg, name, grids=1)
    x_before, labels_before = x.clone(), labels.clone()
    engine_maps(setting, x, labels, setting.resolve_cells(None), ["input", "middle"],
                ["grad", "guided-backprop", "ixg", "intgrad:steps=3", "gradcam", "gradcam++", "layercam"])
    assert torch.equal(x, x_before) and torch.equal(labels, labels_before)
    assert not x.requires_grad and x.grad is None
    assert all(p.grad is None for p in vgg.module.parameters())


# Every computed method (registry-driven: a newly registered method joins), at its tiny config.
# LRP is left out: its relevance is defined per head through zennit's rules, and the every-cell
# run this test compares against is not a path the product takes for it (the per-cell path is
# checked against zennit in tests/methods/test_lrp.py).
ALL_MODEL_METHODS = [
    METHODS.get(name).testing.spec(name)
    for name in METHODS.names()
    if METHODS.get(name).kind != "derived" and name != "lrp" and not METHODS.get(name).testing.model
]


@pytest.mark.parametrize("heads", ["default", "3,1"])
def test_difull_runs_only_the_target_cells_and_gets_every_map_of_the_whole_grid(vgg, heads, monkeypatch):
    """DiFull computes only the target cells' rows (the others have zero gradient and cannot move
    an evaluated head); every method's maps equal those of the run over every cell."""
    setting, x, labels = _case(vgg, "difull", grids=2)
    cells = setting.resolve_cells(heads)
    layers = ["input", "features.4", "final"]
    seen: list[int] = []
    blocks = vgg.blocks
    first = blocks[0][1]
    # planning traces layer shapes on the meta device (no computation): not counted
    counting = first.register_forward_hook(
        lambda module, args, out: None if args[0].is_meta else seen.append(args[0].shape[0])
    )
    try:
        fast = engine_maps(setting, x, labels, cells, layers, ALL_MODEL_METHODS, batch_size=8)
    finally:
        counting.remove()
    monkeypatch.setattr(setting, "target_rows", lambda targets, grids: None)
    every = engine_maps(setting, x, labels, cells, layers, ALL_MODEL_METHODS, batch_size=8)
    assert fast.keys() == every.keys()
    for key, value in every.items():
        assert value.abs().amax() > 0, key
        torch.testing.assert_close(fast[key], value, rtol=1e-9, atol=1e-12 * float(value.abs().amax()), msg=lambda m: f"{key}: {m}")
    # the shared gradient pass ran on the 2 × 2 target rows, not on the 2 × 4 cells
    assert seen[0] == 2 * len(cells)
