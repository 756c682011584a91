"""EigenCAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020).

The map is the projection of the layer's activations onto their first principal direction:
with the activations of one map as a matrix ``A`` (positions × channels) and ``A = U Σ Vᵀ``,
the map is ``A v₁`` at the layer's resolution (Eq. 2–3 of the paper). No gradient, no class:
every target of a map gets the same map. The paper decomposes ``A`` as it is;
``eigencam:center=true`` subtracts the mean over positions first (pytorch-grad-cam's
``get_2d_projection``). Then the CAM papers' ReLU (``eigencam:relu=false`` keeps the signed
projection).

Sign rule: a singular vector is defined up to its sign, so ``v₁`` is chosen such that the
projection correlates non-negatively with the channel sum of the activations,
``Σ_p (A v₁)_p · Σ_k A_pk ≥ 0``: the component points where the activations are large (after a
ReLU layer every activation is non-negative). The SVD library's own sign (what the reference
leaves) is arbitrary and changes with the library version.

What a map decomposes: in GridPG, DiPart and gridpg-rescaled the map the network computes on the
grid image; in DiFull each target's own cell, the whole input of its head (zero elsewhere: the
head sees nothing else). At a token layer (a ViT block) the patch tokens; the method runs
nothing after the layer, so it is defined there too. The SVDs are batched over grid images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.methods._difull import cell_rows
from attrcli.methods.base import METHODS, Method, MethodTesting


@dataclass(frozen=True)
class EigenCAMConfig:
    relu: bool = True  # the CAM papers' ReLU at the layer's resolution; false keeps the sign
    center: bool = False  # subtract the mean over positions before the SVD (pytorch-grad-cam)


def first_component(maps: torch.Tensor, *, center: bool = False) -> torch.Tensor:
    """Projections ``(N, h, w)`` of activations ``(N, C, h, w)`` onto their first right singular
    vector, signed by the rule of the module docstring."""
    N, C, h, w = maps.shape
    matrix = maps.flatten(2).transpose(1, 2)  # (N, positions, C)
    if center:
        matrix = matrix - matrix.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    projection = matrix @ vh[:, 0, :, None]  # (N, positions, 1)
    agreement = (projection[..., 0] * maps.flatten(2).sum(1)).sum(-1)  # (N,)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return (projection[..., 0] * sign[:, None]).view(N, h, w)


@METHODS.register("eigencam")
class EigenCAM(Method):
    name = "eigencam"
    kind = "model"
    reads_layer_only = True  # runs nothing after the layer: defined at token layers too
    testing = MethodTesting(difull_exact=True)
    Config = EigenCAMConfig

    def attribute(self, ctx) -> torch.Tensor:
        setting, T = ctx.setting, ctx.targets.count
        a = setting.model.spatial(ctx.evaluated)  # DiFull: only the target cells' rows
        rows = cell_rows(ctx)
        if rows is None:
            maps = first_component(setting.to_map(a), center=self.config.center)
            maps = maps[:, None].expand(-1, T, -1, -1)
        else:  # each target's cell alone, stitched into the grid layout
            maps = first_component(a[rows], center=self.config.center)
            maps = ctx.cells_to_map(maps.view(ctx.grids, T, *maps.shape[-2:]))
        return maps.clamp(min=0) if self.config.relu else maps.clone()
