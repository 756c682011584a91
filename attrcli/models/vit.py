"""Adapter for torchvision's Vision Transformers (Dosovitskiy et al., ICLR 2021).

A ViT cuts an image into p×p patches (``conv_proj``: a stride-p convolution, so its output is
a spatial map ``(B, C, h, w)``), prepends a class token, adds position embeddings and runs a
stack of encoder blocks on the token sequence ``(B, 1 + h·w, C)``; the head reads the class
token alone (after a final LayerNorm).

- Layers: ``input``, ``conv_proj`` (the patch embedding) and every encoder block. Blocks output
  token sequences; :func:`tokens_to_map` drops the class token and reshapes the patch tokens to
  ``(B, C, h, w)``, so every method and the scorer see a spatial map at every layer.
- ``final`` is the output of the second-to-last block, i.e. the input of the last one: after the
  last block only the class token reaches the logits, so its patch tokens have no influence at
  all (the layer Grad-CAM for ViTs uses). ``middle`` is the output of block L/2 − 1 (block 5 of
  12). ``all`` is ``conv_proj`` and every block but the last.
- Any grid size: when the patch map is larger than the one the model was built for (a whole
  grid in GridPG), the position embeddings are interpolated to it with torchvision's own
  :func:`~torchvision.models.vision_transformer.interpolate_embeddings` (bicubic). On one cell
  nothing is interpolated, so DiFull's heads are the plain model.
- The class token attends to every patch, so no part of the final map belongs to one cell:
  ``part_heads`` is False and DiPart is refused (docs/architectures.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from attrcli.models.adapter import ModelAdapter, _no_inplace


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + h·w, C)`` tokens (class token first) to the patch map ``(B, C, h, w)``, h = w."""
    batch, count, channels = tokens.shape
    side = math.isqrt(count - 1)
    if side * side != count - 1:
        raise ValueError(f"{count - 1} patch tokens do not form a square map")
    return tokens[:, 1:].transpose(1, 2).reshape(batch, channels, side, side)


def position_embedding(model: nn.Module, height: int, width: int) -> torch.Tensor:
    """The model's position embeddings for an ``height × width`` patch map: as they are for the
    map the model was built for, bicubically interpolated (torchvision's helper) otherwise."""
    pos = model.encoder.pos_embedding
    if 1 + height * width == pos.shape[1]:
        return pos
    if height != width:
        raise ValueError(f"position embeddings interpolate to square patch maps only, got {height}x{width}")
    state = OrderedDict([("encoder.pos_embedding", pos)])
    return interpolate_embeddings(height * model.patch_size, model.patch_size, state)["encoder.pos_embedding"]


class FirstEncoderBlock(nn.Module):
    """Patch map ``(B, C, h, w)`` to the token sequence, then the first encoder block: flattens
    the patches, prepends the class token, adds the (interpolated) position embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vit = model

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        batch, _, height, width = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.class_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = vit.encoder.dropout(tokens + position_embedding(vit, height, width))
        return vit.encoder.layers[0](tokens)


def vit_adapter(
    model: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int
) -> ModelAdapter:
    """Adapter for torchvision's ``VisionTransformer``: ``conv_proj``, ``class_token``,
    ``encoder`` (``pos_embedding``, ``layers``, ``ln``) and ``heads``."""
    _no_inplace(model)
    model.eval()
    layers = list(model.encoder.layers.named_children())
    paths = [f"encoder.layers.{layer_name}" for layer_name, _ in layers]
    blocks: list[tuple[str, nn.Module]] = [("conv_proj", model.conv_proj), (paths[0], FirstEncoderBlock(model))]
    blocks += [(path, module) for path, (_, module) in zip(paths[1:], layers[1:])]
    reaching = [name for name, _ in blocks[:-1]]  # every block whose patch tokens reach the logits

    def head(features: torch.Tensor) -> torch.Tensor:
        return model.heads(model.encoder.ln(features)[:, 0])

    return ModelAdapter(
        name=name,
        module=model,
        blocks=blocks,
        head=head,
        gap_head=True,
        aliases={"middle": blocks[len(layers) // 2][0], "final": reaching[-1]},
        stage_layers=reaching,
        cell_size=cell_size,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        token_layers=frozenset(paths),
        tokens_to_map=tokens_to_map,
        part_heads=False,
    )
