"""LIME (Ribeiro, Singh & Guestrin, KDD 2016) on a regular patch grid, at any layer.

Segmentation: instead of superpixels (LIME's quickshift), each grid cell of the layer's map is
cut into ``patches × patches`` rectangles (at most one per map position), so every segment lies
in one cell and segments are comparable across images; in GridPG and DiPart the features are
the segments of the whole grid, in DiFull those of the explained head's cell (its whole input).

Samples: ``samples`` binary vectors over the segments, each bit 1 with probability 1/2 (LIME's
``randint(0, 2)``), the first one all ones (the unperturbed input, as LIME). A sample multiplies
the layer's map by its segments' bits: switched-off segments are zero at the layer (at
``input`` zero in normalised pixel values), where LIME fills them with each segment's mean
colour. The score of a sample is the softmax probability of the target class from the
evaluated head (LIME explains the classifier's probabilities).

Fit (lime_base with ``feature_selection='auto'``, which keeps every feature of an image):
ridge regression with intercept, ``alpha`` (default 1, scikit-learn's ``Ridge`` default),
samples weighted by LIME's kernel ``sqrt(exp(−d²/width²))`` of the cosine distance ``d`` between
the sample and the all-ones vector (``kernel_width`` 0.25, lime_image's default), solved in
closed form in float64. The map: each position gets its segment's coefficient, signed.

Samples are seeded by ``--seed`` alone and shared by every grid image and every head: one set
of perturbed maps is evaluated once and scored for all heads, exactly as
:mod:`attrcli.methods.rise`. Presets: 1000 samples (lime_image's default) on cells of 224
pixels or more, 250 below; 8 patches per cell side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.errors import UserError
from attrcli.methods._perturb import cell_offsets, gather, perturbed_scores
from attrcli.methods.base import METHODS, Method, MethodTesting


@dataclass(frozen=True)
class LIMEConfig:
    samples: int = 1000  # perturbed samples (lime_image's num_samples)
    patches: int = 8  # segments per cell side (at most the cell's map side)
    kernel_width: float = 0.25  # width of LIME's exponential kernel on the cosine distance
    alpha: float = 1.0  # ridge penalty of the weighted linear fit

    def __post_init__(self) -> None:
        if self.samples < 2 or self.patches < 1 or not self.kernel_width > 0 or not self.alpha > 0:
            raise UserError(
                f"lime needs samples >= 2, patches >= 1, kernel_width > 0 and alpha > 0, got samples="
                f"{self.samples}, patches={self.patches}, kernel_width={self.kernel_width}, alpha={self.alpha}"
            )


def segment_map(size: tuple[int, int], n: int, patches: int) -> tuple[torch.Tensor, int]:
    """Segment index ``(h, w)`` of each position of an n×n grid map, and the patches per cell side
    actually used (at most the cell's map side); segments are numbered row-major over the grid."""
    h, w = size
    p = max(1, min(patches, h // n, w // n))
    bands = n * p
    rows = torch.arange(h) * bands // h
    cols = torch.arange(w) * bands // w
    return rows[:, None] * bands + cols[None, :], p


def kernel_weights(z: torch.Tensor, width: float) -> torch.Tensor:
    """LIME's kernel ``(..., M)`` of samples ``z`` ``(..., M, S)``: sqrt(exp(−d²/width²)) with ``d``
    the cosine distance to the all-ones vector (1 for an all-zero sample, as scikit-learn)."""
    distance = 1 - torch.sqrt(z.sum(-1) / z.shape[-1])
    return torch.sqrt(torch.exp(-(distance**2) / width**2))


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Coefficients ``(..., S)`` of the ridge fit with intercept of ``y`` ``(..., M)`` on ``z``
    ``(..., M, S)`` with sample ``weights`` ``(..., M)``: argmin Σ w (y − zβ − b)² + α‖β‖²
    (scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``)."""
    w = weights / weights.sum(-1, keepdim=True)
    zc = z - (w[..., None] * z).sum(-2, keepdim=True)
    yc = y - (w * y).sum(-1, keepdim=True)
    gram = zc.transpose(-1, -2) @ (weights[..., None] * zc)
    gram = gram + alpha * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    rhs = zc.transpose(-1, -2) @ (weights * yc)[..., None]
    return torch.linalg.solve(gram, rhs)[..., 0]


@METHODS.register("lime")
class LIME(Method):
    name = "lime"
    kind = "model"
    seeded = True
    testing = MethodTesting(tiny="samples=32,patches=4", difull_exact=True)
    Config = LIMEConfig

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> LIMEConfig:
        return LIMEConfig() if cell_size >= 224 else LIMEConfig(samples=250)

    def attribute(self, ctx) -> torch.Tensor:
        config, setting = self.config, ctx.setting
        a = ctx.evaluated  # in DiFull only the target cells' rows: all that is perturbed
        size = tuple(setting.to_map(a[: ctx.units_per_grid]).shape[-2:])
        segments, p = segment_map(size, setting.n, config.patches)
        segments = segments.to(ctx.device)
        count = int(segments.max()) + 1
        generator = torch.Generator().manual_seed(ctx.seed)
        z = torch.randint(0, 2, (config.samples, count), generator=generator).to(ctx.device, a.dtype)
        z[0] = 1  # the first sample is the unperturbed input
        if setting.disconnected:
            offsets = cell_offsets(ctx, size)  # (T, 2)
            cell_h, cell_w = a.shape[-2:]
            window = (offsets[:, 0, None, None] + torch.arange(cell_h, device=ctx.device)[None, :, None],
                      offsets[:, 1, None, None] + torch.arange(cell_w, device=ctx.device)[None, None, :])
            own = segments[window]  # (T, h, w): the segments of each target's cell

        def build(rows, target, item):
            masks = z[item][:, segments] if target is None else z[item[:, None, None], own[target]]
            return gather(a, rows).mul_(masks[:, None])

        with torch.no_grad():
            probs = perturbed_scores(ctx, config.samples, build, layer_index=ctx.layer_index, softmax=True)
            if not setting.disconnected:  # every head sees every segment
                weights = kernel_weights(z.double(), config.kernel_width)
                beta = weighted_ridge(z.double(), probs.double(), weights, config.alpha)  # (B, T, S)
                return beta.to(a.dtype)[..., segments]
            # DiFull: head t sees its own cell's p² segments alone
            first = own.flatten(1).amin(1)  # (T,) the first segment of each cell (row-major)
            bands = setting.n * p
            local = torch.arange(p, device=ctx.device)
            columns = first[:, None] + (local[:, None] * bands + local[None, :]).reshape(-1)[None]  # (T, p²)
            zt = z.double()[:, columns].permute(1, 0, 2)  # (T, M, p²)
            weights = kernel_weights(zt, config.kernel_width)  # (T, M)
            beta = weighted_ridge(zt[None], probs.double(), weights[None], config.alpha)  # (B, T, p²)
            index = (own - first[:, None, None]) // bands * p + (own - first[:, None, None]) % bands  # (T, h, w)
            cells = torch.gather(beta, 2, index.flatten(1)[None].expand(ctx.grids, -1, -1))
            return ctx.cells_to_map(cells.view(ctx.grids, ctx.targets.count, *own.shape[-2:]).to(a.dtype))
