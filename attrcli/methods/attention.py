"""Attention rollout (Abnar & Zuidema, ACL 2020) and the transformer attribution of Chefer,
Gur & Wolf (CVPR 2021), at the input of torchvision's Vision Transformers.

Both aggregate the attention matrices ``A_l`` (``heads × tokens × tokens``) of every encoder
block into one token-to-token matrix and read the class token's row over the patch tokens:

- ``attention-rollout``: ``Â_l = 0.5 · mean_heads A_l + 0.5 · I``, rows renormalised to sum to 1,
  ``R = Â_L ⋯ Â_1`` (Abnar & Zuidema, Sec. 3: the residual connection as an identity). No
  gradient and no class: every target of an image gets the same map.
- ``chefer``: ``Ā_l = mean_heads (∇A_l ⊙ A_l)⁺`` with ``∇A_l`` the gradient of the target logit,
  ``R = (I + Ā_L) ⋯ (I + Ā_1)`` (the rollout of Chefer et al., CVPR 2021, Eq. 13–14 and their
  ``compute_rollout_attention``; the same product as ``R ← R + Ā R``). Deliberate difference:
  the paper weighs the gradient by the LRP relevance of each attention map, for which it
  defines LRP rules through every ViT layer; attrcli weighs it by the attention map itself, the
  rule of the authors' follow-up (Chefer, Gur & Wolf, ICCV 2021, Eq. 5–6), which needs no LRP.

The map is the class token's row ``R[0, 1:]`` as a patch map, each patch's value repeated over
its pixels (nearest; the authors' visualisation upsamples bilinearly), so it has the input's
grid-layout size. Settings: GridPG runs the grid image, its tokens every cell's patches (one
head, each target its class); DiFull runs each target's cell alone (zero elsewhere);
gridpg-rescaled the grid rescaled to one cell, each patch covering n² times the pixels. DiPart
is not defined for ViTs (the setting refuses them).

The attention matrices are computed explicitly: each ``nn.MultiheadAttention`` of the encoder
computes ``softmax(q kᵀ / √d) v`` itself while a method runs (the same arithmetic as
``torch.nn.functional.multi_head_attention_forward`` in eval mode), so they are part of the
graph and their gradients are exact. Defined at the input of a torchvision
``VisionTransformer`` only; any other model or layer is refused when the job is planned.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from attrcli.engine.context import AttributionContext
from attrcli.engine.gradients import own_class_gradients
from attrcli.methods._difull import cell_rows
from attrcli.methods.base import METHODS, Method, MethodTesting
from attrcli.models.adapter import INPUT, ModelAdapter


def attention_problem(name: str, model: ModelAdapter, layer: str) -> str | None:
    """Why method ``name`` is not defined for ``model`` at ``layer``, or None."""
    vit = next((m for m in model.module.modules() if isinstance(m, VisionTransformer)), None)
    if vit is None:
        return (
            f"{name} reads the class-token attention of torchvision's VisionTransformer encoder blocks "
            "and the model has no such attention"
        )
    if model.canonical_layer(layer) != INPUT:
        return f"{name} attributes the class token's attention to the input patches only (layer input)"
    for path, block in vit.encoder.layers.named_children():
        attention = block.self_attention if isinstance(block, EncoderBlock) else None
        if attention is None or not (
            attention.batch_first and attention._qkv_same_embed_dim and attention.bias_k is None
            and not attention.add_zero_attn and attention.in_proj_bias is not None
        ):
            return f"{name} needs torchvision's EncoderBlock with plain self-attention (encoder.layers.{path})"
    return None


def _explicit(attention: nn.MultiheadAttention, store: list[torch.Tensor], keep: Callable[[torch.Tensor], torch.Tensor]):
    """A forward for ``attention`` (self-attention, batch first) that keeps ``keep`` of its
    attention matrix."""

    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **_: object):
        batch, tokens, width = query.shape
        heads = attention.num_heads
        qkv = F.linear(query, attention.in_proj_weight, attention.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q * math.sqrt(1.0 / (width // heads))) @ k.transpose(-2, -1), dim=-1)
        store.append(keep(weights))  # of (B, heads, tokens, tokens)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, width)
        return attention.out_proj(out), None

    return forward


@contextmanager
def recorded_attention(
    module: nn.Module, keep: Callable[[torch.Tensor], torch.Tensor] = lambda weights: weights
) -> Iterator[list[torch.Tensor]]:
    """Within the block every encoder self-attention of ``module`` appends its attention matrix
    ``(B, heads, tokens, tokens)`` (or ``keep`` of it: the head mean, which takes 1/heads of the
    memory) to the yielded list, block by block; restored on exit."""
    store: list[torch.Tensor] = []
    missing = object()
    patched: list[tuple[nn.MultiheadAttention, object]] = []
    try:
        for block in (m for m in module.modules() if isinstance(m, EncoderBlock)):
            attention = block.self_attention
            patched.append((attention, attention.__dict__.get("forward", missing)))
            attention.forward = _explicit(attention, store, keep)
        yield store
    finally:
        for attention, previous in reversed(patched):
            if previous is missing:
                del attention.forward
            else:
                attention.forward = previous


def rollout(matrices: list[torch.Tensor]) -> torch.Tensor:
    """``M_L ⋯ M_1`` of per-block matrices ``(R, tokens, tokens)``, first block first."""
    total = matrices[0]
    for matrix in matrices[1:]:
        total = matrix @ total
    return total


def class_row_map(total: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The class token's row ``(R, tokens, tokens)`` -> patch map repeated to ``size`` pixels."""
    patches = total[:, 0, 1:]
    side = math.isqrt(patches.shape[-1])
    grid = patches.reshape(-1, 1, side, side)
    return F.interpolate(grid, size=size, mode="nearest")[:, 0]


