"""B-cos networks (Böhle, Fritz & Schiele, "B-cos Networks: Alignment is All We Need for
Interpretability", CVPR 2022; "B-cos Alignment for Inherently Interpretable CNNs and Vision
Transformers", TPAMI 2024) from the ``bcos`` package, as ``bcos:NAME``.

A B-cos network is dynamic linear, y = W(x)ᵀ x, without biases, and takes the image in [0, 1]
with its inverse channels, ``[x, 1 − x]`` (6 channels). The adapter's first block undoes the
grid's mean/std normalisation and does that encoding, so grid files stay as they are and other
models share them; that block also takes an already encoded 6-channel input unchanged (the
``bcos`` method explains the encoded image, :mod:`attrcli.methods.bcos`).

Structure per architecture (the package's classes; docs/architectures.md):

- ResNet: ``conv1``, ``bn1``, ``pool``, each residual block; ``layer2`` / ``layer4``.
- DenseNet: every module of ``features`` (a dense block is one block); stage 2 / stage 4.
- VGG (``vgg11_bnu``): every module of ``features``; the norm after conv n/2 + 1 / after the last
  conv, as torchvision's VGG. Its classifier starts with a 7×7 convolution, so GridPG slides it.
- ConvNeXt: the stem, each ``CNBlock``, each downsampling layer; stage 2 / stage 4.
- Simple ViT: the patch embedding and every encoder, each shown as a map ``(B, C, h, w)`` (no
  class token: the head averages all tokens, so every layer is a map and every method runs);
  block L/2 − 1 / block L − 1. Position embeddings are 2-D sin-cos, defined for any grid.

The classifier heads apply a per-position classifier, then global average pooling, then the
logit layer's fixed bias (−log(classes − 1)).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter, _no_inplace

if TYPE_CHECKING:
    from attrcli.models.registry import ModelSpec

PREFIX = "bcos:"
INSTALL = "pip install 'attrcli[bcos]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED = ("BcosResNet", "BcosDenseNet", "BcosVGG", "BcosConvNeXt", "SimpleViT")


def import_bcos() -> Any:
    """The ``bcos`` package's pretrained entry points, or a one-line UserError on how to install it."""
    try:
        import bcos.models.pretrained as pretrained
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or "bcos").split(".")[0]
        raise UserError(f"B-cos models need the {missing} package, which is not installed: {INSTALL}") from None
    return pretrained


def supported_names() -> list[str]:
    """The package's B-cos entry points (its ``standard_*`` ViTs are not B-cos networks)."""
    return sorted(name for name in import_bcos().list_available() if not name.startswith("standard_"))


