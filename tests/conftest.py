"""Fixtures shared by every test folder: the tiny models and grid files, the trained digits models,
and the toy method that every registry-driven generic test must pick up.

Tiny models are factories (fixtures returning a function), since tests build fresh copies with
their own seed or cell size and may change their weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attrcli.models.adapter import ModelAdapter
from attrcli.store import write_artifact
from tests.fixtures_digits import trained_digits_cache  # noqa: F401  (session fixture: digits models trained once)
from tests.models.tiny_families import BUILDERS, tiny
from tests.structure import toy_method  # noqa: F401  (registers the toy method for the whole session)

TOY_CELL, TOY_CLASSES = 8, 5  # the hand-built toy models: 8-pixel cells, 5 classes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "generic: a registry-driven test, parametrised over every registered method "
        "(tests/structure/test_registry_generic.py checks that each picks up the toy method)",
    )


def make_conv_model(seed: int = 0, cell: int = TOY_CELL) -> ModelAdapter:
    """Two convolutions and a linear head, float64 (on 8-pixel cells the final map is 4×4 per cell)."""
    torch.manual_seed(seed)
    feats = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
    )
    linear = nn.Linear(6 * (cell // 2) ** 2, TOY_CLASSES)
    module = nn.Sequential(feats, nn.Flatten(), linear).double().eval()
    return ModelAdapter(
        name="tiny-conv", module=module, blocks=[(f"0.{i}", m) for i, m in enumerate(feats)],
        head=lambda f: linear(f.flatten(1)), gap_head=False, aliases={"middle": "0.2", "final": "0.4"},
        stage_layers=["0.1", "0.4"], cell_size=cell, num_classes=TOY_CLASSES, mean=(0, 0, 0), std=(1, 1, 1),
    )


def make_linear_model(seed: int = 0) -> ModelAdapter:
    """One identity block and a linear head, float64: every logit is linear in the layer's map."""
    torch.manual_seed(seed)
    linear = nn.Linear(3 * TOY_CELL * TOY_CELL, TOY_CLASSES).double()
    module = nn.Sequential(nn.Identity(), nn.Flatten(), linear).eval()
    return ModelAdapter(
        name="tiny-linear", module=module, blocks=[("0", module[0])], head=lambda f: linear(f.flatten(1)),
        gap_head=False, aliases={"middle": "0", "final": "0"}, stage_layers=["0"], cell_size=TOY_CELL,
        num_classes=TOY_CLASSES, mean=(0, 0, 0), std=(1, 1, 1),
    )


def make_toy_grid_file(path: Path, variant: str = "distinct", count: int = 3, n: int = 2) -> Path:
    """A grid file of random float32 images for the toy models (8-pixel cells, 5 classes)."""
    rng = np.random.default_rng(0)
    size = n * TOY_CELL
    labels = np.stack([rng.permutation(TOY_CLASSES)[: n * n] for _ in range(count)])
    if variant == "corners":  # the two corners hold one class
        labels[:, -1] = labels[:, 0]
    return write_artifact(
        path,
        data={
            "images": rng.standard_normal((count, 3, size, size)).astype(np.float32),
            "labels": labels.astype(np.int64),
            "sources": np.arange(count * n * n, dtype=np.int64).reshape(count, n * n),
        },
        attrs={"dataset": "toy", "variant": variant, "n": n, "cell_size": TOY_CELL, "mean": [0, 0, 0],
               "std": [1, 1, 1], "seed": 0, "class_names": [str(i) for i in range(TOY_CLASSES)]},
    )


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored afterwards: tests of many tiny ops stall with
    several threads on a busy machine (use with ``pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def conv_model() -> Callable[..., ModelAdapter]:
    """Factory ``(seed=0, cell=8)`` of the two-convolution toy model."""
    return make_conv_model


@pytest.fixture
def linear_model() -> Callable[..., ModelAdapter]:
    """Factory ``(seed=0)`` of the linear toy model."""
    return make_linear_model


@pytest.fixture
def toy_grid_file() -> Callable[..., Path]:
    """Factory ``(path, variant="distinct", count=3)`` of a grid file for the toy models."""
    return make_toy_grid_file


@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny_family(request) -> ModelAdapter:
    """Each tiny ConvNeXt, Swin (v1, v2) and ViT in turn (tests/models/tiny_families.py), float64."""
    return tiny(request.param)
