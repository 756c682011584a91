"""The model adapter: what attrcli needs to know about a classifier.

A model is seen as a sequence of feature *blocks* (the attributable layers are the outputs of
these blocks, plus ``input``) followed by a *head* that maps the feature map of one image (one
grid cell) to logits. The grid settings are built from these two parts alone, so a user can
evaluate their own architecture by writing one adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from attrcli.errors import UserError

INPUT = "input"
ALIASES = ("input", "middle", "final")


@dataclass
class ModelAdapter:
    """A classifier split into feature blocks and a head.

    Attributes:
        name: registry name of the model.
        module: the whole model (``eval()`` mode; ReLUs not in place).
        blocks: ordered ``(layer name, module)`` pairs; running them in order maps an image to
            the final feature map. Each name is a module path of ``module``.
        head: maps the feature map of one cell (``(B, C, d, d)``) to logits ``(B, classes)``.
        gap_head: the head applies to a composite feature map as it is, so it already is the
            GridPG head: global average pooling first (ResNet, ConvNeXt, Swin), or a class token
            that attends to the whole grid (ViT); otherwise GridPG slides the head over windows
            of the single-cell feature size (VGG).
        aliases: ``middle`` and ``final`` to layer names (``input`` is implicit).
        stage_layers: the layers that ``all`` means (every convolutional stage).
        layer_alias: extra names for a layer (``layer2`` for ``layer2.1``).
        cell_size: pixel size of one image as the model expects it.
        num_classes: number of logits.
        mean, std: per-channel input normalisation.
        weights_hash: content hash of the weights (provenance).
        token_layers: blocks whose output is a token sequence ``(B, tokens, C)`` rather than a
            map (ViT encoder blocks); :attr:`tokens_to_map` turns it into ``(B, C, h, w)``.
        tokens_to_map: token sequence to spatial map (drops tokens without a position).
        part_heads: the head can classify one part of the final map on its own (DiPart);
            False for a class-token head, which has no part that belongs to one cell.
    """

    name: str
    module: nn.Module
    blocks: list[tuple[str, nn.Module]]
    head: Callable[[torch.Tensor], torch.Tensor]
    gap_head: bool
    aliases: dict[str, str]
    stage_layers: list[str]
    cell_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_hash: str = ""
    layer_alias: dict[str, str] = field(default_factory=dict)
    token_layers: frozenset[str] = frozenset()
    tokens_to_map: Callable[[torch.Tensor], torch.Tensor] | None = None
    part_heads: bool = True

    @property
    def layers(self) -> list[str]:
        """Every attributable layer, in network order."""
        return [INPUT] + [name for name, _ in self.blocks]

    def canonical_layer(self, layer: str) -> str:
        """Resolve an alias (``middle``, ``layer2``) to the block name; ``input`` stays."""
        if layer == INPUT:
            return INPUT
        layer = self.aliases.get(layer, layer)
        layer = self.layer_alias.get(layer, layer)
        if layer not in self.layers:
            raise UserError(
                f"model {self.name} has no layer {layer!r}; valid: input, middle, final, all, "
                f"or one of {', '.join(self.layers[1:])}"
            )
        return layer

    def layer_index(self, layer: str) -> int:
        """Index of the block whose output is ``layer``; -1 for ``input``."""
        return self.layers.index(self.canonical_layer(layer)) - 1

    def resolve_layers(self, spec: str | list[str]) -> list[str]:
        """``"input,middle,final"`` / ``"all"`` / module paths to user-facing layer names.

        Aliases are kept as given (``middle`` stays ``middle``: it names the artifact), but each
        is checked to exist. ``all`` expands to ``input`` plus :attr:`stage_layers`.
        """
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            names = [INPUT, *self.stage_layers] if item == "all" else [item]
            for name in names:
                self.canonical_layer(name)
                if name not in out:
                    out.append(name)
        if not out:
            raise UserError("no layer given; valid: input, middle, final, all, or a module path")
        return out

    def is_token_layer(self, layer: str) -> bool:
        """Whether ``layer``'s activations are a token sequence (only read through :meth:`spatial`)."""
        return self.canonical_layer(layer) in self.token_layers

    def spatial(self, a: torch.Tensor) -> torch.Tensor:
        """Network-layout activations as a map ``(B, C, h, w)``: maps pass, token sequences are
        reshaped by :attr:`tokens_to_map`, so every method and the scorer see a spatial map."""
        if a.dim() == 4 or self.tokens_to_map is None:
            return a
        return self.tokens_to_map(a)

    def run_blocks(self, x: torch.Tensor, start: int = -1, stop: int | None = None) -> torch.Tensor:
        """Apply blocks ``start+1 .. stop`` (inclusive): from the output of ``start`` to ``stop``."""
        stop = len(self.blocks) - 1 if stop is None else stop
        for _, block in self.blocks[start + 1 : stop + 1]:
            x = block(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Plain classification of single images (B, 3, cell, cell) -> (B, classes)."""
        return self.head(self.run_blocks(x))

    def to(self, device: torch.device | str) -> "ModelAdapter":
        self.module.to(device)
        return self


def _no_inplace(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "inplace"):
            sub.inplace = False


def vgg_adapter(
    model: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int
) -> ModelAdapter:
    """Adapter for torchvision-style VGG: ``features`` (Sequential), ``avgpool``, ``classifier``.

    ``middle`` is the ReLU after conv ``n//2 + 1`` of ``n`` (conv 5 of VGG11, ``features.12``),
    ``final`` the last ReLU (after the last conv, before the last max-pool).
    """
    _no_inplace(model)
    model.eval()
    blocks = [(f"features.{i}", m) for i, m in enumerate(model.features)]
    conv_relus = []
    seen_conv = False
    for layer_name, m in blocks:
        if isinstance(m, nn.Conv2d):
            seen_conv = True
        elif isinstance(m, nn.ReLU) and seen_conv:
            conv_relus.append(layer_name)
            seen_conv = False
    avgpool = getattr(model, "avgpool", nn.Identity())

    def head(features: torch.Tensor) -> torch.Tensor:
        return model.classifier(torch.flatten(avgpool(features), 1))

    return ModelAdapter(
        name=name,
        module=model,
        blocks=blocks,
        head=head,
        gap_head=False,
        aliases={"middle": conv_relus[len(conv_relus) // 2], "final": conv_relus[-1]},
        stage_layers=conv_relus,
        cell_size=cell_size,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
    )


def resnet_adapter(
    model: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int
) -> ModelAdapter:
    """Adapter for torchvision-style ResNet: stem, ``layer1..4`` of blocks, ``avgpool``, ``fc``.

    Blocks are the stem modules and each residual block; ``layerK`` names the output of stage K.
    ``middle`` is ``layer2``, ``final`` is ``layer4``.
    """
    _no_inplace(model)
    model.eval()
    blocks: list[tuple[str, nn.Module]] = []
    for stem in ("conv1", "bn1", "relu", "maxpool"):
        module = getattr(model, stem)
        if not isinstance(module, nn.Identity):
            blocks.append((stem, module))
    layer_alias = {}
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        seq = getattr(model, stage)
        for i, block in enumerate(seq):
            blocks.append((f"{stage}.{i}", block))
        layer_alias[stage] = f"{stage}.{len(seq) - 1}"

    def head(features: torch.Tensor) -> torch.Tensor:
        return model.fc(torch.flatten(model.avgpool(features), 1))

    return ModelAdapter(
        name=name,
        module=model,
        blocks=blocks,
        head=head,
        gap_head=True,
        aliases={"middle": "layer2", "final": "layer4"},
        stage_layers=["layer1", "layer2", "layer3", "layer4"],
        cell_size=cell_size,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        layer_alias=layer_alias,
    )


def staged_blocks(
    features: nn.Sequential, *, prefix: str = "features", wrap: Callable[[int, nn.Module], nn.Module] | None = None
) -> tuple[list[tuple[str, nn.Module]], dict[str, str], list[str]]:
    """Blocks of a ``features`` Sequential laid out as stem, stage, downsample, stage, ...
    (torchvision's ConvNeXt and Swin): each stage (a Sequential) contributes its blocks, the
    stem and downsampling layers one block each.

    Returns the blocks, the aliases of each stage to its last block (``features.1`` ->
    ``features.1.2``) and the stage names in order. ``wrap(position, module)`` may wrap each
    block (``position`` 0 is the stem), e.g. to change its memory layout.
    """
    wrap = wrap or (lambda position, module: module)
    blocks: list[tuple[str, nn.Module]] = []
    layer_alias: dict[str, str] = {}
    stages: list[str] = []
    for index, module in enumerate(features):
        name = f"{prefix}.{index}"
        if index > 0 and index % 2 == 1 and isinstance(module, nn.Sequential):
            for j, block in enumerate(module):
                blocks.append((f"{name}.{j}", wrap(len(blocks), block)))
            layer_alias[name] = f"{name}.{len(module) - 1}"
            stages.append(name)
        else:
            blocks.append((name, wrap(len(blocks), module)))
    return blocks, layer_alias, stages


def staged_adapter(
    model: nn.Module, *, name: str, head: Callable[[torch.Tensor], torch.Tensor], cell_size: int,
    mean, std, num_classes: int, wrap: Callable[[int, nn.Module], nn.Module] | None = None,
) -> ModelAdapter:
    """Adapter of a model whose ``features`` are laid out by :func:`staged_blocks` (ConvNeXt,
    Swin) and whose ``head`` pools the final map: ``middle`` is stage 2, ``final`` the last."""
    blocks, layer_alias, stages = staged_blocks(model.features, wrap=wrap)
    return ModelAdapter(
        name=name,
        module=model,
        blocks=blocks,
        head=head,
        gap_head=True,
        aliases={"middle": stages[min(1, len(stages) - 1)], "final": stages[-1]},
        stage_layers=stages,
        cell_size=cell_size,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        layer_alias=layer_alias,
    )
