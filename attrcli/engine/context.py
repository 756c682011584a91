"""What a method sees of one batch: the setting, the grids, the targets and the layer.

Terms used throughout the engine:

- *grid layout*: ``(B, C, h, w)``, one map per grid image (DiFull cells stitched together).
- *network layout*: what the blocks of the model see; ``(B·u, C, h, w)`` with ``u = n²`` cells
  per grid image in DiFull and ``u = 1`` otherwise.
- a *unit* is the network-layout rows of one grid image (``u`` rows), the thing a forward pass
  is batched over; ``--batch-size`` counts units per forward.
- *explained units*: in a connected setting each (grid image, target) pair is explained by its
  own backward (heads share every activation, so one forward per grid image serves all its
  targets: :meth:`AttributionContext.target_gradients`); in DiFull one backward explains all
  targets at once, since the gradient of head i with respect to another cell is exactly zero
  (supplement F).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from attrcli.engine.gradients import (
    other_rows,
    own_class_gradients,
    scatter_rows,
    select_cells,
    target_gradients,
    target_logits,
)
from attrcli.settings.base import GridSetting, Targets

__all__ = ["AttributionContext", "target_logits"]


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
        """Activations at the layer in network layout, every row (the prefix runs once per batch)."""
        if self._activations is not None:
            return self._activations
        rows = self.setting.target_rows(self.targets, self.grids)
        if rows is None or "evaluated" not in self.__dict__:
            with torch.no_grad():
                return self.setting.prefix(self.x, self.layer_index)
        # the target rows are already computed: run the prefix on the other rows only
        net = self.setting.split(self.x)
        others = other_rows(rows, len(net))
        full = self.evaluated.clone()
        with torch.no_grad():
            full[others] = self.setting.model.run_blocks(net[others], -1, self.layer_index)
        return full

    @cached_property
    def evaluated(self) -> torch.Tensor:
        """The layer's activations as perturbations read them, network layout: in DiFull only the
        rows of the target cells are computed (the others are zero: no head that is evaluated
        sees them); elsewhere, and once :attr:`activations` exists, the same tensor."""
        rows = self.setting.target_rows(self.targets, self.grids)
        if rows is None or self._activations is not None or "activations" in self.__dict__ or self.layer_index < 0:
            return self.activations
        net = self.setting.split(self.x)
        with torch.no_grad():
            part = self.setting.model.run_blocks(net[rows], -1, self.layer_index)
        return scatter_rows(part, rows, len(net))

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

    def target_gradients(
        self, a: torch.Tensor, grid: torch.Tensor, *, retain_graph: bool = False,
        scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of network-layout rows ``a`` (units of grid images ``grid``) and the gradient of
        every target's logit w.r.t. ``a``, in grid layout: ``(U, T, C, h, w)``, or ``(U, 1, C, h,
        w)`` in DiFull where all targets share one backward (:meth:`select_cells` splits it).

        One forward serves every target of a unit, however many heads are evaluated. ``scale``
        ``(U,)`` multiplies each unit's gradients (e.g. by quadrature weights).
        """
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            logits = self.suffix_logits(a)
            (grad,) = target_gradients(
                self.setting, logits, self.targets, grid, [a], retain_graph=retain_graph, scale=scale
            )
        return logits.detach(), grad

    def cell_gradients(
        self, a: torch.Tensor, grid: torch.Tensor, target: torch.Tensor, *, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DiFull: the gradient of each cell row's own head logit w.r.t. the row, in one backward.

        Row ``i`` of ``a`` (network layout at this layer) is the cell of target ``target[i]`` in
        grid image ``grid[i]``; ``scale`` ``(R,)`` multiplies each row's gradient.
        """
        model = self.setting.model
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            logits = model.head(model.run_blocks(a, self.layer_index))  # (R, classes)
            (grad,) = own_class_gradients(logits, self.targets.classes[grid, target], [a], scale=scale)
        return grad

    def cells_to_map(self, maps: torch.Tensor) -> torch.Tensor:
        """DiFull maps ``(B, T, h, w)`` of each target's own cell to grid layout ``(B, T, H, W)``,
        zero outside the target's cell."""
        B, T, h, w = maps.shape
        n2 = self.setting.n**2
        full = maps.new_zeros(B, T, n2, h, w)
        full[:, torch.arange(T, device=maps.device), self.targets.cells] = maps
        return self.setting.to_map(full.transpose(1, 2).reshape(B * n2, T, h, w))

    def select_cells(self, maps: torch.Tensor) -> torch.Tensor:
        """DiFull ``(U, 1, ...)`` grid-layout tensors to ``(U, T, ...)``, each target keeping its
        own cell; connected settings' tensors pass unchanged."""
        return select_cells(self.setting, self.targets, maps)

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
