"""Running any registered method the way the engine does, for the registry-driven tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attrcli.data.gridfile import GridFile
from attrcli.engine.attribute import compute_maps
from attrcli.errors import UserError
from attrcli.methods import METHODS, parse_method
from attrcli.methods.applicability import method_problem
from attrcli.settings import create_setting
from attrcli.stages.plan import plan_jobs

N, GRIDS = 2, 2  # 2×2 grids, two grid images


def spec_of(name: str) -> str:
    return METHODS.get(name).testing.spec(name)


def base_class(name: str) -> type:
    """The class whose maps a method's maps come from (derived methods: their base)."""
    cls = METHODS.get(name)
    return METHODS.get(cls.base) if cls.kind == "derived" else cls


def model_of(name: str, conv_model):
    """The model the generic tests run ``name`` on: the tiny family its ``MethodTesting.model``
    names (attention rollout: the tiny ViT), else the toy CNN of ``conv_model()``."""
    from tests.models.tiny_families import tiny

    family = base_class(name).testing.model
    return tiny(family) if family else conv_model()


def layers_of(name: str, setting, layers) -> tuple[str, ...]:
    """``layers``; for a method tested on its own family (``MethodTesting.model``) those of them
    where it is defined (at least one: the others are refused, which the generic tests check
    on every family)."""
    if not base_class(name).testing.model:
        return tuple(layers)
    kept = tuple(layer for layer in layers if method_problem(setting, base_class(name), layer) is None)
    assert kept, (name, layers)
    return kept


def case_of(name: str, conv_model, setting_name: str, **kwargs):
    """:func:`case` on :func:`model_of`; skips a setting the method's own family does not define
    (DiPart of a ViT)."""
    import pytest

    try:
        return case(model_of(name, conv_model), setting_name, **kwargs)
    except UserError:
        if not base_class(name).testing.model:
            raise
        pytest.skip(f"setting {setting_name} is not defined for {base_class(name).testing.model}")


def case(model, setting_name: str, *, grids: int = GRIDS, seed: int = 0):
    """A setting and random grid images ``x`` with labels (distinct classes per grid image)."""
    setting = create_setting(setting_name, model, N)
    g = torch.Generator().manual_seed(seed)
    size = N * model.cell_size
    x = torch.randn(grids, 3, size, size, generator=g, dtype=torch.float64)
    labels = torch.stack([torch.randperm(model.num_classes, generator=g)[: N * N] for _ in range(grids)])
    return setting, x, labels


def fitted_spec(name: str, setting, layer: str) -> str:
    """The method's tiny spec, or its preset where the tiny config does not fit the layer's map
    (an occlusion window larger than a small final map)."""
    spec, model = spec_of(name), setting.model
    try:
        method = parse_method(spec).build(cell_size=model.cell_size, layer=layer)
        method.check(layer=layer, map_size=setting.map_size(model.layer_index(layer)))
    except UserError:
        return name
    return spec


def run_maps(setting, x, labels, cells, layers, name, *, batch_size=4, seed=0) -> dict[str, torch.Tensor]:
    """The engine's maps ``(B, T, h, w)`` of method ``name`` (its tiny spec) per layer; a derived
    method's from its base method's maps, as the engine derives them from the cached artifact."""
    cls = METHODS.get(name)
    model = setting.model
    if cls.kind == "derived":
        base = run_maps(setting, x, labels, cells, layers, cls.base, batch_size=batch_size, seed=seed)
        spec = parse_method(spec_of(name))
        return {layer: spec.build(cell_size=model.cell_size, layer=layer).derive(m) for layer, m in base.items()}
    grid_file = GridFile(Path("test.h5"), "test", np.empty(0), np.empty(0), setting.n, model.cell_size,
                         setting.variant, model.num_classes, "")
    jobs = []
    for layer in layers:
        spec = parse_method(fitted_spec(name, setting, layer))
        jobs += plan_jobs(grid_file, setting, cells, [layer], [spec], Path("unused"), seed=seed,
                          batch_size=batch_size)[0]
    maps = compute_maps(setting, x, labels, cells, jobs, batch_size=batch_size, seed=seed)
    return {job.layer: value for job, value in maps.items()}
