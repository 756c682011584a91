"""Layer-CAM (Jiang et al., IEEE TIP 2021).

Each activation is weighted by its own positive gradient and channels are summed; the map is
``ReLU(Σ_k relu(g_k) ⊙ A_k)`` at the layer's resolution (Eq. 4–5 of the paper). After a ReLU
layer the activations are non-negative and the ReLU changes nothing; at the input (signed
pixel values) it drops negative sums before upsampling, which the scorer would drop anyway as
the map needs no upsampling there. ``layercam:relu=false`` keeps the signed sum.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.methods.gradcam import CAMConfig, cam_relu


@METHODS.register("layercam")
class LayerCAM(Method):
    name = "layercam"
    testing = MethodTesting(difull_exact=True)
    Config = CAMConfig

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return cam_relu((gradients.clamp(min=0) * activations).sum(-3), self.config)
