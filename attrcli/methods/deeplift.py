"""DeepLIFT (Shrikumar, Greenside & Kundaje, ICML 2017) with the rescale rule and a zero baseline.

Contributions are ``(a − 0) · m``, summed over channels, where the multipliers ``m`` are
backpropagated like gradients except through the nonlinearities, whose multiplier is the
change of their output over the change of their input between the actual and the reference
pass (the *rescale rule*, Sec. 3.5.2 of the paper):

- ``nn.ReLU``: ``m = Δy / Δx``, the gradient where ``|Δx| < 1e-10`` (Captum's threshold);
- ``nn.MaxPool2d``: the change ``Δy`` of each window goes to the input's argmax, where its
  multiplier is ``Δy / Δx`` (the gradient where ``|Δx| < 1e-10``), so a window's
  contributions sum to its change. Captum's rule also weighs the reference's argmax; on a
  model without max pooling the two agree (tested against Captum's ``DeepLift``);
- linear layers, convolutions, batch norm (eval), average pooling, GridPG's window mean and
  ResNet's sums are linear: their multiplier is their gradient.

So the map sums to the target logit minus its value at the baseline (*summation-to-delta*),
exactly up to rounding and the ``1e-10`` threshold. The reference pass runs the same modules on
zeros at the explained layer (one extra forward per chunk, without a graph).

Hidden layers (ML-Att): the rest of the network explained with the baseline zero *at the layer*,
as :mod:`attrcli.methods.intgrad`; Captum's ``LayerDeepLift`` instead takes the layer's
response to a zero image as the baseline. GridPG and DiPart: one forward per grid image, one
backward per target; DiFull: each target cell alone, scored by its own head, in one backward.

Defined for ReLU CNNs: a model with other nonlinear modules (GELU, LayerNorm, attention) has no
rule here and is refused when the job is planned (:meth:`DeepLIFT.model_problem`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import own_class_gradients
from attrcli.methods._difull import cell_rows
from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.models.adapter import ModelAdapter

EPS = 1e-10  # below this |Δx| a multiplier is the gradient (Captum's default eps)
NONLINEAR = (nn.ReLU, nn.MaxPool2d)  # the modules with a rescale rule here
LINEAR = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten,
)


class _Rescale(torch.autograd.Function):
    """``y = f(x)`` forward (``y`` given); the rescale multiplier backward."""

    @staticmethod
    def forward(ctx, x, y, reference_x, reference_y, module):  # noqa: D102
        ctx.save_for_backward(x, y, reference_x, reference_y)
        ctx.module = module
        return y.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, y, reference_x, reference_y = ctx.saved_tensors
        delta_x = x - reference_x
        small = delta_x.abs() < EPS
        if isinstance(ctx.module, nn.ReLU):
            multiplier = torch.where(small, (x > 0).to(x.dtype), (y - reference_y) / torch.where(small, 1, delta_x))
            return grad * multiplier, None, None, None, None
        routed_delta = _route(ctx.module, x, grad * (y - reference_y))
        routed_grad = _route(ctx.module, x, grad)
        return torch.where(small, routed_grad, routed_delta / torch.where(small, 1, delta_x)), None, None, None, None


def _route(pool: nn.MaxPool2d, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` of each output window added at the window's argmax of ``x`` (overlapping
    windows add up)."""
    _, index = F.max_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, return_indices=True
    )
    out = torch.zeros_like(x).flatten(2)
    out.scatter_add_(2, index.flatten(2), values.flatten(2))
    return out.view_as(x)


class RescaleRule:
    """Forward hooks on the nonlinear modules: in ``record`` mode they keep each call's input
    and output (the reference pass), in ``apply`` mode they attach the rescale backward to each
    call, against the reference of the same call."""

    def __init__(self) -> None:
        self.reference: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recording = True
        self.position = 0

    def record(self) -> None:
        self.reference, self.recording = [], True

    def apply(self) -> None:
        self.recording, self.position = False, 0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        x = inputs[0]
        if self.recording:
            self.reference.append((x.detach(), output.detach()))
            return None
        reference_x, reference_y = self.reference[self.position]
        self.position += 1
        return _Rescale.apply(x, output.detach(), reference_x, reference_y, module)


@contextmanager
def rescale_rule(modules: list[nn.Module]) -> Iterator[RescaleRule]:
    """The rescale rule on every ReLU and max-pooling module of ``modules``, removed on exit."""
    rule = RescaleRule()
    handles = [
        sub.register_forward_hook(rule)
        for module in modules for sub in module.modules() if isinstance(sub, NONLINEAR)
    ]
    try:
        yield rule
    finally:
        for handle in handles:
            handle.remove()


@METHODS.register("deeplift")
class DeepLIFT(Method):
    name = "deeplift"
    kind = "model"
    testing = MethodTesting(difull_exact=True)

    @staticmethod
    def model_problem(model: ModelAdapter, layer: str) -> str | None:
        """Why the rescale rule does not cover ``model``: the first nonlinear module without one."""
        for path, module in model.module.named_modules():
            if list(module.children()) or isinstance(module, NONLINEAR + LINEAR):
                continue
            return (
                "deeplift has rescale rules for ReLU CNNs (ReLU, max pooling; convolutions, linear "
                f"layers, batch norm and average pooling are linear) and the model has {type(module).__name__} ({path})"
            )
        return None

    def attribute(self, ctx: AttributionContext) -> torch.Tensor:
        a = ctx.evaluated  # the prefix runs plainly, before the hooks are attached
        setting = ctx.setting
        with rescale_rule([setting.model.module, *setting.extra_modules()]) as rule:
            rows = cell_rows(ctx)
            if rows is None:
                return self._connected(ctx, a, rule)
            return self._cells(ctx, a[rows], rule)

    def _connected(self, ctx: AttributionContext, a: torch.Tensor, rule: RescaleRule) -> torch.Tensor:
        """GridPG, DiPart: one forward per grid image (and one on the baseline), one backward per target."""
        maps = []
        for start in range(0, ctx.grids, ctx.batch_size):
            grid = torch.arange(start, min(start + ctx.batch_size, ctx.grids), device=ctx.device)
            units = ctx.unit_rows(grid, a)
            rule.record()
            with torch.no_grad():
                ctx.suffix_logits(torch.zeros_like(units))
            rule.apply()
            _, multipliers = ctx.target_gradients(units, grid)  # (U, T, C, h, w)
            maps.append((ctx.setting.to_map(units)[:, None] * multipliers).sum(2))
        return torch.cat(maps)

    def _cells(self, ctx: AttributionContext, cells: torch.Tensor, rule: RescaleRule) -> torch.Tensor:
        """DiFull: row ``r`` is target ``r % T`` of grid image ``r // T``, scored by its own head."""
        model, count = ctx.setting.model, ctx.targets.count
        slot = torch.arange(len(cells), device=ctx.device)
        classes = ctx.targets.classes[slot // count, slot % count]
        maps = []
        step = ctx.batch_size * count
        for start in range(0, len(cells), step):
            part = slice(start, start + step)
            rule.record()
            with torch.no_grad():
                model.head(model.run_blocks(torch.zeros_like(cells[part]), ctx.layer_index))
            rule.apply()
            with torch.enable_grad():
                x = cells[part].detach().requires_grad_(True)
                logits = model.head(model.run_blocks(x, ctx.layer_index))
                (multipliers,) = own_class_gradients(logits, classes[part], [x])
            maps.append((x.detach() * multipliers).sum(1))
        maps = torch.cat(maps)
        return ctx.cells_to_map(maps.view(ctx.grids, count, *maps.shape[-2:]))
