"""The tiny VGG-like model the benchmark harness tests run both sides on."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 5


class TinyVGG(nn.Module):
    """Three conv layers (ReLU after each), 8-pixel cells to a 2×2 map, a two-layer classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def tiny_vgg(*, last_layer_scale: float) -> TinyVGG:
    """The model from seed 0, its last layer scaled so that gradients are of order one, as in
    trained models (the plain random initialisation gives gradients of about 1e-4)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = TinyVGG()
    with torch.no_grad():
        module.classifier[-1].weight.mul_(last_layer_scale)
    return module
