"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017).

``(a - 0) · ∫₀¹ ∂f(α a)/∂a dα`` with a zero baseline, the integral approximated with ``steps``
points (default 20, Gauss-Legendre as Captum; or ``rule=riemann_trapezoid``), summed over channels.
At a hidden layer ``a`` are the layer's activations and ``f`` the rest of the network (ML-Att):
Captum's ``IntegratedGradients`` applied to the rest; the baseline is zero *at the layer*, not (as
Captum's ``LayerIntegratedGradients``) the layer's response to a zero image. The prefix runs once
per batch; (grid image, step) pairs are batched under ``--batch-size``, one forward for every
target of a grid image (one backward each). In DiFull only the target cells run, in one backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attrcli.errors import UserError
from attrcli.methods.base import METHODS, Method, MethodTesting


@dataclass(frozen=True)
class IntGradConfig:
    steps: int = 20  # integration points
    rule: str = "gausslegendre"  # or "riemann_trapezoid"

    def __post_init__(self) -> None:
        integration_points(self.steps, self.rule)  # refuses a bad rule or step count early


def integration_points(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``α`` in [0, 1] and their weights."""
    fewest = 2 if rule == "riemann_trapezoid" else 1
    if steps < fewest:
        raise UserError(f"intgrad{' rule ' + rule if fewest == 2 else ''} needs steps >= {fewest}, got {steps}")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    if rule == "riemann_trapezoid":
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps), weights
    raise UserError(f"unknown intgrad rule {rule!r}; valid: gausslegendre, riemann_trapezoid")


@METHODS.register("intgrad")
class IntegratedGradients(Method):
    name = "intgrad"
    testing = MethodTesting(tiny="steps=4", difull_exact=True)
    kind = "model"
    Config = IntGradConfig

    def attribute(self, ctx) -> torch.Tensor:
        alphas, weights = integration_points(self.config.steps, self.config.rule)
        a = ctx.evaluated  # (B·u, C, h, w), the prefix ran once
        alphas = torch.tensor(alphas, dtype=a.dtype, device=ctx.device)
        weights = torch.tensor(weights, dtype=a.dtype, device=ctx.device)
        rows = ctx.setting.target_rows(ctx.targets, ctx.grids)  # DiFull: the target cells alone
        units = (a if rows is None else a[rows]).view(ctx.grids, -1, *a.shape[1:])
        count, steps, pairs = ctx.targets.count, len(alphas), ctx.grids * len(alphas)
        total: torch.Tensor | None = None  # Σ weight · gradient per grid image
        for start in range(0, pairs, ctx.batch_size):  # (grid image, step) pairs
            index = torch.arange(start, min(start + ctx.batch_size, pairs), device=ctx.device)
            grid, step = index // steps, index % steps
            scaled = units[grid].mul_(alphas[step].view(-1, 1, 1, 1, 1))
            if rows is None:
                _, grad = ctx.target_gradients(scaled.flatten(0, 1), grid, scale=weights[step])
            else:  # row i of a pair is its target i's cell, scored by that target's head
                slot = torch.arange(count, device=ctx.device).repeat(len(index))
                grad = ctx.cell_gradients(
                    scaled.flatten(0, 1), grid.repeat_interleave(count), slot,
                    scale=weights[step].repeat_interleave(count),
                ).view_as(scaled)
            total = grad.new_zeros((ctx.grids, *grad.shape[1:])) if total is None else total
            total.index_add_(0, grid, grad)
        if rows is None:
            return ctx.select_cells(ctx.setting.to_map(a)[:, None] * total).sum(2)
        return ctx.cells_to_map((units * total).sum(2))