class _AttentionMethod(Method):
    kind = "model"
    testing = MethodTesting(difull_exact=True, model="tiny-vit")

    @classmethod
    def model_problem(cls, model: ModelAdapter, layer: str) -> str | None:
        return attention_problem(cls.name, model, layer)

    def maps(
        self, ctx: AttributionContext, images: torch.Tensor, grid: torch.Tensor, classes: torch.Tensor | None
    ) -> torch.Tensor:
        """Maps ``(R, T, H, W)`` of network-layout ``images``, grid images ``grid`` (connected
        settings, ``classes`` None: every target of each row), or ``(R, H, W)`` of DiFull cell
        rows, ``classes`` ``(R,)`` each row's own."""
        raise NotImplementedError

    def attribute(self, ctx: AttributionContext) -> torch.Tensor:
        setting = ctx.setting
        images = setting.split(ctx.x)
        rows = cell_rows(ctx)
        if rows is None:
            chunks = [torch.arange(start, min(start + ctx.batch_size, len(images)), device=ctx.device)
                      for start in range(0, len(images), ctx.batch_size)]
            return torch.cat([self.maps(ctx, images[grid], grid, None) for grid in chunks])
        count = ctx.targets.count
        slot = torch.arange(len(rows), device=ctx.device)
        classes = ctx.targets.classes[slot // count, slot % count]
        cells, step = images[rows], ctx.batch_size * count
        maps = torch.cat([
            self.maps(ctx, cells[start : start + step], slot[start : start + step] // count, classes[start : start + step])
            for start in range(0, len(cells), step)
        ])
        return ctx.cells_to_map(maps.view(ctx.grids, count, *maps.shape[-2:]))


@METHODS.register("attention-rollout")
class AttentionRollout(_AttentionMethod):
    name = "attention-rollout"

    def maps(self, ctx, images, grid, classes):
        with torch.no_grad(), recorded_attention(ctx.setting.model.module, lambda a: a.mean(1)) as store:
            ctx.setting.model.run_blocks(images)
        eye = torch.eye(store[0].shape[-1], dtype=images.dtype, device=images.device)
        mixed = [0.5 * a + 0.5 * eye for a in store]
        mixed = [m / m.sum(-1, keepdim=True) for m in mixed]
        out = class_row_map(rollout(mixed), tuple(images.shape[-2:]))
        return out if classes is not None else out[:, None].expand(-1, ctx.targets.count, -1, -1)


@METHODS.register("chefer")
class CheferAttribution(_AttentionMethod):
    name = "chefer"

    def maps(self, ctx, images, grid, classes):
        setting, model = ctx.setting, ctx.setting.model
        size = tuple(images.shape[-2:])
        with torch.enable_grad(), recorded_attention(model.module) as store:
            x = images.detach().requires_grad_(True)  # the parameters may be frozen
            features = model.run_blocks(x)
            if classes is not None:
                grads = own_class_gradients(model.head(features), classes, store)
                return class_row_map(self._rollout(store, grads), size)
            logits = setting.heads(features)
            rows = torch.arange(len(images), device=images.device)
            out = []
            for t in range(ctx.targets.count):
                pick = torch.zeros_like(logits)
                pick[rows, ctx.targets.heads[t], ctx.targets.classes[grid, t]] = 1
                grads = torch.autograd.grad(logits, store, pick, retain_graph=t < ctx.targets.count - 1)
                out.append(class_row_map(self._rollout(store, grads), size))
            return torch.stack(out, 1)

    @staticmethod
    def _rollout(store: list[torch.Tensor], grads) -> torch.Tensor:
        eye = torch.eye(store[0].shape[-1], dtype=store[0].dtype, device=store[0].device)
        return rollout([eye + (g * a.detach()).clamp(min=0).mean(1) for a, g in zip(store, grads)])
