"""Tiny ConvNeXt, Swin (v1, v2) and ViT models: torchvision's own classes with random weights.

Each keeps its family's structure (stem, stages and downsampling; patch embedding, class token
and encoder blocks) at a few channels, two stages or three blocks and 16-pixel cells, so the
setting and method tests run in milliseconds and compare in float64. The zero-argument
factories at the bottom serve ``--model tests.models.tiny_families:NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

from attrcli.models.adapter import ModelAdapter
from attrcli.models.convnext import convnext_adapter
from attrcli.models.swin import swin_adapter
from attrcli.models.vit import vit_adapter

CELL = 16
CLASSES = 10
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def convnext_module() -> nn.Module:
    """Stem (stride 4), stage of 1 block, downsampling, stage of 1 block: 2×2 on a 16-px cell."""
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=CLASSES)


def swin_module(v2: bool = False) -> nn.Module:
    """Patch 4, 2×2 windows, two stages of two blocks (the second of each shifts its windows)."""
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2],
        num_classes=CLASSES, **extra,
    )


def vit_module(layers: int = 3) -> nn.Module:
    """Patch 4 on 16-pixel images (4×4 patch tokens), hidden size 8, ``layers`` blocks."""
    return VisionTransformer(
        image_size=CELL, patch_size=4, num_layers=layers, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=CLASSES,
    )


BUILDERS: dict[str, tuple[Callable[[], nn.Module], Callable[..., ModelAdapter]]] = {
    "tiny-convnext": (convnext_module, convnext_adapter),
    "tiny-swin": (swin_module, swin_adapter),
    "tiny-swin-v2": (partial(swin_module, v2=True), swin_adapter),
    "tiny-vit": (vit_module, vit_adapter),
}


def tiny(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> ModelAdapter:
    """The adapter of tiny model ``name`` (a key of :data:`BUILDERS`), fixed-seed random weights."""
    build, adapter = BUILDERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    module = randomise_constants(module).to(dtype)
    return adapter(module, name=name, cell_size=CELL, mean=MEAN, std=STD, num_classes=CLASSES)


def randomise_constants(module: nn.Module, seed: int = 1) -> nn.Module:
    """Parameters that torchvision initialises to a constant (LayerNorm scales and shifts, layer
    scales, the class token, ViT's zero head, biases) get random values around it, which would
    otherwise hide layout mistakes (and a zero head gives zero gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            flat = param.reshape(-1)
            if flat.numel() > 0 and torch.all(flat == flat[0]):
                param.add_(torch.randn(param.shape, generator=g) * 0.5)
    return module


def tiny_convnext_model() -> ModelAdapter:
    """Tiny ConvNeXt, random weights (for --model tests.models.tiny_families:tiny_convnext_model)."""
    return tiny("tiny-convnext", dtype=torch.float32)


def tiny_swin_model() -> ModelAdapter:
    """Tiny Swin, random weights (for --model tests.models.tiny_families:tiny_swin_model)."""
    return tiny("tiny-swin", dtype=torch.float32)


def tiny_vit_model() -> ModelAdapter:
    """Tiny ViT, random weights (for --model tests.models.tiny_families:tiny_vit_model)."""
    return tiny("tiny-vit", dtype=torch.float32)
