"""Guided Backprop (Springenberg et al., ICLRW 2015).

The gradient with every ReLU passing back only positive gradients at positive inputs (Captum's
``GuidedBackprop``), absolute value, summed over channels (supplement H.2). At a hidden layer
only the ReLUs after the layer matter, so one guided backward serves every layer; it reuses the
forward of the plain gradient methods (:mod:`attrcli.engine.guided`). As in Captum, the ReLUs
are the model's ``nn.ReLU`` modules: a functional ``F.relu`` backpropagates plainly.
"""

from __future__ import annotations

import torch

from attrcli.methods.base import METHODS, Method, MethodTesting


@METHODS.register("guided-backprop")
class GuidedBackprop(Method):
    name = "guided-backprop"
    testing = MethodTesting(difull_exact=True)
    guided = True

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.abs().sum(-3)
