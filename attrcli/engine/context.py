"""What a method sees of one batch: the setting, the grids, the targets and the layer.

Terms used throughout the engine:

- *grid layout*: ``(B, C, h, w)``, one map per grid image (DiFull cells stitched together).
- *network layout*: what the blocks of the model see; ``(B·u, C, h, w)`` with ``u = n²`` cells
  per grid image in DiFull and ``u = 1`` otherwise.
- a *unit* is the network-layout rows of one grid image (``u`` rows), the thing a forward pass
  is batched over; ``--batch-size`` counts units per forward.
- *explained units*: in a connected setting each (grid image, target) pair needs its own unit,
  because heads share every activation; in DiFull one unit explains all targets at once, since
  the gradient of head i with respect to another cell is exactly zero (supplement F).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from attrcli.settings.base import GridSetting, Targets


def target_logits(
    logits: torch.Tensor, targets: Targets, grid: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """Logit of each explained unit ``(U,)`` from ``(U, heads, classes)``.

    ``target=None`` (DiFull) sums the logits of every target of the unit's grid image.
    """
    rows = torch.arange(len(grid), device=logits.device)
    classes = targets.classes[grid]  # (U, T)
    if target is None:
        return logits[rows[:, None], targets.heads[None], classes].sum(1)
    return logits[rows, targets.heads[target], classes[rows, target]]


@dataclass
class AttributionContext:
    """One batch of grid images at one layer."""

    setting: GridSetting
    x: torch.Tensor  # (B, 3, H, W) grid images on the device
    targets: Targets
    layer: str  # the layer as the user named it
    layer_index: int  # block index; -1 for the input
    batch_size: int  # units per forward pass
    seed: int = 0
    _activations: torch.Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def grids(self) -> int:
        return self.x.shape[0]

    @property
    def units_per_grid(self) -> int:
        """Network-layout rows per grid image."""
        return self.setting.n**2 if self.setting.disconnected else 1

    @cached_property
    def activations(self) -> torch.Tensor:
        """Activations at the layer in network layout (the prefix runs once per batch)."""
        if self._activations is not None:
            return self._activations
        with torch.no_grad():
            return self.setting.prefix(self.x, self.layer_index)

    def explained_units(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grid and target index of each unit to explain; target ``None`` in DiFull (all)."""
        B, T = self.grids, self.targets.count
        if self.setting.disconnected:
            return torch.arange(B, device=self.device), None
        grid = torch.arange(B, device=self.device).repeat_interleave(T)
        target = torch.arange(T, device=self.device).repeat(B)
        return grid, target

    def unit_rows(self, units: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """Network-layout rows of activations ``a`` (default: the layer's) for grid ``units``."""
        a = self.activations if a is None else a
        u = self.units_per_grid
        view = a.view(self.grids, u, *a.shape[1:])
        return view[units].reshape(len(units) * u, *a.shape[1:])

    def objective(
        self, logits: torch.Tensor, grid: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        """Target logit of each unit ``(U,)``; DiFull units sum the logits of all targets."""
        return target_logits(logits, self.targets, grid, target)

    def suffix_logits(self, a: torch.Tensor) -> torch.Tensor:
        """Logits ``(U, heads, classes)`` of network-layout rows at this layer."""
        return self.setting.suffix(a, self.layer_index)

    def gradients(
        self, a: torch.Tensor, grid: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target logits ``(U,)`` and their gradients w.r.t. network-layout rows ``a``."""
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            values = self.objective(self.suffix_logits(a), grid, target)
            (grad,) = torch.autograd.grad(values.sum(), a)
        return values.detach(), grad

    def per_target(self, maps: torch.Tensor, grid: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Per-unit grid-layout tensors ``(U, C, h, w)`` to ``(B, T, C, h, w)``.

        In DiFull a unit holds all targets: target t keeps only its own cell, which is exact
        because head t has zero gradient outside cell t.
        """
        B, T = self.grids, self.targets.count
        if target is None:
            mask = self.setting.cell_mask(self.targets.cells, maps.shape[-2:], maps.device)
            return maps[:, None] * mask[None, :, None].to(maps.dtype)
        return maps.view(B, T, *maps.shape[1:])
