"""GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022, Sec. 3; supplement F), and
GridPG in its original form on a grid rescaled to one cell (``gridpg-rescaled``)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.settings.base import SETTINGS, GridSetting, final_feature_size, layer_feature_size


def _cell_feature_size(features: torch.Tensor, n: int) -> int:
    return features.shape[-1] // n


class WindowMean(nn.AdaptiveAvgPool1d):
    """Mean of the window logits ``(B, windows, classes)`` -> ``(B, 1, classes)``: an average
    pooling module, so methods that instrument modules see it (LRP's rule for average pooling
    passes relevance to each window in proportion to its logit)."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.transpose(1, 2)).transpose(1, 2)


@SETTINGS.register("gridpg")
class GridPG(GridSetting):
    """Grid Pointing Game: one head slid over the composite feature map.

    The whole grid goes through the convolutional part. For a VGG-like head the classifier is
    applied to every window of the single-cell feature size at stride 1 and the window logits
    are averaged, which equals turning the fully connected layers into convolutions (first
    layer: kernel of the single-cell feature size; the others 1×1). A ResNet-like head starts
    with global average pooling and is applied to the composite map directly. Every cell is a
    target of the one head.
    """

    name = "gridpg"
    variant = "distinct"

    def __init__(self, model: ModelAdapter, n: int) -> None:
        super().__init__(model, n)
        self.window_mean = WindowMean()

    def extra_modules(self) -> list[nn.Module]:
        return [self.window_mean]

    @property
    def num_heads(self) -> int:
        return 1

    def head_of_cell(self, cell: int) -> int:
        return 0

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        if self.model.gap_head:
            return self.model.head(features)[:, None]
        batch, channels, size, _ = features.shape
        d = _cell_feature_size(features, self.n)
        windows = F.unfold(features, kernel_size=d)  # (B, C*d*d, W)
        count = windows.shape[-1]
        windows = windows.transpose(1, 2).reshape(batch * count, channels, d, d)
        logits = self.model.head(windows)
        return self.window_mean(logits.view(batch, count, -1))


@SETTINGS.register("difull")
class DiFull(GridSetting):
    """Disconnected-full: each cell runs through the model alone; head i sees cell i only.

    Cells are stacked along the batch dimension (supplement F), so the gradient of head i with
    respect to any other cell is exactly zero and maps at any layer are the per-cell maps
    stitched together.
    """

    name = "difull"
    variant = "corners"
    disconnected = True

    @property
    def num_heads(self) -> int:
        return self.n * self.n

    def default_cells(self) -> list[int]:
        return [0, self.n * self.n - 1]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        n = self.n
        cells = x.reshape(batch, channels, n, height // n, n, width // n)
        return cells.permute(0, 2, 4, 1, 3, 5).reshape(batch * n * n, channels, height // n, width // n)

    def to_map(self, a: torch.Tensor) -> torch.Tensor:
        n = self.n
        a = self.model.spatial(a)
        cells, channels, h, w = a.shape
        grid = a.reshape(cells // (n * n), n, n, channels, h, w)
        return grid.permute(0, 3, 1, 4, 2, 5).reshape(cells // (n * n), channels, n * h, n * w)

    def from_map(self, m: torch.Tensor) -> torch.Tensor:
        return self.split(m)

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.model.head(features)
        return logits.view(-1, self.n * self.n, logits.shape[-1])


@SETTINGS.register("dipart")
class DiPart(GridSetting):
    """Disconnected-partial: the whole grid goes through the convolutional part; the final
    feature map is split into n² parts and head i classifies part i. Receptive fields overlap
    near cell borders, so the heads are only partly disconnected.
    """

    name = "dipart"
    variant = "corners"
    needs_part_heads = True

    def __init__(self, model: ModelAdapter, n: int) -> None:
        if not model.part_heads:
            valid = [name for name in SETTINGS.names() if not getattr(SETTINGS.get(name), "needs_part_heads", False)]
            raise UserError(
                f"setting dipart is not defined for {model.name}: its head reads a class token that "
                "attends to every cell at every block, so no part of the final map belongs to one "
                f"cell (docs/architectures.md); valid settings for it: {', '.join(valid)}"
            )
        super().__init__(model, n)

    @property
    def num_heads(self) -> int:
        return self.n * self.n

    def default_cells(self) -> list[int]:
        return [0, self.n * self.n - 1]

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, size, _ = features.shape
        n = self.n
        d = _cell_feature_size(features, n)
        parts = features.reshape(batch, channels, n, d, n, d).permute(0, 2, 4, 1, 3, 5)
        logits = self.model.head(parts.reshape(batch * n * n, channels, d, d))
        return logits.view(batch, n * n, -1)


class Resized(nn.Module):
    """Resizes images to ``size`` × ``size`` pixels (bilinear, antialiased, as torchvision's
    ``Resize``), then runs ``block``; images already at that size pass unchanged."""

    def __init__(self, block: nn.Module, size: int) -> None:
        super().__init__()
        self.block = block
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.block(x)


class _Rescaled(nn.Module):
    """Holds the model, so that the rescaled adapter is a module of its own (shape caches are
    kept per module)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


@SETTINGS.register("gridpg-rescaled")
class GridPGRescaled(GridPG):
    """GridPG in its original form: the grid image is rescaled to one cell's size and the plain
    model classifies it (the form the B-cos v2 localisation analysis uses for ViTs). One head;
    every cell is a target.

    The resize (bilinear, antialiased) is part of the first block, so attributions at ``input``
    are with respect to the full-resolution grid; hidden layers have the single-cell map size,
    covering the whole grid (each cell gets 1/n of it). Defined for every model; ``gridpg`` is
    the default for ViTs too (position embeddings interpolated to the grid's patch map, cells at
    their native resolution; docs/architectures.md).
    """

    name = "gridpg-rescaled"

    def __init__(self, model: ModelAdapter, n: int) -> None:
        super().__init__(model, n)
        self.source = model
        (first, block), *rest = model.blocks
        self.model = dataclasses.replace(
            model, module=_Rescaled(model.module), blocks=[(first, Resized(block, model.cell_size)), *rest]
        )

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)[:, None]

    def map_size(self, layer_index: int) -> tuple[int, int]:
        """The grid image at ``input``; one cell's map at hidden layers (the grid is rescaled)."""
        if layer_index < 0:
            return super().map_size(layer_index)
        return layer_feature_size(self.source, self.source.cell_size, layer_index)

    def check_geometry(self) -> None:
        """Only one cell's feature map must be non-empty: the grid is rescaled to a cell."""
        cell = self.source.cell_size
        if min(final_feature_size(self.source, cell)) < 1:
            raise UserError(f"model {self.source.name} leaves no feature map of a {cell}-pixel cell")
