"""The shared gradient pass: one forward and one backward for every gradient method at every
requested layer (SPEC §5).

Under ML-Att the gradient of the rest of the network at layer L equals the gradient of the
whole network at L, so a single backward through the full network yields the gradients at all
layers at once. Guided backprop needs one more pass with guided ReLUs.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from attrcli.engine.context import target_logits
from attrcli.engine.guided import guided_relus
from attrcli.settings.base import GridSetting, Targets


def gradient_pass(
    setting: GridSetting,
    x: torch.Tensor,
    targets: Targets,
    layer_indices: list[int],
    *,
    guided: bool = False,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Activations and gradients per layer, in grid layout, broadcastable to ``(B, T, C, h, w)``.

    In connected settings each grid image is repeated once per target (heads share every
    activation); in DiFull one pass explains every target and target t keeps its own cell of the
    gradient, which is exact by construction.
    """
    B, T = x.shape[0], targets.count
    device = x.device
    wanted = sorted(set(layer_indices))
    if setting.disconnected:
        units, grid, target = x, torch.arange(B, device=device), None
    else:
        units = x.repeat_interleave(T, 0)
        grid = torch.arange(B, device=device).repeat_interleave(T)
        target = torch.arange(T, device=device).repeat(B)
    context = guided_relus(setting.model.module) if guided else nullcontext()
    with torch.enable_grad(), context:
        h = setting.split(units).detach().requires_grad_(True)
        captured = {-1: h}
        for index, (_, block) in enumerate(setting.model.blocks):
            h = block(h)
            if index in wanted:
                captured[index] = h
        values = target_logits(setting.heads(h), targets, grid, target)
        grads = torch.autograd.grad(values.sum(), [captured[i] for i in wanted])
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for index, grad in zip(wanted, grads):
        a = setting.to_map(captured[index].detach())
        g = setting.to_map(grad)
        if setting.disconnected:
            mask = setting.cell_mask(targets.cells, g.shape[-2:], device).to(g.dtype)
            out[index] = (a[:, None], g[:, None] * mask[None, :, None])
        else:
            out[index] = (a.view(B, T, *a.shape[1:]), g.view(B, T, *g.shape[1:]))
    return out
