"""Layer-wise Relevance Propagation (Bach et al., PLoS ONE 2015; rules as in Montavon et al.,
"Layer-wise relevance propagation: an overview", 2019), with zennit (Anders et al., 2021).

Composite: zennit's ``EpsilonPlusFlat``, the usual choice for VGG and ResNet:

- first convolution of the network: flat rule (relevance spread evenly over the receptive
  field; the input is a normalised image, not a ReLU output);
- every other convolution: z+ rule (positive contributions only);
- fully connected layers: ε rule, ε = ``epsilon`` (default 1e-6); the other rules add
  ``stabilizer`` (default 1e-6) to their denominators;
- average pooling (ResNet's global pooling, GridPG's mean over head windows) and ResNet's
  residual sums: relevance in proportion to each input's contribution;
- ReLU, batch norm left after canonizing: relevance passes unchanged; max pooling: to the
  maximum (its gradient).

Canonizers (zennit's ``ResNetCanonizer``): every batch norm that follows a convolution is merged
into it (VGG-BN and ResNet), and the additions of torchvision's ``BasicBlock`` and
``Bottleneck`` become modules so the sum rule applies. The model's weights are restored after.
Deliberate difference from zennit: the merged batch norm's ``eps`` is set to 0 while merged, so
it is the identity (zennit leaves it, which scales every merged layer by 1/√(1 + eps) and makes
the canonized network differ from the model by about 1e-5).

Output relevance: the target logit (one-hot times its value), so on a model without biases the
relevance at the input sums to the logit (conservation). The map is the relevance summed over
channels, signed.

Hidden layers (ML-Att): relevance at layer L for the rest of the network. The rules are the
whole network's; the relevance arriving at L's activations is the map. Only the rest of the
network runs (the prefix is the engine's), and layer-wise rules make this the relevance that a
full LRP pass carries through L. In DiFull each target cell runs alone, scored by its own head.

Rules exist for ReLU CNNs only: a model with other layers (LayerNorm, GELU, attention: ConvNeXt,
Swin, ViT) is refused when the job is planned (:meth:`LRP.model_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import own_class_gradients
from attrcli.errors import UserError
from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.models.adapter import ModelAdapter

#: Leaf modules the composite has a rule for (or that are the identity in eval mode).
SUPPORTED = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Dropout, nn.Identity, nn.Flatten,
)
RESIDUAL = (BasicBlock, Bottleneck)  # canonized: their sums become modules


@dataclass(frozen=True)
class LRPConfig:
    epsilon: float = 1e-6  # ε of the ε rule on fully connected layers
    stabilizer: float = 1e-6  # added to the denominators of the other rules (zennit's default)

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and self.stabilizer > 0):
            raise UserError(f"lrp needs epsilon > 0 and stabilizer > 0, got {self.epsilon} and {self.stabilizer}")


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's merge of a batch norm into the preceding convolution, with the batch norm's
    ``eps`` set to 0 while merged so that it becomes exactly the identity."""

    def register(self, linears, batch_norm) -> None:
        self.eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.eps


def composite(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> EpsilonPlusFlat:
    """The composite used for every model (see the module docstring)."""
    canonizer = CompositeCanonizer((ExactMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()))
    return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=[canonizer])


@METHODS.register("lrp")
class LRP(Method):
    name = "lrp"
    testing = MethodTesting(difull_exact=True)
    kind = "model"
    Config = LRPConfig

    @staticmethod
    def model_problem(model: ModelAdapter, layer: str) -> str | None:
        """Why LRP has no rules for ``model``: the first module of a kind without a rule."""
        for path, module in model.module.named_modules():
            if isinstance(module, RESIDUAL):
                continue
            if not list(module.children()) and not isinstance(module, SUPPORTED):
                return (
                    "lrp has rules for ReLU CNNs (convolutions, linear layers, batch norm, pooling, "
                    f"torchvision's residual blocks) and the model has {type(module).__name__} ({path})"
                )
        return None

    def attribute(self, ctx: AttributionContext) -> torch.Tensor:
        a = ctx.evaluated  # the prefix runs plainly, before the rules are attached
        setting = ctx.setting
        root = nn.ModuleList([setting.model.module, *setting.extra_modules()])
        with composite(self.config.epsilon, self.config.stabilizer).context(root):
            rows = setting.target_rows(ctx.targets, ctx.grids)
            if rows is None:
                return self._connected(ctx, a)
            return self._cells(ctx, a[rows])

    def _connected(self, ctx: AttributionContext, a: torch.Tensor) -> torch.Tensor:
        """GridPG, DiPart: one forward per grid image, one backward per target."""
        heads, classes = ctx.targets.heads, ctx.targets.classes
        maps = []
        for start in range(0, ctx.grids, ctx.batch_size):
            grid = torch.arange(start, min(start + ctx.batch_size, ctx.grids), device=ctx.device)
            logits, relevance = ctx.target_gradients(ctx.unit_rows(grid, a), grid)  # (U, T, C, h, w)
            value = logits[torch.arange(len(grid), device=ctx.device)[:, None], heads[None], classes[grid]]
            maps.append(relevance.sum(2) * value[:, :, None, None])
        return torch.cat(maps)

    def _cells(self, ctx: AttributionContext, cells: torch.Tensor) -> torch.Tensor:
        """DiFull: row ``r`` is target ``r % T`` of grid image ``r // T``, scored by its own head."""
        model, count = ctx.setting.model, ctx.targets.count
        slot = torch.arange(len(cells), device=ctx.device)
        classes = ctx.targets.classes[slot // count, slot % count]
        maps = []
        step = ctx.batch_size * count
        for start in range(0, len(cells), step):
            part = slice(start, start + step)
            with torch.enable_grad():
                x = cells[part].detach().requires_grad_(True)
                logits = model.head(model.run_blocks(x, ctx.layer_index))
                value = logits.detach()[torch.arange(len(x), device=ctx.device), classes[part]]
                (relevance,) = own_class_gradients(logits, classes[part], [x], scale=value)
            maps.append(model.spatial(relevance).sum(1))
        maps = torch.cat(maps)
        return ctx.cells_to_map(maps.view(ctx.grids, count, *maps.shape[-2:]))
