"""The shared gradient pass: one forward, and one backward per target, for every gradient method
at every requested layer (SPEC §5).

Under ML-Att the gradient of the rest of the network at layer L equals the gradient of the whole
network at L, so one backward through the network yields the gradients at all layers at once.
The forward runs once per grid image, not once per target: the heads of a grid image share
every activation, so each target's logit is differentiated through the same graph. DiFull needs
a single backward for all its targets, as head i has zero gradient outside cell i (supplement F).
Guided backprop reuses the same forward too: the ReLUs are switched to the guided rule between
the plain and the guided backward (:mod:`attrcli.engine.guided`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import torch

from attrcli.engine.guided import BackwardRule, switchable_relus
from attrcli.settings.base import GridSetting, Targets

PLAIN, GUIDED = "plain", "guided"


def target_logits(
    logits: torch.Tensor, targets: Targets, grid: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """Logit of each explained unit ``(U,)`` from ``(U, heads, classes)``.

    Unit ``u`` belongs to grid image ``grid[u]`` of the batch. ``target=None`` (DiFull) sums the
    logits of every target of the unit's grid image.
    """
    rows = torch.arange(len(grid), device=logits.device)
    classes = targets.classes[grid]  # (U, T)
    if target is None:
        return logits[rows[:, None], targets.heads[None], classes].sum(1)
    return logits[rows, targets.heads[target], classes[rows, target]]


def target_gradients(
    setting: GridSetting,
    logits: torch.Tensor,
    targets: Targets,
    grid: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    *,
    retain_graph: bool = False,
    scale: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Gradients of the target logits with respect to each of ``inputs``, in grid layout.

    ``logits`` ``(U, heads, classes)`` come from network-layout ``inputs`` holding ``U`` units,
    unit ``u`` showing grid image ``grid[u]``. Each result is ``(U, T, C, h, w)`` with one
    backward per target in connected settings, or ``(U, 1, C, h, w)`` in DiFull: the gradient of
    the summed target logits, in which target ``t`` owns cell ``cells[t]`` alone (see
    :func:`select_cells`). Each backward starts from the logits with a one-hot output gradient,
    which equals differentiating the target logit without an indexing step in the backward;
    ``scale`` ``(U,)`` multiplies each unit's one-hot, hence its gradients, at no cost.
    """
    rows = torch.arange(len(grid), device=logits.device)
    value = torch.ones(len(grid), dtype=logits.dtype, device=logits.device) if scale is None else scale
    if setting.disconnected:
        pick = torch.zeros_like(logits)
        pick[rows[:, None], targets.heads[None], targets.classes[grid]] = value[:, None].to(logits.dtype)
        grads = torch.autograd.grad(logits, list(inputs), pick, retain_graph=retain_graph)
        return [setting.to_map(g)[:, None] for g in grads]
    per_input: list[list[torch.Tensor]] = [[] for _ in inputs]
    count = targets.count
    for t in range(count):
        pick = torch.zeros_like(logits)
        pick[rows, targets.heads[t], targets.classes[grid, t]] = value.to(logits.dtype)
        grads = torch.autograd.grad(
            logits, list(inputs), pick, retain_graph=retain_graph or t < count - 1
        )
        for store, g in zip(per_input, grads):
            store.append(setting.to_map(g))  # maps pass; token sequences become maps
    return [torch.stack(grads, 1) for grads in per_input]


def select_cells(setting: GridSetting, targets: Targets, maps: torch.Tensor) -> torch.Tensor:
    """``(U, 1, ...)`` DiFull tensors (all targets in one) to ``(U, T, ...)``: target ``t`` keeps
    its own cell, which is exact because head ``t`` has zero gradient everywhere else.
    Connected settings' ``(U, T, ...)`` tensors pass unchanged."""
    if not setting.disconnected:
        return maps
    mask = setting.cell_mask(targets.cells, maps.shape[-2:], maps.device).to(maps.dtype)
    shape = (1, targets.count) + (1,) * (maps.dim() - 4) + tuple(mask.shape[-2:])
    return maps * mask.view(shape)


