"""Layer-CAM (Jiang et al., IEEE TIP 2021).

Each activation is weighted by its own positive gradient, then channels are summed. The final
ReLU is not applied (the stored map stays signed).
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method


@METHODS.register("layercam")
class LayerCAM(Method):
    name = "layercam"

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients.clamp(min=0) * activations).sum(-3)
