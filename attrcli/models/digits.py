"""The two embedded digits models, trained on first use and cached.

``digits-vgg11`` follows the paper's CIFAR10 model (supplement I.1): VGG11 without batch norm and
with its last two conv layers removed, so on a 32-pixel cell the final conv layer is 4×4 before
the last max-pool. ``digits-resnet18`` is ResNet18 (BasicBlock, [2, 2, 2, 2], batch norm) with a
CIFAR-style stem (3×3 conv, stride 1, no max-pool), so ``layer4`` is 4×4. Both use reduced widths
so they train in seconds on a laptop CPU.

Training uses the digits training split only (grids use the held-out split), is deterministic,
and runs at most once per cache folder: the state dict goes to ``<cache>/models/<name>.pt`` with
a JSON sidecar ``<name>.json`` (held-out accuracy, training time, recipe, weights hash). A cache
whose sidecar does not match the current recipe or whose weights do not match the recorded hash
is retrained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from attrcli import __version__
from attrcli.data import digits as data
from attrcli.errors import UserError
from attrcli.models.registry import (
    MODELS,
    ModelSpec,
    Progress,
    StateDict,
    build_module,
    state_dict_hash,
)
from attrcli.models.training import TrainConfig, predict, train_classifier
from attrcli.store import artifact_lock
from attrcli.store.files import atomic_output

CONFIDENCE = 0.99  # the grids' default --min-conf; the sidecar counts images above it


class DigitsVGG(nn.Module):
    """VGG11 without batch norm and without its last two conv layers (supplement I.1).

    Conv widths ``[w, M, 2w, M, 4w, 4w, M, 8w, 8w, M]`` (6 convs); on 32×32 inputs the last conv
    is 4×4 and the classifier sees ``8w × 2 × 2``. Attribute names follow torchvision's VGG.
    """

    def __init__(self, width: int = 16, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in (width, "M", 2 * width, "M", 4 * width, 4 * width, "M", 8 * width, 8 * width, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(
            nn.Linear(channels * 2 * 2, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DigitsResNet(nn.Module):
    """ResNet18 topology (BasicBlock ×[2, 2, 2, 2], batch norm) with a CIFAR-style stem.

    Stage widths ``widths``; stride 1 stem and no max-pool, so stages run at 32, 16, 8 and 4
    pixels on a 32-pixel cell. Attribute names follow torchvision's ResNet.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity()
        stages = []
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or channels != width:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(width),
                )
            stages.append(
                nn.Sequential(BasicBlock(channels, width, stride, downsample), BasicBlock(width, width))
            )
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class DigitsRecipe:
    """Architecture arguments and training recipe of one digits model."""

    architecture: dict[str, Any]
    train: TrainConfig


RECIPES: dict[str, DigitsRecipe] = {
    "digits-vgg11": DigitsRecipe({"width": 16, "hidden": 256}, TrainConfig()),
    "digits-resnet18": DigitsRecipe({"widths": (8, 16, 32, 64)}, TrainConfig()),
}


def cache_paths(cache_dir: Path | str, name: str) -> tuple[Path, Path]:
    """``(<cache>/models/<name>.pt, <cache>/models/<name>.json)``."""
    folder = Path(cache_dir) / "models"
    return folder / f"{name}.pt", folder / f"{name}.json"


def recipe_config(name: str) -> dict[str, Any]:
    """Everything that determines the trained weights (compared with the sidecar's copy)."""
    recipe = RECIPES[name]
    return json.loads(
        json.dumps(
            {
                "architecture": recipe.architecture,
                "train": recipe.train.as_dict(),
                "split": {"seed": data.SPLIT_SEED, "heldout_fraction": data.HELDOUT_FRACTION},
                "cell_size": data.CELL_SIZE,
                "mean": data.MEAN,
                "std": data.STD,
            }
        )
    )


def read_record(cache_dir: Path | str, name: str) -> dict[str, Any] | None:
    """The sidecar of a cached model, or None if absent, unreadable or for another recipe."""
    _, meta = cache_paths(cache_dir, name)
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("config") != recipe_config(name):
        return None
    return record


