"""Score-CAM (Wang et al., CVPR Workshops 2020), at any layer.

Each activation channel ``A_c`` of the layer is upsampled bilinearly to the input size,
min-max normalised to [0, 1], and multiplies the input image; the softmax probability of the
target class from the evaluated head at that masked image is the channel weight ``w_c``. The
map is ``Σ_c w_c A_c`` at the layer's resolution. At ``input`` the channels are the image's own
three channels. Masking the image means the whole network runs per channel: that is the
method's definition; channels are batched under ``--batch-size``.

In DiFull each cell is its own input: the channel of the explained head's cell is upsampled to
the cell, masks that cell's image, and is scored by that head; the weights then weigh the whole
stitched map (as for Grad-CAM). In GridPG and DiPart the channel over the whole grid masks the
whole grid image and one pass scores every head.

Deliberate differences from the paper: no final ReLU and no normalisation of the map (stored
signed and unscaled, like every attrcli map), and no baseline subtraction (as the authors'
code). A constant channel has no normalised mask (its min-max span is 0). The reference
implementation divides by that zero span, so the channel's mask, its weight and the whole map
become NaN; attrcli gives such a channel weight 0 instead, so the map stays finite
(docs/methods.md).

Passes whose result cannot change the map are not run: a constant channel (weight 0 by the
above) and a channel bitwise equal to an earlier one of the same row (the same mask: its score
is that channel's). ``attrcli.methods._perturb.SKIP_KNOWN = False`` runs them all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attrcli.methods import _perturb
from attrcli.methods._perturb import (
    channel_map,
    first_duplicates,
    gather,
    per_evaluation,
    perturbed_scores,
)
from attrcli.methods.base import METHODS, Method


def normalised_masks(channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Channels ``(R, h, w)`` upsampled to ``size`` and min-max normalised; constant ones are 0."""
    up = F.interpolate(channels[:, None], size=size, mode="bilinear", align_corners=False)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1), 0)


@METHODS.register("scorecam")
class ScoreCAM(Method):
    name = "scorecam"
    kind = "model"

    def attribute(self, ctx) -> torch.Tensor:
        a = ctx.evaluated  # (B·u, C, h, w); in DiFull only the target cells' rows are read
        images = ctx.setting.split(ctx.x)  # the image in network layout, one row per unit or cell
        size = tuple(images.shape[-2:])

        def build(rows, target, channel):
            return gather(images, rows).mul_(normalised_masks(a[rows, channel], size).to(images.dtype))

        with torch.no_grad():
            # (B, C), in DiFull (B, T, C): constant channels, and the first channel of each mask
            varies = per_evaluation(ctx, a, lambda rows: rows.amax(dim=(-2, -1)) > rows.amin(dim=(-2, -1)))
            first = per_evaluation(ctx, a, first_duplicates)
            keep = varies & (first == torch.arange(a.shape[1], device=a.device))
            probs = perturbed_scores(ctx, a.shape[1], build, layer_index=-1, softmax=True, keep=keep)  # (B, T, C)
            if not ctx.setting.disconnected:
                varies, first = varies[:, None], first[:, None].expand(-1, probs.shape[1], -1)
            if _perturb.SKIP_KNOWN:
                probs = probs.gather(2, first)
            return channel_map(ctx, probs * varies.to(probs.dtype))
