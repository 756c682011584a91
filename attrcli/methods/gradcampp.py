"""Grad-CAM++ (Chattopadhay et al., WACV 2018).

Channel weights ``w_k = Σ_ij α_ij relu(g_ij)`` with the paper's closed form for an exponential
output, ``α = g² / (2 g² + Σ_ab A_ab · g³)`` (Eq. 19; higher derivatives expressed through powers
of the first, the exponential's positive scale dropped as in the authors' code). Where ``g > 0``
this is ``α · g = g / (2 + Σ_ab A_ab · g)``, which is what is computed (fewer passes over the
gradients). The map is ``ReLU(Σ_k w_k A_k)`` at the layer's resolution, before any upsampling
(``gradcam++:relu=false`` keeps the signed sum). In DiFull the sums run over the stitched map.

Conditioning. Where activations are signed (the input layer's pixel values) the denominator
``d = 2 + Σ A · g`` passes through zero, and near its pole a term ``g / d`` is decided by the
rounding of ``g`` (two correct float32 implementations differed by up to 0.44 in score). The
terms are therefore computed in float64, and a term whose denominator is ill-conditioned,
``|d| < ILL_CONDITIONED · |Σ A · g|`` (a relative change of ``Σ A · g`` moves ``d`` more than
100-fold), is set to 0 — the paper's code sets α = 0 only where ``d`` is exactly 0. The number
of such terms is counted (:meth:`GradCAMPlusPlus.diagnostics`) and recorded in the artifact.
After a ReLU layer ``Σ A · g ≥ 0`` and ``d ≥ 2``: nothing is ever ill-conditioned there.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method
from attrcli.methods.gradcam import CAMConfig, cam_relu

ILL_CONDITIONED = 1e-2  # |d| below this fraction of |Σ A · g|: the term is dropped


@METHODS.register("gradcam++")
class GradCAMPlusPlus(Method):
    name = "gradcam++"
    whole_grid = True
    Config = CAMConfig

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.ill_conditioned = 0

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        positive = gradients.clamp(min=0).double()
        total = activations.double().sum(dim=(-2, -1), keepdim=True)
        product = total * positive
        denominator = 2 + product
        ill = (positive > 0) & (denominator.abs() < ILL_CONDITIONED * product.abs())
        self.ill_conditioned += int(ill.sum())
        terms = torch.where(ill, 0, positive / denominator)
        weights = terms.sum(dim=(-2, -1), keepdim=True).to(activations.dtype)
        return cam_relu((weights * activations).sum(-3), self.config)

    def diagnostics(self) -> dict[str, int]:
        return {"ill_conditioned": self.ill_conditioned}
