"""Input × Gradient (Shrikumar et al., ICML 2017).

Activations times the gradient of the target logit, summed over channels (Captum's
``InputXGradient`` and ``LayerGradientXActivation``). Signed.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method, MethodTesting


@METHODS.register("ixg")
class InputXGradient(Method):
    name = "ixg"
    testing = MethodTesting(difull_exact=True)

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (activations * gradients).sum(-3)
