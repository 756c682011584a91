"""Chance baselines that ignore the model: ``random`` and ``centre``.

They give the measured chance level of every score and figure beside the 1/n² line, and the
reference a model-randomisation sanity check (Adebayo et al., NeurIPS 2018) expects of a method
that does not depend on the model: maps that do not change when the weights do.

- ``random``: uniform noise in [0, 1) at the layer's grid-layout map size, one independent map
  per grid image and target cell. The generator of a grid image is seeded by ``--seed`` and a
  hash of the image's bytes, so reruns are identical, a grid image's maps do not depend on the
  other images of its chunk, and different images draw different noise.
- ``centre``: the classic centre-bias baseline of saliency evaluation (Judd et al., ICCV 2009):
  an isotropic Gaussian centred on the grid, ``exp(-d² / 2σ²)`` with ``d`` the distance of a
  pixel centre from the grid's centre and ``σ = sigma`` times the map's side (default 0.25),
  the same map for every target. On grids of even ``n`` its peak ties across the four central
  cells (a pointing-game miss for every target); on odd ``n`` it lies in the central cell.

Both run no model pass (kind ``"model"``: they read only the batch's shape from the context).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from attrcli.errors import UserError
from attrcli.methods.base import METHODS, Method


def _image_seed(seed: int, image: torch.Tensor) -> int:
    """A 63-bit seed from ``seed`` and the bytes of one grid image."""
    raw = image.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=False) + raw).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@METHODS.register("random")
class RandomBaseline(Method):
    """Seeded uniform noise, independent per grid image and target cell."""

    name = "random"
    kind = "model"
    seeded = True

    def attribute(self, ctx) -> torch.Tensor:
        h, w = ctx.setting.map_size(ctx.layer_index)
        cells = ctx.setting.n**2
        index = ctx.targets.cells.to("cpu")
        maps = []
        for image in ctx.x:
            generator = torch.Generator().manual_seed(_image_seed(int(ctx.seed), image))
            noise = torch.rand(cells, h, w, generator=generator, dtype=torch.float64)
            maps.append(noise[index])
        return torch.stack(maps).to(device=ctx.device, dtype=ctx.x.dtype)


@dataclass(frozen=True)
class CentreConfig:
    sigma: float = 0.25  # standard deviation of the Gaussian, as a fraction of the map's side

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise UserError(f"centre needs sigma > 0, got sigma={self.sigma}")


def centre_map(h: int, w: int, sigma: float, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(h, w)`` Gaussian centred on the map: pixel centres at distance ``d`` from the centre
    get ``exp(-d² / 2σ²)``, ``σ = sigma · max(h, w)``."""
    s = sigma * max(h, w)
    rows = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2
    return torch.exp(-d2 / (2 * s * s)).to(dtype)


@METHODS.register("centre")
class CentreBaseline(Method):
    """A Gaussian centred on the grid, the same for every target (centre bias)."""

    name = "centre"
    kind = "model"
    Config = CentreConfig

    def attribute(self, ctx) -> torch.Tensor:
        h, w = ctx.setting.map_size(ctx.layer_index)
        single = centre_map(h, w, self.config.sigma, dtype=ctx.x.dtype).to(ctx.device)
        return single.expand(ctx.grids, ctx.targets.count, h, w).clone()
