"""A toy attribution method that only the tests register (tests/conftest.py imports this module).

It is a real, small gradient method, ``scale · |∂y/∂a|`` summed over channels, with a parameter,
so every registry-driven generic test must pick it up and it must pass them
(tests/structure/test_registry_generic.py checks both). The product never sees it: attrcli
registers its own methods in ``attrcli.methods``, and this module is imported by the test suite
alone. Tests that pin the product's own method lists leave out :data:`TEST_ONLY`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrcli.methods import METHODS, Method
from attrcli.methods.base import MethodTesting

NAME = "toy-scaled-grad"
TEST_ONLY = frozenset({NAME})  # names registered by the test suite, not by attrcli


@dataclass(frozen=True)
class ToyConfig:
    scale: float = 2.0  # the gradient's magnitude is multiplied by this


@METHODS.register(NAME)
class ToyScaledGradient(Method):
    """``scale`` times the Gradient method's map (a plain gradient method of the shared pass)."""

    name = NAME
    Config = ToyConfig
    testing = MethodTesting(tiny="scale=3", difull_exact=True)

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return self.config.scale * gradients.abs().sum(-3)


def product_methods() -> list[str]:
    """The registered methods that attrcli itself registers (the registry minus the test suite's)."""
    return [name for name in METHODS.names() if name not in TEST_ONLY]
