"""S-IntGrad and S-IxG: Gaussian smoothing of IntGrad / IxG maps (paper Sec. 5; supplement D, G).

Each map is convolved with a K×K Gaussian kernel, σ = K/4, normalised to sum 1, with zero
padding and the map's own size as output. K = 1 is the identity. Away from the borders (more
than K//2 positions in) the map's sum is preserved; near them the mass that falls off the map
is lost, as with zero padding in the paper. These are derived artifacts: the engine computes the
base maps once, caches them, and derives one artifact per K without running the model, e.g.
``--method s-intgrad:k=9,s-intgrad:k=17``.

K counts positions of the map, i.e. pixels for the ``input`` layer the study smooths. Presets
(the paper's K=129 of Fig. 26 for 448-pixel grids, and a kernel covering the same fraction of a
cell otherwise); :func:`paper_kernels` gives the whole sweep:

===========  =========  ==============================
cell size    default K  sweep
===========  =========  ==============================
224 px       129        9, 17, 33, 65, 129, 257
32 px        19         3, 5, 9, 19, 37
===========  =========  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.errors import UserError
from attrcli.methods.base import METHODS, Method, MethodTesting

PAPER_CELL = 224
PAPER_KERNELS = (9, 17, 33, 65, 129, 257)
PAPER_DEFAULT = 129


def _odd(value: float, smallest: int = 1) -> int:
    return max(smallest, 2 * round((value - 1) / 2) + 1)


def paper_kernels(cell_size: int) -> list[int]:
    """The paper's K sweep scaled to ``cell_size`` (odd, at least 3, without repeats)."""
    if cell_size >= PAPER_CELL:
        return list(PAPER_KERNELS)
    scaled = (_odd(k * cell_size / PAPER_CELL, 3) for k in PAPER_KERNELS)
    return sorted(set(scaled))


@dataclass(frozen=True)
class SmoothingConfig:
    k: int = PAPER_DEFAULT  # kernel size in map positions (odd); sigma = k / 4

    def __post_init__(self) -> None:
        if self.k < 1 or self.k % 2 == 0:
            raise UserError(f"smoothing kernel size k must be an odd number >= 1, got {self.k}")


def gaussian_kernel(k: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1-D Gaussian of size ``k`` with σ = k/4, summing to 1."""
    x = torch.arange(k, dtype=dtype) - (k - 1) / 2
    g = torch.exp(-(x**2) / (2 * (k / 4) ** 2))
    return g / g.sum()


def smoothing_matrix(size: int, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(size, size)`` matrix ``S`` with ``S @ v`` the zero-padded 'same' 1-D smoothing of ``v``."""
    g = gaussian_kernel(k)
    offset = torch.arange(size)[None, :] - torch.arange(size)[:, None] + k // 2
    inside = (offset >= 0) & (offset < k)
    return torch.where(inside, g[offset.clamp(0, k - 1)], 0).to(dtype)


def gaussian_smooth(maps: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """Smooth maps ``(..., h, w)`` with the separable K×K Gaussian (zero padding, same size).

    Computed as ``S_h @ map @ S_wᵀ`` with banded matrices, chunk by chunk over the leading maps.
    """
    if k == 1:
        return maps.clone()
    h, w = maps.shape[-2:]
    rows = smoothing_matrix(h, k, maps.dtype).to(maps.device)
    cols = smoothing_matrix(w, k, maps.dtype).to(maps.device).T
    flat = maps.reshape(-1, h, w)
    out = torch.empty_like(flat)
    for start in range(0, len(flat), chunk):
        out[start : start + chunk] = rows @ flat[start : start + chunk] @ cols
    return out.view(maps.shape)


class GaussianSmoothing(Method):
    """Gaussian smoothing of the cached maps of :attr:`base`."""

    kind = "derived"
    Config = SmoothingConfig
    keyed = ("k",)  # the keys of a sweep name their K
    testing = MethodTesting(tiny="k=3")

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> SmoothingConfig:
        if cell_size >= PAPER_CELL:
            return SmoothingConfig()
        return SmoothingConfig(k=_odd(PAPER_DEFAULT * cell_size / PAPER_CELL))

    def derive(self, maps: torch.Tensor) -> torch.Tensor:
        return gaussian_smooth(maps, self.config.k)


@METHODS.register("s-intgrad")
class SmoothedIntGrad(GaussianSmoothing):
    name = "s-intgrad"
    base = "intgrad"


@METHODS.register("s-ixg")
class SmoothedIxG(GaussianSmoothing):
    name = "s-ixg"
    base = "ixg"
