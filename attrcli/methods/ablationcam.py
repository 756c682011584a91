"""Ablation-CAM (Desai & Ramaswamy, WACV 2020), on logits, at any layer.

Channel c of the layer is set to zero and only the network after the layer runs again; its
weight is the relative drop of the target logit, ``w_c = (y − y_c) / y``, and the map is
``Σ_c w_c A_c``. At ``input`` the channels are the image's own three channels. In DiFull zeroing
a channel in cell j moves head j alone, so each target is evaluated on its own cell row; the
weights then weigh the whole stitched map (as for Grad-CAM).

Deliberate differences from the paper: no final ReLU (maps are stored signed), and where
``|y| < 1e-6`` the weights are the plain drops ``y − y_c`` so the map stays finite.

A channel that is zero everywhere in the evaluated row leaves the activations, and so the logit,
unchanged when ablated: its pass is not run and ``y_c = y`` (weight 0; in DiFull the weight of
head t comes from its own cell's row). ``attrcli.methods._perturb.SKIP_KNOWN = False`` runs it.
"""

from __future__ import annotations

import torch

from attrcli.methods._perturb import (
    channel_map,
    gather,
    per_evaluation,
    perturbed_scores,
    reference_scores,
)
from attrcli.methods.base import METHODS, Method

TINY_LOGIT = 1e-6


@METHODS.register("ablationcam")
class AblationCAM(Method):
    name = "ablationcam"
    kind = "model"

    def attribute(self, ctx) -> torch.Tensor:
        a = ctx.evaluated  # in DiFull only the target cells' rows: all that is perturbed
        channels = torch.arange(a.shape[1], device=ctx.device)

        def build(rows, target, channel):
            keep = (channels[None] != channel[:, None]).to(a.dtype)
            return gather(a, rows).mul_(keep[:, :, None, None])

        with torch.no_grad():
            y = reference_scores(ctx)  # (B, T)
            live = per_evaluation(ctx, a, lambda rows: rows.abs().amax(dim=(-2, -1)) > 0)  # zero ablates to itself
            ablated = perturbed_scores(ctx, a.shape[1], build, layer_index=ctx.layer_index, fill=y, keep=live)
            scale = torch.where(y.abs() < TINY_LOGIT, torch.ones_like(y), y)
            return channel_map(ctx, (y[:, :, None] - ablated) / scale[:, :, None])
