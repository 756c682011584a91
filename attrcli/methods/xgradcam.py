"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM", BMVC 2020).

Channel weights ``w_k = Σ_ij (A_k,ij / Σ_ab A_k,ab) · g_k,ij`` (Eq. 10 of the paper: the
gradient averaged with the channel's activations as weights); the map is ``ReLU(Σ_k w_k A_k)``
at the layer's resolution (``xgradcam:relu=false`` keeps the signed sum). A channel whose
activations sum to exactly zero gets weight 0 (the authors' code divides by ``ΣA + 1e-7``; a
zero-sum channel then has a huge, rounding-decided weight at a signed layer, and after a ReLU
layer such a channel is all zero and contributes nothing either way). In DiFull the sums run
over the stitched map, as Grad-CAM's mean (``whole_grid``). From the shared gradient pass.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method
from attrcli.methods.gradcam import CAMConfig, cam_relu


def xgradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Channel weights ``(..., C, 1, 1)``: Σ(g·A) / ΣA over the map, 0 where ΣA is 0."""
    total = activations.sum(dim=(-2, -1), keepdim=True)
    weighted = (gradients * activations).sum(dim=(-2, -1), keepdim=True)
    return torch.where(total != 0, weighted / torch.where(total != 0, total, 1), 0)


@METHODS.register("xgradcam")
class XGradCAM(Method):
    name = "xgradcam"
    whole_grid = True
    Config = CAMConfig

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = xgradcam_weights(activations, gradients)
        return cam_relu((weights * activations).sum(-3), self.config)
