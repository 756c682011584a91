"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", 2020).

The gradient times the activation, element-wise, summed over channels: ``ReLU(Σ_k g_k ⊙ A_k)``
at the layer's resolution (the CAM papers' ReLU, as :func:`~attrcli.methods.gradcam.cam_relu`;
``hirescam:relu=false`` keeps the signed sum). Grad-CAM averages the gradient over positions
first; HiResCAM does not, so a position's value depends on its own gradient alone and, in
DiFull, the map of head i is exactly zero outside cell i at every layer. From the shared
gradient pass.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.methods.gradcam import CAMConfig, cam_relu


@METHODS.register("hirescam")
class HiResCAM(Method):
    name = "hirescam"
    testing = MethodTesting(difull_exact=True)
    Config = CAMConfig

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return cam_relu((gradients * activations).sum(-3), self.config)
