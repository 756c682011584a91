"""torchvision's ImageNet classifiers: the paper's VGG and ResNet families (supplement H.2), and
ConvNeXt, Swin (v1 and v2) and ViT (docs/architectures.md).

Default weights are torchvision's own files, taken from torch.hub's cache where torchvision puts
them; attrcli never downloads. Without the file, the error names the exact path to put it at.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from attrcli.errors import UserError
from attrcli.models.registry import (
    MODELS,
    ModelSpec,
    Progress,
    StateDict,
    load_state_dict_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CELL = 224
IMAGENET_CLASSES = 1000

VGG_NAMES = tuple(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn"))
RESNET_NAMES = tuple(f"resnet{depth}" for depth in (18, 34, 50, 101, 152))
CONVNEXT_NAMES = tuple(f"convnext_{size}" for size in ("tiny", "small", "base", "large"))
SWIN_NAMES = ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")
VIT_NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")  # vit_h_14's weights are 518-pixel
SWIN_V2_CELL = 256  # swin_v2's ImageNet weights are for 256-pixel images (8×8 windows)


def hub_weights_path(arch: str) -> Path:
    """Where torchvision caches the default ImageNet weights of ``arch``."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_weights(spec: ModelSpec, *, cache_dir: Path, progress: Progress | None) -> StateDict:
    """torchvision's default weights for ``spec.name`` from torch.hub's cache, never downloaded."""
    path = hub_weights_path(spec.name)
    if not path.is_file():
        raise UserError(
            f"no ImageNet weights for {spec.name}: attrcli does not download; put torchvision's "
            f"file at {path} or pass --weights FILE"
        )
    return load_state_dict_file(path)


def _register(name: str, family: str, description: str, cell_size: int = IMAGENET_CELL) -> None:
    MODELS.register(name)(
        ModelSpec(
            name=name,
            family=family,
            factory=partial(getattr(torchvision.models, name), weights=None),
            cell_size=cell_size,
            num_classes=IMAGENET_CLASSES,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=description,
            default_weights=torchvision_weights,
        )
    )


for _name in VGG_NAMES:
    _bn = " with batch norm" if _name.endswith("_bn") else ""
    _register(_name, "vgg", f"torchvision {_name[:-3] if _bn else _name}{_bn}, ImageNet")
for _name in RESNET_NAMES:
    _register(_name, "resnet", f"torchvision {_name}, ImageNet")
for _name in CONVNEXT_NAMES:
    _register(_name, "convnext", f"torchvision {_name}, ImageNet")
for _name in SWIN_NAMES:
    _v2 = "_v2_" in _name
    _register(_name, "swin", f"torchvision {_name}, ImageNet", SWIN_V2_CELL if _v2 else IMAGENET_CELL)
for _name in VIT_NAMES:
    _register(_name, "vit", f"torchvision {_name}, ImageNet (class-token head)")
