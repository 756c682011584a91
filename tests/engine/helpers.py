"""Small models and grid files for the engine, settings and method tests.

Models are torchvision's own VGG and ResNet classes, randomly initialised from a fixed seed, so
the adapters are exactly what users get for those families. ``tiny_vgg`` keeps the VGG11
topology at 1/8 of its width (fast enough for float64 comparisons with Captum); ``vgg11`` and
``resnet18`` are the real torchvision architectures with a 10-class head (VGG: a small
classifier swapped in, since its first layer would otherwise take 25088 × 4096 weights).
The zero-argument factories at the bottom are models for ``--model tests.engine.helpers:NAME``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers

from attrcli.engine.attribute import compute_maps
from attrcli.data.gridfile import GridFile
from attrcli.stages.plan import plan_jobs
from attrcli.methods import parse_method
from attrcli.models.adapter import ModelAdapter, resnet_adapter, vgg_adapter
from attrcli.settings import GridSetting
from attrcli.store import write_artifact

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CLASSES = 10
VGG11_CONFIG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def _seeded(build, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _small_classifier(channels: int, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden, CLASSES),
    )


def _vgg(width_divisor: int) -> nn.Module:
    config = [c if c == "M" else c // width_divisor for c in VGG11_CONFIG]
    model = torchvision.models.VGG(make_layers(config), num_classes=CLASSES)
    model.classifier = _small_classifier(512 // width_divisor)
    return model


def tiny_vgg(*, cell: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64, name: str = "tiny-vgg") -> ModelAdapter:
    """VGG11 topology (torchvision's VGG class) at 1/8 width."""
    module = _seeded(lambda: _vgg(8), seed).to(dtype)
    return vgg_adapter(module, name=name, cell_size=cell, mean=MEAN, std=STD, num_classes=CLASSES)


def vgg11(*, cell: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelAdapter:
    """torchvision's vgg11 features with a small 10-class classifier."""
    module = _seeded(lambda: _vgg(1), seed).to(dtype)
    return vgg_adapter(module, name="vgg11", cell_size=cell, mean=MEAN, std=STD, num_classes=CLASSES)


def resnet18(*, cell: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelAdapter:
    """torchvision's resnet18 with 10 classes."""
    module = _seeded(lambda: torchvision.models.resnet18(num_classes=CLASSES), seed).to(dtype)
    return resnet_adapter(module, name="resnet18", cell_size=cell, mean=MEAN, std=STD, num_classes=CLASSES)


def grid_images(count: int, *, n: int = 2, cell: int = 32, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random normalised grid images ``(count, 3, n·cell, n·cell)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, n * cell, n * cell, generator=g).to(dtype)


def grid_labels(count: int, *, n: int = 2, variant: str = "distinct", seed: int = 0) -> np.ndarray:
    """Labels ``(count, n²)``: distinct classes, or the two corners sharing one (corners)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(CLASSES)[: n * n] for _ in range(count)])
    if variant == "corners":
        labels[:, -1] = labels[:, 0]
    return labels.astype(np.int64)


def write_grids(
    path: Path, *, count: int = 3, n: int = 2, cell: int = 32, variant: str = "distinct",
    classes: int = CLASSES, seed: int = 0,
) -> Path:
    """A grid file with the datasets and attributes of docs/artifacts.md."""
    images = grid_images(count, n=n, cell=cell, seed=seed, dtype=torch.float32).numpy()
    labels = grid_labels(count, n=n, variant=variant, seed=seed) % classes
    return write_artifact(
        path,
        data={
            "images": images,
            "labels": labels,
            "sources": np.arange(count * n * n, dtype=np.int64).reshape(count, n * n),
        },
        attrs={
            "dataset": "random",
            "variant": variant,
            "n": n,
            "cell_size": cell,
            "mean": list(MEAN),
            "std": list(STD),
            "seed": seed,
            "min_conf": 0.0,
            "models": ["tiny-vgg"],
            "per_model": False,
            "reused": 0,
            "class_names": [str(i) for i in range(classes)],
        },
    )


def engine_maps(
    setting: GridSetting, x: torch.Tensor, labels: torch.Tensor, cells: list[int],
    layers: list[str], methods: list[str], *, batch_size: int = 4,
) -> dict[tuple[str, str], torch.Tensor]:
    """The engine's maps ``(B, T, h, w)`` of one chunk, keyed by (layer, method spec)."""
    grid_file = GridFile(Path("test.h5"), "test", np.empty(0), np.empty(0), setting.n,
                         setting.model.cell_size, setting.variant, setting.model.num_classes, "")
    specs = [parse_method(m) for m in methods]
    jobs, _ = plan_jobs(grid_file, setting, cells, layers, specs, Path("unused"))
    maps = compute_maps(setting, x, labels, cells, jobs, batch_size=batch_size)
    return {(job.layer, job.spec.canonical()): value for job, value in maps.items()}


def tiny_vgg_model() -> ModelAdapter:
    """Tiny VGG11-like model, random weights (for --model tests.engine.helpers:tiny_vgg_model)."""
    return tiny_vgg(dtype=torch.float32)


def tiny_resnet_model() -> ModelAdapter:
    """torchvision resnet18, random weights (for --model tests.engine.helpers:tiny_resnet_model)."""
    return resnet18()
