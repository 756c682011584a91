"""Guided backpropagation through every ReLU module, undone on exit (even on error).

The engine wants plain and guided gradients from one forward pass: every ``nn.ReLU`` of the
model is swapped for a ReLU whose backward rule is read from a switch at backward time, so a
graph built once can be differentiated the plain way, then the guided way.

Guided backprop is defined for ReLU networks only. A model with other activations (GELU in
ConvNeXt, Swin and ViT; SiLU in EfficientNet) would backpropagate through them plainly, and on
a model without any ReLU the "guided" map would silently be the plain gradient, so such models
are refused (:func:`guided_problem`) rather than given an undefined variant.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_MISSING = object()
#: Rectifier-like activations used in place of ReLU, whose backward guided backprop does not
#: define (gates such as a squeeze-excitation sigmoid are not rectifiers and are allowed).
NON_RELU = (
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU, nn.PReLU,
    nn.RReLU, nn.Softplus,
)


def guided_problem(model: nn.Module) -> str | None:
    """Why guided backprop is not defined for ``model``, or None: it needs ``nn.ReLU`` modules
    and no other activation module (the first one found is named)."""
    for path, module in model.named_modules():
        if isinstance(module, NON_RELU):
            return (
                f"guided backprop is defined for ReLU networks and the model has "
                f"{type(module).__name__} ({path})"
            )
    if not any(isinstance(module, nn.ReLU) for module in model.modules()):
        return "guided backprop needs nn.ReLU modules and the model has none"
    return None


class BackwardRule:
    """Which gradient the patched ReLUs pass back: ``guided`` or plain."""

    def __init__(self, guided: bool = False) -> None:
        self.guided = guided


class _SwitchableReLU(torch.autograd.Function):
    """ReLU whose backward is plain, or guided when ``rule.guided`` (Springenberg et al., ICLRW
    2015): only positive gradients pass, and only at positive inputs, as Captum's GuidedBackprop.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: BackwardRule) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        if ctx.rule.guided:
            grad = grad.clamp(min=0)
        return torch.ops.aten.threshold_backward(grad, out, 0), None  # ReLU's own backward kernel


@contextmanager
def switchable_relus(model: nn.Module, rule: BackwardRule) -> Iterator[BackwardRule]:
    """Within the block, every ``nn.ReLU`` of ``model`` backpropagates as ``rule`` says *when the
    backward runs*; the modules' own ``forward`` is restored on exit, whatever happens."""
    patched: list[tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                patched.append((module, module.__dict__.get("forward", _MISSING)))
                module.forward = lambda x, _rule=rule: _SwitchableReLU.apply(x, _rule)
        yield rule
    finally:
        for module, previous in reversed(patched):
            if previous is _MISSING:
                del module.forward
            else:
                module.forward = previous


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.ReLU`` of ``model`` backpropagates the guided way."""
    with switchable_relus(model, BackwardRule(guided=True)):
        yield
