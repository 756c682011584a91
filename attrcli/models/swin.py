"""Adapter for torchvision's Swin Transformer family (Liu et al., ICCV 2021; v2: CVPR 2022).

Swin is hierarchical like a CNN: a patch embedding, four stages of window-attention blocks and
three patch-merging layers, then LayerNorm, global average pooling and a linear head. Its
blocks keep activations channels-last, ``(B, H, W, C)``; the adapter wraps every block so that
it takes and returns ``(B, C, H, W)``, the layout every method, setting and the scorer use (the
wrappers only permute; the model's own modules run unchanged).

Attention is local to 7×7 windows (8×8 for v2) that tile each cell's feature map, and every
other block shifts the windows by half a window. On a grid the shifted windows straddle cell
borders, so DiPart's heads are partly disconnected, as for CNNs; on a single cell the last
stage is one window, which torchvision does not shift, so DiFull's heads are the plain model.
"""

from __future__ import annotations

import torch
from torch import nn

from attrcli.models.adapter import ModelAdapter, _no_inplace, staged_adapter


class ChannelsFirst(nn.Module):
    """Runs a channels-last module on ``(B, C, H, W)`` maps and returns ``(B, C, H, W)``.

    ``takes_map``: the module already takes ``(B, C, H, W)`` (the patch embedding, which
    permutes itself); its output is permuted only.
    """

    def __init__(self, module: nn.Module, *, takes_map: bool = False) -> None:
        super().__init__()
        self.module = module
        self.takes_map = takes_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_map:
            x = x.permute(0, 2, 3, 1)
        return self.module(x).permute(0, 3, 1, 2)


def swin_adapter(
    model: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int
) -> ModelAdapter:
    """Adapter for torchvision-style Swin (v1 and v2): ``features``, ``norm``, ``avgpool``, ``head``.

    Blocks are the patch embedding (``features.0``), each Swin block and each patch merging;
    ``features.1`` .. ``features.7`` (odd indices) name the output of stage 1 .. 4. ``middle``
    is stage 2, ``final`` stage 4. Every block's map is ``(B, C, H, W)``.
    """
    _no_inplace(model)
    model.eval()

    def head(features: torch.Tensor) -> torch.Tensor:
        x = model.norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return model.head(torch.flatten(model.avgpool(x), 1))

    return staged_adapter(
        model, name=name, head=head, cell_size=cell_size, mean=mean, std=std, num_classes=num_classes,
        wrap=lambda position, module: ChannelsFirst(module, takes_map=position == 0),
    )
