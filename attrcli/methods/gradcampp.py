"""Grad-CAM++ (Chattopadhay et al., WACV 2018).

Channel weights are the positive gradients weighted per position by
``alpha = g² / (2 g² + Σ_ij A · g³)`` (the paper's closed form for an exponential output, with
higher derivatives expressed through powers of the first). Positions where the gradient is zero
get alpha 0. The final ReLU is not applied (the stored map stays signed).
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method


@METHODS.register("gradcam++")
class GradCAMPlusPlus(Method):
    name = "gradcam++"

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum(dim=(-2, -1), keepdim=True)
        denominator = 2 * g2 + total * g3
        alpha = torch.where(gradients != 0, g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator)), torch.zeros_like(g2))
        weights = (alpha * gradients.clamp(min=0)).sum(dim=(-2, -1), keepdim=True)
        return (weights * activations).sum(-3)
