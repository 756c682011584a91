"""Gradient (Simonyan, Vedaldi & Zisserman, ICLRW 2014).

The absolute value of the gradient of the target logit, summed over channels, as in the paper's
evaluation (supplement H.2) and Captum's ``Saliency(abs=True)``.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method, MethodTesting


@METHODS.register("grad")
class Gradient(Method):
    name = "grad"
    testing = MethodTesting(difull_exact=True)

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.abs().sum(-3)
