"""What every grid setting shares.

A setting runs one model on an n×n grid image in one of three ways. It is described by three
small functions, and everything else (ML-Att prefixes and suffixes, target selection) follows:

- :meth:`GridSetting.split` maps a grid to the network's input layout (DiFull stacks the cells
  along the batch dimension; the others pass the grid through whole);
- :meth:`GridSetting.to_map` maps a tensor in that layout back to grid layout, so that maps
  of DiFull are the per-cell maps stitched together;
- :meth:`GridSetting.heads` maps the final feature map to logits ``(B, heads, classes)``.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call

from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.registry import Registry


@dataclass(frozen=True)
class Targets:
    """What is explained for each grid image of a batch.

    Target slot ``t`` explains head ``heads[t]`` for class ``classes[b, t]``; its target cell
    (the cell whose image the head should use) is ``cells[t]``.
    """

    heads: torch.Tensor  # (T,) long
    cells: torch.Tensor  # (T,) long
    classes: torch.Tensor  # (B, T) long

    @property
    def count(self) -> int:
        return int(self.cells.numel())

    def to(self, device: torch.device | str) -> "Targets":
        return Targets(self.heads.to(device), self.cells.to(device), self.classes.to(device))


class GridSetting(ABC):
    """One way to run ``model`` on n×n grids of ``model.cell_size`` pixel cells."""

    name: ClassVar[str]
    variant: ClassVar[str]  # the grid variant this setting is evaluated on
    disconnected: ClassVar[bool] = False  # head i depends on cell i alone

    def __init__(self, model: ModelAdapter, n: int) -> None:
        if n < 1:
            raise UserError(f"grid size n must be at least 1, got {n}")
        self.model = model
        self.n = n

    # --- layouts -----------------------------------------------------------------------
    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Grid images ``(B, 3, nc, nc)`` to the network's input layout."""
        return x

    def to_map(self, a: torch.Tensor) -> torch.Tensor:
        """A tensor in network layout to grid layout ``(B, C, h, w)`` (token sequences become
        maps: :meth:`~attrcli.models.adapter.ModelAdapter.spatial`)."""
        return self.model.spatial(a)

    def from_map(self, m: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_map`."""
        return m

    def extra_modules(self) -> list[torch.nn.Module]:
        """Modules the setting adds after the model's head (GridPG's window mean), for methods
        that instrument every module on the way to the logits (LRP)."""
        return []

    @abstractmethod
    def heads(self, features: torch.Tensor) -> torch.Tensor:
        """Final feature map (network layout) to logits ``(B, num_heads, classes)``."""

    @property
    @abstractmethod
    def num_heads(self) -> int: ...

    # --- ML-Att ------------------------------------------------------------------------
    def prefix(self, x: torch.Tensor, layer_index: int) -> torch.Tensor:
        """Activations at the layer (network layout): the part of the model before it."""
        return self.model.run_blocks(self.split(x), -1, layer_index)

    def suffix(self, a: torch.Tensor, layer_index: int) -> torch.Tensor:
        """Logits ``(B, heads, classes)`` from activations held fixed at the layer."""
        return self.heads(self.model.run_blocks(a, layer_index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.split(x), -1)

    # --- geometry ----------------------------------------------------------------------
    def check_geometry(self) -> None:
        """Raise a UserError unless the grid's final feature map is exactly n × the feature map
        of one cell, so that it splits into one part per cell (DiPart) and the head's window has
        the single-cell size (GridPG); DiFull runs cells alone and only needs a non-empty map.
        Shapes are traced on the meta device: nothing is computed.
        """
        cell = self.model.cell_size
        one = final_feature_size(self.model, cell)
        if min(one) < 1:
            raise UserError(f"model {self.model.name} leaves no feature map of a {cell}-pixel cell")
        if self.disconnected:
            return
        whole = final_feature_size(self.model, self.n * cell)
        if whole != (self.n * one[0], self.n * one[1]):
            raise UserError(
                f"model {self.model.name} maps a {cell}-pixel cell to a {one[0]}x{one[1]} feature "
                f"map but the {self.n * cell}-pixel grid to {whole[0]}x{whole[1]}, not "
                f"{self.n * one[0]}x{self.n * one[1]}: setting {self.name} needs a cell size "
                "whose feature map tiles the grid's (e.g. a multiple of the model's total stride)"
            )

    def map_size(self, layer_index: int) -> tuple[int, int]:
        """Height and width of the grid-layout map at block ``layer_index`` (-1: the grid
        image), traced without computing (:func:`layer_feature_size`)."""
        h, w = layer_feature_size(self.model, self.model.cell_size, layer_index)
        return h * self.n, w * self.n

    # --- targets -----------------------------------------------------------------------
    def default_cells(self) -> list[int]:
        """Cells evaluated by default: all for GridPG, the two corners otherwise."""
        return list(range(self.n * self.n))

    def resolve_cells(self, spec: str | list[int] | None) -> list[int]:
        """``None``/``"default"``, ``"all"`` or a list of cell indices."""
        cells_total = self.n * self.n
        if spec is None or spec == "default":
            return self.default_cells()
        if spec == "all":
            return list(range(cells_total))
        try:
            items = [int(c) for c in spec.split(",")] if isinstance(spec, str) else [int(c) for c in spec]
        except (TypeError, ValueError):
            items = []
        bad = [c for c in items if not 0 <= c < cells_total]
        if bad or not items or len(set(items)) != len(items):
            raise UserError(
                f"invalid --heads {spec!r}: give distinct cell indices in 0..{cells_total - 1}, "
                "'all' or 'default'"
            )
        return items

    def head_of_cell(self, cell: int) -> int:
        return cell

    def targets(self, labels: torch.Tensor, cells: list[int]) -> Targets:
        """Targets for grid labels ``(B, n²)`` and the evaluated cells."""
        cell_t = torch.tensor(cells, dtype=torch.long, device=labels.device)
        heads = torch.tensor([self.head_of_cell(c) for c in cells], dtype=torch.long, device=labels.device)
        return Targets(heads=heads, cells=cell_t, classes=labels[:, cell_t])

    def target_rows(self, targets: Targets, grids: int) -> torch.Tensor | None:
        """Network-layout rows that the targets of ``grids`` grid images depend on, or ``None``
        when every row matters. Disconnected settings: the target cells' rows, grid-major
        (row ``r`` shows target ``r % T`` of grid image ``r // T``)."""
        if not self.disconnected:
            return None
        first = torch.arange(grids, device=targets.cells.device)[:, None] * self.n**2
        return (first + targets.cells[None]).reshape(-1)

    def cell_mask(self, cells: torch.Tensor, size: tuple[int, int], device=None) -> torch.Tensor:
        """Boolean masks ``(T, h, w)``: the region of each target cell in a map of ``size``."""
        h, w = size
        rows = torch.arange(h, device=device) * self.n // h
        cols = torch.arange(w, device=device) * self.n // w
        cell_of = rows[:, None] * self.n + cols[None, :]
        return cell_of[None] == cells.to(device)[:, None, None]


_FEATURE_SIZES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], tuple[int, int]]]" = weakref.WeakKeyDictionary()


def final_feature_size(model: ModelAdapter, size: int) -> tuple[int, int]:
    """Height and width of the final feature map for one ``size``-pixel image.

    Traced on the meta device with meta copies of each block's parameters, so it costs nothing
    whatever the model; a block that cannot be traced that way runs for real on a zero image.
    Remembered per model module and size (shapes do not depend on the weights).
    """
    return layer_feature_size(model, size, len(model.blocks) - 1)


def layer_feature_size(model: ModelAdapter, size: int, layer_index: int) -> tuple[int, int]:
    """Height and width of the map at block ``layer_index`` (-1: the image) for one
    ``size``-pixel image; traced and remembered as :func:`final_feature_size`."""
    if layer_index < 0:
        return size, size
    known = _FEATURE_SIZES.setdefault(model.module, {})
    if (size, layer_index) not in known:
        known[(size, layer_index)] = _trace_feature_size(model, size, layer_index)
    return known[(size, layer_index)]


def _trace_feature_size(model: ModelAdapter, size: int, stop: int) -> tuple[int, int]:
    dtype = next(model.module.parameters(), torch.empty(0)).dtype
    try:
        x = torch.empty(1, 3, size, size, device="meta", dtype=dtype)
        for _, block in model.blocks[: stop + 1]:
            state = {
                name: torch.empty_like(tensor, device="meta")
                for name, tensor in (*block.named_parameters(), *block.named_buffers())
            }
            x = functional_call(block, state, (x,))
    except (RuntimeError, NotImplementedError, TypeError):
        param = next(model.module.parameters(), torch.empty(0))
        try:
            with torch.no_grad():
                x = model.run_blocks(torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device), stop=stop)
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"model {model.name} cannot run on {size}-pixel images: {reason}") from None
    x = model.spatial(x)
    return int(x.shape[-2]), int(x.shape[-1])


SETTINGS: Registry[type[GridSetting]] = Registry("setting")


def create_setting(name: str, model: ModelAdapter, n: int) -> GridSetting:
    """Instantiate a registered setting by name."""
    return SETTINGS.get(name)(model, n)
