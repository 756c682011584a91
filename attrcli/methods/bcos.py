"""The B-cos explanation: the contribution map of a dynamic linear network (Böhle, Fritz &
Schiele, "B-cos Networks: Alignment is All We Need for Interpretability", CVPR 2022, Sec. 3.3;
"B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers", TPAMI 2024).

A B-cos network computes y(x) = W(x)ᵀ x: every layer is linear in its input once its dynamic
weights (the |cos|^(B−1) scales, the norms' statistics, attention) are held fixed, and no layer
has a bias. In the package's ``explanation_mode()`` every such module detaches its dynamic
weights, so the gradient of a logit *is* its row of W(x), and input × gradient is the
contribution of each input dimension; the map is its sum over channels. Summed over the whole
input it is the logit minus the logit layer's fixed bias (−log(classes − 1)): completeness, up
to float rounding (tests/models/test_bcos_models.py).

- ``input``: the encoded image ``[x, 1 − x]`` (6 channels) that the network reads, both halves
  summed per pixel, as the package's ``explain`` (``(in_tensor * grad).sum(1)``). The grid's
  normalised image is encoded by the adapter's first block (:mod:`attrcli.models.bcos_models`).
- a hidden layer L: the same linear form of the rest of the network, a_L · ∂y/∂a_L in
  explanation mode (the rest of a B-cos network is dynamic linear in a_L too).
- every evaluated head, batched like the gradient methods: in GridPG and DiPart one forward per
  grid image and one backward per target; in DiFull one backward for all target cells, each
  scored by its own head (exactly zero outside the target cell).

Differences from the package's ``explain``: it explains the top prediction of one image; here
each evaluated head's class. The map is the signed contribution map (the package's
``contribution_map``), not its colour image (``gradient_to_image``: weight directions, alpha
from the weight norm, smoothing and a percentile cut). Hidden layers are attrcli's (ML-Att).

Runs on B-cos networks, and on piecewise-linear ReLU networks (dynamic linear too, W(x) set by
the ReLU gates, with biases b(x) the map leaves out: there it equals ``ixg``); other networks
(GELU, LayerNorm, attention) are refused when the job is planned.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from attrcli.engine.context import AttributionContext
from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.models.adapter import ModelAdapter
from attrcli.models.bcos_models import encoding_of

#: Leaf modules of piecewise-linear networks (identities in eval mode included).
PIECEWISE_LINEAR = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Dropout, nn.Identity, nn.Flatten,
)


def is_bcos(module: nn.Module) -> bool:
    """Whether ``module`` has B-cos layers (modules with ``set_explanation_mode``)."""
    return any(hasattr(m, "set_explanation_mode") for m in module.modules())


@contextmanager
def explanation_mode(module: nn.Module) -> Iterator[None]:
    """Every B-cos layer of ``module`` detaches its dynamic weights (the package's
    ``explanation_mode()``), and is switched back afterwards, also on an error."""
    layers = [m for m in module.modules() if hasattr(m, "set_explanation_mode")]
    for layer in layers:
        layer.set_explanation_mode(True)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_explanation_mode(False)


@METHODS.register("bcos")
class BcosContribution(Method):
    name = "bcos"
    kind = "model"
    testing = MethodTesting(difull_exact=True)

    @staticmethod
    def model_problem(model: ModelAdapter, layer: str) -> str | None:
        """Why ``model`` has no dynamic linear form to explain: the first module that is neither
        a B-cos layer nor piecewise linear."""
        if is_bcos(model.module):
            return None
        for path, module in model.module.named_modules():
            if not list(module.children()) and not isinstance(module, PIECEWISE_LINEAR):
                return (
                    "bcos explains dynamic linear networks (B-cos networks, e.g. --model bcos:resnet18; "
                    f"piecewise-linear ReLU networks) and the model has {type(module).__name__} ({path})"
                )
        return None

    def attribute(self, ctx: AttributionContext) -> torch.Tensor:
        setting = ctx.setting
        encode = encoding_of(setting.model) if ctx.layer_index < 0 else None
        with explanation_mode(setting.model.module):
            rows = setting.target_rows(ctx.targets, ctx.grids)
            if rows is None:
                return self._connected(ctx, encode)
            cells = ctx.evaluated[rows]
            return self._cells(ctx, cells if encode is None else encode(cells))

    def _connected(self, ctx: AttributionContext, encode: nn.Module | None) -> torch.Tensor:
        """GridPG, DiPart (and DiFull over every cell): one forward per grid image, one backward per
        target."""
        a = ctx.activations if encode is None else encode(ctx.activations)
        maps = []
        for start in range(0, ctx.grids, ctx.batch_size):
            grid = torch.arange(start, min(start + ctx.batch_size, ctx.grids), device=ctx.device)
            rows = ctx.unit_rows(grid, a)
            _, gradients = ctx.target_gradients(rows, grid)  # (U, T, C, h, w)
            # DiFull run on every cell: one backward for all targets, each keeps its own cell
            maps.append(ctx.select_cells(ctx.setting.to_map(rows)[:, None] * gradients).sum(2))
        return torch.cat(maps)

    def _cells(self, ctx: AttributionContext, cells: torch.Tensor) -> torch.Tensor:
        """DiFull: row ``r`` is target ``r % T`` of grid image ``r // T``, scored by its own head
        (:meth:`~attrcli.engine.context.AttributionContext.cell_gradients`)."""
        model, count = ctx.setting.model, ctx.targets.count
        slot = torch.arange(len(cells), device=ctx.device)
        maps = []
        step = ctx.batch_size * count
        for start in range(0, len(cells), step):
            part = slot[start:start + step]
            gradient = ctx.cell_gradients(cells[part], part // count, part % count)
            maps.append((model.spatial(cells[part]) * model.spatial(gradient)).sum(1))
        maps = torch.cat(maps)
        return ctx.cells_to_map(maps.view(ctx.grids, count, *maps.shape[-2:]))
