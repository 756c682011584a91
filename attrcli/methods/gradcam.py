"""Grad-CAM (Selvaraju et al., ICCV 2017).

Channel weights are the spatial mean of the gradients; the map is ``ReLU(Σ_k w_k A_k)`` at the
layer's resolution (Eq. 2 of the paper), before anything is upsampled: bilinear upsampling of a
signed map mixes signs, so clamping after it (as earlier versions of attrcli did) is a different map.
``gradcam:relu=false`` keeps the signed sum (Captum's ``LayerGradCam`` default), under its own
artifact key. In DiFull the mean runs over the stitched map, whose gradient is zero outside the
head's cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.methods.base import METHODS, Method


@dataclass(frozen=True)
class CAMConfig:
    relu: bool = True  # the paper's ReLU at the layer's resolution; false keeps the signed map


def cam_relu(maps: torch.Tensor, config: CAMConfig) -> torch.Tensor:
    """The CAM papers' final ReLU, at the layer's resolution, unless ``relu=false``."""
    return maps.clamp(min=0) if config.relu else maps


@METHODS.register("gradcam")
class GradCAM(Method):
    name = "gradcam"
    whole_grid = True
    Config = CAMConfig

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(-2, -1), keepdim=True)
        return cam_relu((weights * activations).sum(-3), self.config)
