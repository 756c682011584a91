"""GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022, Sec. 3; supplement F)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attrcli.settings.base import SETTINGS, GridSetting


def _cell_feature_size(features: torch.Tensor, n: int) -> int:
    return features.shape[-1] // n


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
        return logits.view(batch, count, -1).mean(1, keepdim=True)


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
