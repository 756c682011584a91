"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017).

``(a - 0) · ∫₀¹ ∂f(α a)/∂a dα`` with a zero baseline, the integral approximated with ``steps``
points (default 20, Gauss-Legendre as Captum's default; ``rule=riemann_trapezoid`` also
available), summed over channels. At a hidden layer ``a`` are the layer's activations and ``f``
the rest of the network (ML-Att), as Captum's ``LayerIntegratedGradients``. The prefix runs once
per batch; steps × targets are batched under ``--batch-size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attrcli.errors import UserError
from attrcli.methods.base import METHODS, Method


@dataclass(frozen=True)
class IntGradConfig:
    steps: int = 20  # integration points
    rule: str = "gausslegendre"  # or "riemann_trapezoid"


def integration_points(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``α`` in [0, 1] and their weights."""
    if steps < 1:
        raise UserError(f"intgrad needs steps >= 1, got {steps}")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise UserError("intgrad rule riemann_trapezoid needs steps >= 2")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps), weights
    raise UserError(f"unknown intgrad rule {rule!r}; valid: gausslegendre, riemann_trapezoid")


@METHODS.register("intgrad")
class IntegratedGradients(Method):
    name = "intgrad"
    kind = "model"
    Config = IntGradConfig

    def attribute(self, ctx) -> torch.Tensor:
        alphas, weights = integration_points(self.config.steps, self.config.rule)
        dtype = ctx.activations.dtype
        alphas = torch.tensor(alphas, dtype=dtype, device=ctx.device)
        weights = torch.tensor(weights, dtype=dtype, device=ctx.device)
        grid, target = ctx.explained_units()
        units, steps, per = len(grid), len(alphas), ctx.units_per_grid
        base = ctx.unit_rows(grid)  # (units·per, C, h, w)
        total = torch.zeros_like(base)
        pairs = units * steps
        for start in range(0, pairs, ctx.batch_size):
            index = torch.arange(start, min(start + ctx.batch_size, pairs), device=ctx.device)
            unit, step = index // steps, index % steps
            rows = (unit[:, None] * per + torch.arange(per, device=ctx.device)).reshape(-1)
            scale = alphas[step].repeat_interleave(per).view(-1, 1, 1, 1)
            _, grad = ctx.gradients(
                base[rows] * scale, grid[unit], None if target is None else target[unit]
            )
            total.index_add_(0, rows, grad * weights[step].repeat_interleave(per).view(-1, 1, 1, 1))
        maps = ctx.setting.to_map(base * total)  # (units, C, H, W)
        return ctx.per_target(maps, grid, target).sum(2)