def scatter_rows(part: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """Network-layout rows ``part`` placed at ``rows`` of a zero tensor of ``total`` rows."""
    out = part.new_zeros((total, *part.shape[1:]))
    out[rows] = part
    return out


def own_class_gradients(
    logits: torch.Tensor, classes: torch.Tensor, inputs: Sequence[torch.Tensor], *,
    scale: torch.Tensor | None = None, retain_graph: bool = False,
) -> list[torch.Tensor]:
    """Gradients w.r.t. each of ``inputs`` of every row's own logit ``logits[r, classes[r]]``
    (times ``scale[r]``), in one backward: DiFull cell rows, each scored by its own head."""
    pick = torch.zeros_like(logits)
    value = 1 if scale is None else scale.to(logits.dtype)
    pick[torch.arange(len(logits), device=logits.device), classes] = value
    return list(torch.autograd.grad(logits, list(inputs), pick, retain_graph=retain_graph))


def other_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean mask of the ``total`` network-layout rows not in ``rows``."""
    others = torch.ones(total, dtype=torch.bool, device=rows.device)
    others[rows] = False
    return others


@dataclass(frozen=True)
class LayerGradients:
    """Activations and per-target gradients at one layer, in grid layout."""

    activations: torch.Tensor  # (B, 1, C, h, w)
    gradients: torch.Tensor  # (B, T, C, h, w)


def shared_gradients(
    setting: GridSetting,
    x: torch.Tensor,
    targets: Targets,
    layers: Mapping[str, Sequence[int]],
    *,
    whole: Collection[int] = (),
) -> dict[str, dict[int, LayerGradients]]:
    """Activations and gradients at the requested layers for each backward rule.

    ``layers`` maps a rule (``"plain"``, ``"guided"``) to block indices (-1 for the input). The
    prefix up to the earliest requested layer runs without a graph; one forward from there serves
    every rule and layer, and each rule's backward stops at its own earliest layer.

    In DiFull only the target cells' rows run (:meth:`GridSetting.target_rows`): every other
    cell has zero gradient for every target. Their activations are computed too (without a
    graph, up to the deepest such layer) only at the layers in ``whole``, for maps that weigh
    the whole stitched map (Grad-CAM's channel weights); elsewhere they are left at zero, which
    no map that is zero where its gradient is zero can see.
    """
    wanted = {rule: sorted(set(indices)) for rule, indices in layers.items() if indices}
    if not wanted:
        return {}
    unknown = set(wanted) - {PLAIN, GUIDED}
    if unknown:
        raise ValueError(f"unknown backward rule(s) {sorted(unknown)}; valid: {PLAIN}, {GUIDED}")
    first = min(indices[0] for indices in wanted.values())
    every = {i for indices in wanted.values() for i in indices}
    grid = torch.arange(x.shape[0], device=x.device)
    net = setting.split(x)
    rows = setting.target_rows(targets, x.shape[0])
    blocks = setting.model.blocks
    rule = BackwardRule()
    patch = switchable_relus(setting.model.module, rule) if GUIDED in wanted else nullcontext()
    out: dict[str, dict[int, LayerGradients]] = {}
    with patch:
        with torch.no_grad():
            h = setting.model.run_blocks(net if rows is None else net[rows], -1, first)
        with torch.enable_grad():
            h = h.detach().requires_grad_(True)
            captured = {first: h}
            for index in range(first + 1, len(blocks)):
                h = blocks[index][1](h)
                if index in every:
                    captured[index] = h
            if rows is None:
                logits = setting.heads(h)
                activations = {i: a.detach() for i, a in captured.items() if i in every}
            else:  # row r is target r % T of grid image r // T, scored by its own head
                logits = setting.model.head(h)
                slot = torch.arange(len(rows), device=x.device)
                classes = targets.classes[slot // targets.count, slot % targets.count]
                activations = _whole_rows(setting, net, rows, captured, every, set(whole))
            activations = {i: setting.to_map(a)[:, None] for i, a in activations.items()}
            rules = list(wanted)
            for position, name in enumerate(rules):
                rule.guided = name == GUIDED
                inputs = [captured[i] for i in wanted[name]]
                retain = position < len(rules) - 1
                if rows is None:
                    grads = target_gradients(setting, logits, targets, grid, inputs, retain_graph=retain)
                else:
                    grads = own_class_gradients(logits, classes, inputs, retain_graph=retain)
                    grads = [setting.to_map(scatter_rows(g, rows, len(net)))[:, None] for g in grads]
                out[name] = {
                    i: LayerGradients(activations[i], select_cells(setting, targets, g))
                    for i, g in zip(wanted[name], grads)
                }
    return out


def _whole_rows(
    setting: GridSetting, net: torch.Tensor, rows: torch.Tensor, captured: Mapping[int, torch.Tensor],
    every: set[int], whole: set[int],
) -> dict[int, torch.Tensor]:
    """Network-layout activations of every row at the ``every`` layers, from the target rows'
    ``captured`` ones: the other rows are computed at the ``whole`` layers, zero elsewhere."""
    out = {i: scatter_rows(a.detach(), rows, len(net)) for i, a in captured.items() if i in every}
    if -1 in out:
        out[-1] = net
    deeper = sorted(i for i in whole & every if i >= 0)
    if deeper:
        others = other_rows(rows, len(net))
        with torch.no_grad():
            h = net[others]
            for index in range(deeper[-1] + 1):
                h = setting.model.blocks[index][1](h)
                if index in deeper:
                    out[index][others] = h
    return out


def gradient_pass(
    setting: GridSetting,
    x: torch.Tensor,
    targets: Targets,
    layer_indices: list[int],
    *,
    guided: bool = False,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Activations ``(B, 1, C, h, w)`` and gradients ``(B, T, C, h, w)`` per layer, grid layout,
    of one backward rule (see :func:`shared_gradients`, which serves several rules at once)."""
    rule = GUIDED if guided else PLAIN
    result = shared_gradients(setting, x, targets, {rule: layer_indices}, whole=layer_indices).get(rule, {})
    return {i: (r.activations, r.gradients) for i, r in result.items()}
