"""Guided backpropagation through every ReLU module, undone on exit (even on error)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs
    (Springenberg et al., ICLRW 2015), as Captum's GuidedBackprop does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.ReLU`` of ``model`` backpropagates the guided way."""
    patched = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for module in patched:
        module.forward = _GuidedReLU.apply  # instance attribute shadows the class method
    try:
        yield
    finally:
        for module in patched:
            del module.forward
