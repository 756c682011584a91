"""A small model for study files' plugin tests (``tests.study.plugin_models:small_vgg``)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers

from attrcli.models.adapter import ModelAdapter, vgg_adapter
from tests.engine.helpers import CLASSES, MEAN, STD, VGG11_CONFIG, _small_classifier


def small_vgg() -> ModelAdapter:
    """VGG11 topology at 1/8 width with a small classifier, seeded, built without torchvision's
    default 4096-wide classifier (its random initialisation is most of a tiny test's time)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device("meta"):
            module = torchvision.models.VGG(nn.Sequential(), num_classes=CLASSES, init_weights=False)
        module.features = make_layers([c if c == "M" else c // 8 for c in VGG11_CONFIG])
        module.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        module.classifier = _small_classifier(512 // 8)
    return vgg_adapter(module, name="small-vgg", cell_size=32, mean=MEAN, std=STD, num_classes=CLASSES)