def _load_cached(cache_dir: Path, name: str) -> StateDict | None:
    record = read_record(cache_dir, name)
    weights, _ = cache_paths(cache_dir, name)
    if record is None:
        return None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - missing or damaged cache file: retrain
        return None
    if not isinstance(state, dict) or state_dict_hash(state) != record.get("weights_hash"):
        return None
    return state


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    with atomic_output(path, what="model cache") as tmp:  # no device or folder replaced, no leftovers
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def _train(spec: ModelSpec, progress: Progress | None) -> tuple[StateDict, dict]:
    recipe = RECIPES[spec.name]
    module = build_module(spec)
    images, labels, _ = data.load_digits_split("train")
    result = train_classifier(
        module,
        images,
        labels,
        mean=spec.mean,
        std=spec.std,
        config=recipe.train,
        progress=progress,
        description=f"training {spec.name}",
    )
    held_images, held_labels, _ = data.load_digits_split("heldout")
    confidence, predicted = predict(module, held_images, mean=spec.mean, std=spec.std).max(dim=1)
    correct = predicted == held_labels
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    record = {
        "model": spec.name,
        "heldout_accuracy": float(correct.float().mean()),
        "heldout_images": len(held_labels),
        f"heldout_confident_{CONFIDENCE}": int((correct & (confidence >= CONFIDENCE)).sum()),
        "train_images": len(labels),
        "train_seconds": round(result.seconds, 3),
        "epochs": result.epochs,
        "seed": recipe.train.seed,
        "final_loss": result.final_loss,
        "attrcli_version": __version__,
        "torch_version": torch.__version__,
        "torch_threads": result.threads,
        "weights_hash": state_dict_hash(state),
        "config": recipe_config(spec.name),
    }
    return state, record


def train_digits_model(
    name: str, *, cache_dir: Path | str, progress: Progress | None = None, force: bool = False
) -> dict[str, Any]:
    """Train digits model ``name`` into ``cache_dir`` unless cached; return its sidecar record.

    Holds the model's artifact lock while training, so concurrent callers wait for one run.
    """
    if name not in RECIPES:
        raise UserError(f"unknown digits model {name!r}; valid: {', '.join(sorted(RECIPES))}")
    spec = MODELS.get(name)
    _ensure_cached(spec, Path(cache_dir), progress, force=force)
    record = read_record(cache_dir, name)
    if record is None:  # pragma: no cover - written just above
        raise RuntimeError(f"training {name} left no readable cache in {cache_dir}")
    return record


def _ensure_cached(
    spec: ModelSpec, cache_dir: Path, progress: Progress | None, *, force: bool = False
) -> StateDict:
    state = None if force else _load_cached(cache_dir, spec.name)
    if state is not None:
        return state
    weights, meta = cache_paths(cache_dir, spec.name)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with artifact_lock(weights, wait=True):
        state = None if force else _load_cached(cache_dir, spec.name)
        if state is None:
            state, record = _train(spec, progress)
            meta.unlink(missing_ok=True)
            _atomic_write(weights, lambda handle: torch.save(state, handle))
            text = json.dumps(record, indent=2, sort_keys=True).encode()
            _atomic_write(meta, lambda handle: handle.write(text))
    return state


def digits_weights(spec: ModelSpec, *, cache_dir: Path, progress: Progress | None) -> StateDict:
    """Default weights of a digits model: the cached training result, training it if needed."""
    return _ensure_cached(spec, Path(cache_dir), progress)


def _register(name: str, family: str, module: type[nn.Module], description: str, **extra) -> None:
    MODELS.register(name)(
        ModelSpec(
            name=name,
            family=family,
            factory=partial(module, **RECIPES[name].architecture, num_classes=len(data.CLASS_NAMES)),
            cell_size=data.CELL_SIZE,
            num_classes=len(data.CLASS_NAMES),
            mean=data.MEAN,
            std=data.STD,
            description=description,
            default_weights=digits_weights,
            **extra,
        )
    )


# The paper evaluates its CIFAR10 VGG11 at conv3 (supplement I.1); vgg_adapter's rule (conv n//2+1)
# would pick conv 4 of 6, so the middle alias is set to the ReLU after conv 3 (features.7).
_register(
    "digits-vgg11",
    "vgg",
    DigitsVGG,
    "VGG11 without BN, last two convs removed (as the paper's CIFAR10 model); sklearn digits",
    aliases={"middle": "features.7"},
)
_register(
    "digits-resnet18",
    "resnet",
    DigitsResNet,
    "ResNet18 with BN, CIFAR-style stem, reduced widths; sklearn digits",
)
