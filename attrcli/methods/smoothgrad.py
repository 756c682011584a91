"""SmoothGrad (Smilkov et al., ICML Workshops 2017) over IntGrad and IxG (supplement G).

The layer's activations (at ``input`` the image) get Gaussian noise with
``σ = noise · (max − min)`` of that grid image's activations, and the base method's maps of
``samples`` noisy copies are averaged (Captum's ``NoiseTunnel(smoothgrad)``: the base method
runs on the noisy input, so IxG multiplies the noisy input by its gradient). The paper uses 15
samples and sweeps the noise from 1 % to 30 %; the default here is 15 %. Noise comes from a
generator seeded by ``--seed`` on the device, so CPU reruns are identical.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from attrcli.errors import UserError
from attrcli.methods._perturb import gradient_maps
from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.methods.intgrad import (
    IntegratedGradients,
    IntGradConfig,
    integration_points,
)
from attrcli.methods.ixg import InputXGradient


def _check(noise: float, samples: int) -> None:
    if samples < 1 or noise < 0:
        raise UserError(f"smoothgrad needs samples >= 1 and noise >= 0, got samples={samples}, noise={noise}")


@dataclass(frozen=True)
class SmoothGradConfig:
    noise: float = 0.15  # noise σ as a fraction of the grid image's activation range
    samples: int = 15  # noisy copies averaged

    def __post_init__(self) -> None:
        _check(self.noise, self.samples)


@dataclass(frozen=True)
class SmoothGradIntGradConfig:
    noise: float = 0.15  # noise σ as a fraction of the grid image's activation range
    samples: int = 15  # noisy copies averaged
    steps: int = 20  # IntGrad integration points
    rule: str = "gausslegendre"  # IntGrad rule, or "riemann_trapezoid"

    def __post_init__(self) -> None:
        _check(self.noise, self.samples)
        integration_points(self.steps, self.rule)


class SmoothGrad(Method):
    """Mean of the :meth:`inner` method's maps over noisy copies of the layer's activations."""

    kind = "model"
    seeded = True
    Config: ClassVar[type] = SmoothGradConfig

    def inner(self) -> Method:
        raise NotImplementedError

    def attribute(self, ctx) -> torch.Tensor:
        inner = self.inner()
        a = ctx.activations
        per_grid = a.reshape(ctx.grids, -1)
        sigma = self.config.noise * (per_grid.amax(1) - per_grid.amin(1))
        sigma = sigma.repeat_interleave(ctx.units_per_grid).view(-1, *[1] * (a.dim() - 1))
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        total = None
        for _ in range(self.config.samples):
            noise = torch.randn(a.shape, generator=generator, device=ctx.device, dtype=a.dtype)
            noisy = dataclasses.replace(ctx, _activations=a + sigma * noise)
            maps = inner.attribute(noisy) if inner.kind == "model" else gradient_maps(inner, noisy)
            total = maps if total is None else total + maps
        return total / self.config.samples


@METHODS.register("smoothgrad-ixg")
class SmoothGradIxG(SmoothGrad):
    name = "smoothgrad-ixg"
    testing = MethodTesting(tiny="samples=2", difull_exact=True)

    def inner(self) -> Method:
        return InputXGradient()


@METHODS.register("smoothgrad-intgrad")
class SmoothGradIntGrad(SmoothGrad):
    name = "smoothgrad-intgrad"
    testing = MethodTesting(tiny="samples=2,steps=2", difull_exact=True)
    Config = SmoothGradIntGradConfig

    def inner(self) -> Method:
        return IntegratedGradients(IntGradConfig(steps=self.config.steps, rule=self.config.rule))