def bcos_spec(name: str, *, cell_size: int | None = None, **kwargs: Any) -> ModelSpec:
    """The spec of ``bcos:NAME``; ``kwargs`` go to the package's entry point (e.g. ``num_classes``),
    ``cell_size`` overrides the ImageNet 224 (tests run small cells)."""
    from attrcli.models.registry import ModelSpec

    valid = supported_names()
    if name not in valid:
        raise UserError(f"unknown B-cos model {name!r}; valid: {', '.join(valid)}")
    factory = partial(getattr(import_bcos(), name), pretrained=False, **kwargs)
    with torch.device("meta"):
        module = factory()
    if type(_network(module)).__name__ not in SUPPORTED:
        raise UserError(f"B-cos model {name} is a {type(_network(module)).__name__}; valid: {', '.join(valid)}")
    return ModelSpec(
        name=PREFIX + name if not kwargs and cell_size is None else f"{PREFIX}{name}+custom",
        family="bcos",
        factory=factory,
        cell_size=int(cell_size or 224),
        num_classes=int(_num_classes(module)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description=f"B-cos {name} (bcos package), ImageNet",
        default_weights=bcos_weights,
    )


class _Url(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def bcos_weights(spec: ModelSpec, *, cache_dir: Path, progress: Any = None) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights for ``spec`` from torch.hub's cache, never downloaded."""
    from attrcli.models.registry import load_state_dict_file

    name = spec.name[len(PREFIX):]

    def record(url: str, *args: Any, **kwargs: Any) -> None:
        raise _Url(url)

    try:  # the entry point names its file by calling torch.hub; the call is stopped there
        with mock.patch.object(torch.hub, "load_state_dict_from_url", record), torch.device("meta"):
            getattr(import_bcos(), name)(pretrained=True)
    except _Url as found:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(found.url).path).name
    else:
        raise UserError(f"B-cos model {name} names no pretrained weights; pass --weights FILE or --weights random")
    if not path.is_file():
        raise UserError(
            f"no ImageNet weights for {spec.name}: attrcli does not download; put the bcos package's "
            f"file at {path} or pass --weights FILE (.pth or .safetensors) or --weights random"
        )
    return load_state_dict_file(path)


# --- encoding ------------------------------------------------------------------------------


class BcosEncoding(nn.Module):
    """Normalised images ``(B, 3, H, W)`` to the B-cos input ``[x, 1 − x]`` with x = z·std + mean;
    a 6-channel input is taken as already encoded and passes unchanged."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1] == 2 * len(self.mean):
            return z
        mean = torch.tensor(self.mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        x = z * std + mean
        return torch.cat([x, 1 - x], dim=1)


class Encoded(nn.Module):
    """The first block of a B-cos adapter: the encoding, then the model's first module."""

    def __init__(self, module: nn.Module, encoding: BcosEncoding) -> None:
        super().__init__()
        self.encoding = encoding
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(self.encoding(z))


def encoding_of(model: ModelAdapter) -> BcosEncoding | None:
    """The B-cos encoding in the adapter's first block (also when a setting wrapped it), or None."""
    if not model.blocks:
        return None
    return next((m for m in model.blocks[0][1].modules() if isinstance(m, BcosEncoding)), None)


# --- structure -----------------------------------------------------------------------------


def _network(module: nn.Module) -> nn.Module:
    """The network inside the package's wrapper (its ViTs are ``BcosSequential(vit, logit layer)``)."""
    return module[0] if isinstance(module, nn.Sequential) else module


def _num_classes(module: nn.Module) -> int:
    net = _network(module)
    if hasattr(net, "num_classes"):
        return net.num_classes
    return net.linear_head.linear.out_features


class MapTokens(nn.Module):
    """A Simple-ViT step on maps ``(B, C, h, w)``: the patch embedding (``embed``) returns its map;
    an encoder takes the map as tokens (adding the position embedding first when ``first``)."""

    def __init__(self, vit: nn.Module, module: nn.Module, *, embed: bool = False, first: bool = False) -> None:
        super().__init__()
        self.module, self.embed, self.first = module, embed, first
        self.position = vit.positional_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed:
            return self.module(x).permute(0, 3, 1, 2)
        batch, channels, height, width = x.shape
        grid = x.permute(0, 2, 3, 1)
        tokens = grid.reshape(batch, height * width, channels)
        if self.first:
            tokens = tokens + self.position(grid)
        return self.module(tokens).reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def _cnn_blocks(net: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[str], dict[str, str]]:
    """Blocks, stage names and stage aliases of the package's CNNs."""
    kind = type(net).__name__
    blocks: list[tuple[str, nn.Module]] = []
    stages: list[str] = []
    alias: dict[str, str] = {}
    if kind == "BcosResNet":
        blocks = [(n, getattr(net, n)) for n in ("conv1", "bn1", "pool") if getattr(net, n, None) is not None]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            seq = getattr(net, stage, None)
            if seq is None:
                continue
            blocks += [(f"{stage}.{i}", block) for i, block in enumerate(seq)]
            alias[stage] = f"{stage}.{len(seq) - 1}"
            stages.append(stage)
    elif kind == "BcosDenseNet":
        blocks = [(f"features.{n}", m) for n, m in net.features.named_children()]
        stages = [name for name, _ in blocks if "denseblock" in name]
    elif kind == "BcosVGG":
        blocks = [(f"features.{i}", m) for i, m in enumerate(net.features)]
        convs = [i for i, (_, m) in enumerate(blocks) if isinstance(m, nn.Conv2d) or "Conv" in type(m).__name__]
        # a conv "unit" ends with the norm after the conv (the package's VGGs have no ReLU)
        stages = [blocks[i + 1][0] if i + 1 < len(blocks) and "Norm" in type(blocks[i + 1][1]).__name__ else blocks[i][0]
                  for i in convs]
    else:  # BcosConvNeXt: stem conv and norm, stages of CNBlocks, downsampling layers
        for index, module in enumerate(net.features):
            name = f"features.{index}"
            if isinstance(module, nn.Sequential) and all(type(b).__name__ == "CNBlock" for b in module):
                blocks += [(f"{name}.{j}", block) for j, block in enumerate(module)]
                alias[name] = f"{name}.{len(module) - 1}"
                stages.append(name)
            else:
                blocks.append((name, module))
    return blocks, stages, alias


def bcos_adapter(module: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int) -> ModelAdapter:
    """Adapter of a ``bcos`` package network (see the module docstring)."""
    _no_inplace(module)
    module.eval()
    net = _network(module)
    encoding = BcosEncoding(mean, std)
    if type(net).__name__ == "SimpleViT":
        paths = [f"0.transformer.{n}" for n, _ in net.transformer.named_children()]
        blocks = [("0.to_patch_embedding", MapTokens(net, net.to_patch_embedding, embed=True))]
        blocks += [(p, MapTokens(net, enc, first=i == 0)) for i, (p, enc) in enumerate(zip(paths, net.transformer))]
        logit_layer = module[1]

        def head(features: torch.Tensor) -> torch.Tensor:
            tokens = features.flatten(2).transpose(1, 2)
            return logit_layer(net.linear_head(net.to_latent(tokens.mean(dim=1))))

        aliases = {"middle": paths[len(paths) // 2 - 1], "final": paths[-1]}
        stages, alias, gap, parts = [name for name, _ in blocks], {}, True, False
    else:
        blocks, stages, alias = _cnn_blocks(net)
        classifier = net.get_classifier()

        def head(features: torch.Tensor) -> torch.Tensor:
            logits = F.adaptive_avg_pool2d(classifier(features), 1).flatten(1)
            return net.logit_layer(logits)

        # a classifier with a spatial kernel (VGG's 7×7) is slid over cell-sized windows in GridPG
        gap = all(max(m.kernel_size) == 1 for m in classifier.modules() if isinstance(m, nn.Conv2d))
        middle = stages[len(stages) // 2] if type(net).__name__ == "BcosVGG" else stages[min(1, len(stages) - 1)]
        aliases, parts = {"middle": middle, "final": stages[-1]}, True
    first, rest = blocks[0], blocks[1:]
    return ModelAdapter(
        name=name, module=module, blocks=[(first[0], Encoded(first[1], encoding)), *rest], head=head,
        gap_head=gap, aliases=aliases, stage_layers=stages, cell_size=cell_size, num_classes=num_classes,
        mean=tuple(mean), std=tuple(std), layer_alias=alias, part_heads=parts,
    )
