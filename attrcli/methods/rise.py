"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018), at any layer.

M random masks: an s×s binary grid (each cell kept with probability p) is upsampled bilinearly
to ``(s+1)·cell`` (cell = ⌈size/s⌉) and cropped at a random shift of less than one cell, as in
the paper. A mask multiplies the layer's activations (at ``input`` the image; at a hidden layer
the mask is drawn at the layer map's size). The saliency of target t is
``Σ_m softmax_t(f(a ⊙ m_m)) · m_m / (M·p)``, with the softmax of the evaluated head. Masks are
drawn over the grid-layout map; in DiFull head t is scored on its own cell's part of each mask,
so mask positions outside the cell still collect weight through the masks they share with it
(supplement B.2).

Masks are seeded by ``--seed`` alone: every grid image sees the same M masks, as in the
reference implementation, so maps do not depend on batching and reruns are identical. Only the
low-resolution grids (M·s² numbers) are kept; full-size masks are made per chunk of at most
``--batch-size`` evaluations, whatever M, unless all M of them fit in 64 MiB (hidden layers,
small grids): then they are made once.

Presets (supplement H.2): M=1000, s=6, p=0.1 for cells of 224 pixels or more; s counts mask
cells across the whole map, so a mask cell covers about a third of a grid cell on 2×2 grids at
any size. Smaller cells (the 32-pixel digits default) use M=250: a 64-pixel grid has 49× fewer
pixels to estimate than a 448-pixel one, and RISE would otherwise be half the study's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import torch
import torch.nn.functional as F

from attrcli.errors import UserError
from attrcli.methods._perturb import cell_offsets, gather, perturbed_scores
from attrcli.methods.base import METHODS, Method, MethodTesting

MADE_BYTES = 64 * 2**20  # all upsampled masks are made once when they take at most this


@dataclass(frozen=True)
class RISEConfig:
    masks: int = 1000  # number of random masks M
    s: int = 6  # mask grid cells across the map
    p: float = 0.1  # probability that a mask cell is kept

    def __post_init__(self) -> None:
        if self.masks < 1 or self.s < 1 or not 0 < self.p <= 1:
            raise UserError(
                f"rise needs masks >= 1, s >= 1 and 0 < p <= 1, got masks={self.masks}, "
                f"s={self.s}, p={self.p}"
            )


class MaskSource:
    """The M masks of one seed, made on demand at one map size."""

    def __init__(self, config: RISEConfig, size: tuple[int, int], seed: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(seed)
        s = config.s
        self.grids = (torch.rand(config.masks, 1, s, s, generator=generator) < config.p).float().to(device)
        shift = torch.rand(config.masks, 2, generator=generator).to(device)
        self.size = size
        self.cell = (ceil(size[0] / s), ceil(size[1] / s))
        self.shift = (shift * torch.tensor(self.cell, device=device)).long()
        self.up = ((s + 1) * self.cell[0], (s + 1) * self.cell[1])
        self.made = None  # all M upsampled masks, when they fit in MADE_BYTES
        if config.masks * self.up[0] * self.up[1] * 4 <= MADE_BYTES:
            self.made = self._upsampled(torch.arange(config.masks, device=device))

    def _upsampled(self, item: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.grids[item], size=self.up, mode="bilinear", align_corners=False)[:, 0]

    def __call__(
        self, item: torch.Tensor, dtype: torch.dtype = torch.float32,
        origin: torch.Tensor | None = None, size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Masks ``(R, h, w)`` of the given indices; ``origin`` ``(R, 2)`` and ``size`` crop each
        to a window of the map (a DiFull cell), default the whole map."""
        h, w = size or self.size
        up = self._upsampled(item) if self.made is None else self.made[item]
        first = self.shift[item] if origin is None else self.shift[item] + origin
        rows = first[:, 0, None] + torch.arange(h, device=up.device)[None]
        cols = first[:, 1, None] + torch.arange(w, device=up.device)[None]
        picked = torch.arange(len(item), device=up.device)[:, None, None]
        return up[picked, rows[:, :, None], cols[:, None, :]].to(dtype)


@METHODS.register("rise")
class RISE(Method):
    name = "rise"
    testing = MethodTesting(tiny="masks=8")
    kind = "model"
    seeded = True
    Config = RISEConfig

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> RISEConfig:
        return RISEConfig() if cell_size >= 224 else RISEConfig(masks=250)

    def attribute(self, ctx) -> torch.Tensor:
        a = ctx.evaluated  # in DiFull only the target cells' rows: all that is perturbed
        size = tuple(ctx.setting.to_map(a[: ctx.units_per_grid]).shape[-2:])
        masks = MaskSource(self.config, size, ctx.seed, ctx.device)
        cell_h, cell_w = a.shape[-2:]
        offsets = cell_offsets(ctx, size) if ctx.setting.disconnected else None

        def build(rows, target, item):
            if target is None:
                m = masks(item, a.dtype)
            else:
                m = masks(item, a.dtype, offsets[target], (cell_h, cell_w))
            return gather(a, rows).mul_(m[:, None])

        with torch.no_grad():
            probs = perturbed_scores(
                ctx, self.config.masks, build, layer_index=ctx.layer_index, softmax=True
            )  # (B, T, M)
            saliency = torch.zeros(ctx.grids, ctx.targets.count, *size, device=ctx.device, dtype=a.dtype)
            step = max(1, ctx.batch_size)
            for start in range(0, self.config.masks, step):
                item = torch.arange(start, min(start + step, self.config.masks), device=ctx.device)
                saliency += torch.einsum("btm,mhw->bthw", probs[:, :, item], masks(item, a.dtype))
            return saliency / (self.config.masks * self.config.p)
