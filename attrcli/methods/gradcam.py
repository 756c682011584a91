"""Grad-CAM (Selvaraju et al., ICCV 2017).

Channel weights are the spatial mean of the gradients; the map is the weighted sum of the
activation channels. Deliberate difference from the paper: the final ReLU is not applied, so
the stored map stays signed (scoring drops negatives anyway), as Captum's ``LayerGradCam`` with
its default ``relu_attributions=False``. In DiFull the mean runs over the stitched map, whose
gradient is zero outside the head's cell.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method


@METHODS.register("gradcam")
class GradCAM(Method):
    name = "gradcam"
    whole_grid = True

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(-2, -1), keepdim=True)
        return (weights * activations).sum(-3)
