"""Adapter for torchvision's ConvNeXt family (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

ConvNeXt is a CNN in the layout the grid settings expect: ``features`` is a stem, four stages of
``CNBlock`` (depthwise 7×7 conv, LayerNorm, pointwise MLP with GELU, layer scale, residual) and
three downsampling layers between them; the head is global average pooling, LayerNorm and a
linear layer. So GridPG applies the head to the composite map (as for ResNet), DiPart splits
the final map into n² parts and DiFull runs cells alone, exactly as for ResNet.
"""

from __future__ import annotations

import torch
from torch import nn

from attrcli.models.adapter import ModelAdapter, _no_inplace, staged_adapter


def convnext_adapter(
    model: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int
) -> ModelAdapter:
    """Adapter for torchvision-style ConvNeXt: ``features``, ``avgpool``, ``classifier``.

    Blocks are the stem, each ``CNBlock`` and each downsampling layer; ``features.1`` ..
    ``features.7`` (odd indices) name the output of stage 1 .. 4. ``middle`` is stage 2
    (``features.3``), ``final`` stage 4 (``features.7``), as ``layer2`` / ``layer4`` for ResNet.
    """
    _no_inplace(model)
    model.eval()

    def head(features: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.avgpool(features))

    return staged_adapter(model, name=name, head=head, cell_size=cell_size, mean=mean, std=std,
                          num_classes=num_classes)
