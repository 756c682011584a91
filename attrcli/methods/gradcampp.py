"""Grad-CAM++ (Chattopadhay et al., WACV 2018).

Channel weights ``w_k = Σ_ij α_ij relu(g_ij)`` with the paper's closed form for an exponential
output, ``α = g² / (2 g² + Σ_ab A_ab · g³)`` (Eq. 19; higher derivatives expressed through powers
of the first, the exponential's positive scale dropped as in the authors' code). Where ``g > 0``
this is ``α · g = g / (2 + Σ_ab A_ab · g)``, which is what is computed (fewer passes over the
gradients; where the denominator vanishes the term is 0, as the paper's code sets α = 0 there).
The map is ``Σ_k w_k A_k``. Deliberate difference: the final ReLU is not applied (the stored map
stays signed; scoring drops negatives anyway). In DiFull the sums run over the stitched map.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method


@METHODS.register("gradcam++")
class GradCAMPlusPlus(Method):
    name = "gradcam++"
    whole_grid = True

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        positive = gradients.clamp(min=0)
        total = activations.sum(dim=(-2, -1), keepdim=True)
        denominator = 2 + total * positive
        terms = torch.where(denominator != 0, positive / denominator, 0)
        weights = terms.sum(dim=(-2, -1), keepdim=True)
        return (weights * activations).sum(-3)
