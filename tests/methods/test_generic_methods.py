"""Properties every registered method must have, parametrised over the registries.

Each test runs over ``METHODS`` (and ``SETTINGS`` where settings matter), reading what it needs
from the method class: its kind, seeded flag, where it applies (attrcli.methods.applicability)
and :class:`~attrcli.methods.base.MethodTesting` (a cheap config, the DiFull structural claim).
Registering a method puts it under every test here; the toy method of tests/structure shows it
(tests/structure/test_registry_generic.py). The models are the float64 toy models of
tests/conftest.py (8-pixel cells), or the tiny family a method's ``MethodTesting.model`` names
(at the layers where it is defined), and the tiny ConvNeXt, Swin and ViT, so each case takes
milliseconds.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from attrcli.errors import UserError
from attrcli.methods import METHODS, parse_method
from attrcli.methods.applicability import check_method, method_problem, valid_methods
from attrcli.metrics.localization import localization_scores
from attrcli.settings import SETTINGS
from tests.methods.registry_helpers import GRIDS, N, base_class, case, case_of, layers_of, run_maps, spec_of

pytestmark = [pytest.mark.generic, pytest.mark.usefixtures("one_thread")]

NAMES = METHODS.names()
EXACT = [name for name in NAMES if METHODS.get(name).testing.difull_exact]
LAYERS = ("input", "middle", "final")


# --- specs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_and_preset_values_share_one_key(name):
    cls = METHODS.get(name)
    assert cls.name == name and cls.kind in ("gradient", "model", "derived")
    if cls.kind == "derived":
        assert cls.base in NAMES and METHODS.get(cls.base).kind != "derived"
    default = cls.Config()
    assert dataclasses.is_dataclass(default)
    for field in dataclasses.fields(default):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(default, field.name, getattr(default, field.name))
    parsed = parse_method(spec_of(name))
    for cell_size in (8, 32, 224):
        for layer in ("input", "final"):
            canonical = parsed.canonical_for(cell_size=cell_size, layer=layer)
            again = parse_method(canonical.canonical()).canonical_for(cell_size=cell_size, layer=layer)
            assert again == canonical
            assert canonical.build(cell_size=cell_size, layer=layer).config == parsed.build(
                cell_size=cell_size, layer=layer).config
            # every parameter spelled at its preset value is the plain name's artifact
            preset = cls.preset(cell_size=cell_size, layer=layer)
            spelled = ",".join(f"{f.name}={getattr(preset, f.name)}" for f in dataclasses.fields(preset))
            plain = parse_method(name).canonical_for(cell_size=cell_size, layer=layer)
            if spelled:
                assert parse_method(f"{name}:{spelled}").canonical_for(cell_size=cell_size, layer=layer) == plain
            assert {k for k, _ in plain.params} == set(cls.keyed)
    with pytest.raises(UserError, match=rf"^method {re.escape(name)} has no parameter 'nosuch'; valid: ") as refused:
        parse_method(f"{name}:nosuch=1")
    assert "\n" not in str(refused.value)


# --- maps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting_name", SETTINGS.names())
@pytest.mark.parametrize("name", NAMES)
def test_maps_are_finite_grid_layout_maps_of_each_target(name, setting_name, conv_model):
    """At every layer: one map per (grid image, target) at the layer's grid-layout size, finite,
    and not all zero."""
    setting, x, labels = case_of(name, conv_model, setting_name)
    cells = setting.default_cells()
    layers = layers_of(name, setting, LAYERS)
    maps = run_maps(setting, x, labels, cells, layers, name)
    assert sorted(maps) == sorted(layers)
    model = setting.model
    for layer, value in maps.items():
        size = setting.map_size(model.layer_index(layer))
        assert tuple(value.shape) == (GRIDS, len(cells), *size), layer
        assert torch.isfinite(value).all(), layer
        assert value.abs().amax() > 0, layer


@pytest.mark.parametrize("setting_name", SETTINGS.names())
@pytest.mark.parametrize("name", NAMES)
def test_maps_are_deterministic_and_seeded_as_declared(name, setting_name, conv_model):
    """Reruns give identical maps; the seed changes them exactly when the method declares that it
    samples (``seeded``, which puts the seed in the artifact's identity); a grid image's maps do
    not depend on the evaluation batch size, nor (unless seeded) on the other grid images."""
    setting, x, labels = case_of(name, conv_model, setting_name)
    cells = setting.default_cells()
    layers = layers_of(name, setting, ("input", "final"))
    first = run_maps(setting, x, labels, cells, layers, name)
    again = run_maps(setting, x, labels, cells, layers, name)
    reseeded = run_maps(setting, x, labels, cells, layers, name, seed=1)
    batched = run_maps(setting, x, labels, cells, layers, name, batch_size=1)
    seeded = base_class(name).seeded
    for layer in layers:
        assert torch.equal(first[layer], again[layer]), layer
        assert torch.equal(first[layer], reseeded[layer]) != seeded, layer
        torch.testing.assert_close(batched[layer], first[layer], rtol=1e-10, atol=1e-12)
    if not seeded:
        for row in range(GRIDS):
            alone = run_maps(setting, x[row : row + 1], labels[row : row + 1], cells, layers, name)
            for layer in layers:
                torch.testing.assert_close(alone[layer][0], first[layer][row], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_difull_maps_of_some_target_cells_equal_those_among_every_cell(name, conv_model):
    """DiFull computes only the target cells' rows; a method that reads the other cells (a wrong
    ``whole_grid``, say) gets other maps for two targets than among the targets of every cell."""
    setting, x, labels = case_of(name, conv_model, "difull")
    some = run_maps(setting, x, labels, [3, 1], layers_of(name, setting, LAYERS), name)
    every = run_maps(setting, x, labels, [0, 1, 2, 3], layers_of(name, setting, LAYERS), name)
    for layer, value in every.items():
        expected = value[:, [3, 1]]
        assert expected.abs().amax() > 0, layer
        torch.testing.assert_close(some[layer], expected, rtol=1e-9, atol=1e-12 * float(expected.abs().amax()))


@pytest.mark.parametrize("name", EXACT)
def test_difull_maps_are_exactly_zero_outside_the_target_cell(name, conv_model):
    """The structural claim of the methods that declare it (``MethodTesting.difull_exact``):
    exactly zero outside the target cell at every layer, so a score of exactly 1.0 at the input."""
    setting, x, labels = case_of(name, conv_model, "difull")
    cells = [0, 1, 2, 3]
    for layer, value in run_maps(setting, x, labels, cells, layers_of(name, setting, LAYERS), name).items():
        outside = ~setting.cell_mask(torch.tensor(cells), value.shape[-2:])
        assert torch.count_nonzero(value * outside[None]) == 0, layer
        assert torch.count_nonzero(value * ~outside[None]) > 0, layer
        if layer == "input":
            scores, _ = localization_scores(value.float().numpy(), cells=np.array(cells), n=N,
                                            image_size=N * setting.model.cell_size)
            positive = (value.flatten(2).amax(-1) > 0).numpy()  # a signed map may have no positive part
            assert positive.any() and np.all(scores[positive] == 1.0), scores


# --- where a method applies ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_runs_where_it_applies_and_is_refused_in_one_line_elsewhere(name, tiny_family):
    """On each tiny family (GELU, LayerNorm and token layers), in each setting it defines and at
    the input, a token layer and the final layer: where the method applies it gives finite maps;
    elsewhere planning refuses it with one line naming the valid methods, which exclude it."""
    model = tiny_family
    cls = METHODS.get(name)
    for setting_name in SETTINGS.names():
        try:
            setting, x, labels = case(model, setting_name, grids=1)
        except UserError:
            continue  # a setting not defined for the model (DiPart of a ViT)
        for layer in ("input", "middle", "final"):
            if method_problem(setting, cls, layer) is None:
                assert name in valid_methods(setting, layer)
                maps = run_maps(setting, x, labels, [0, 3], [layer], name, batch_size=8)
                assert torch.isfinite(maps[layer]).all(), (setting_name, layer)
                continue
            with pytest.raises(UserError) as refused:
                check_method(setting, cls, layer)
            message = str(refused.value)
            assert "\n" not in message and message.startswith(f"method {name} cannot run at layer {layer} ")
            valid = message.rpartition("valid there: ")[2].split(", ")
            assert name not in valid and valid == (valid_methods(setting, layer) or ["none"])
            with pytest.raises(UserError):
                run_maps(setting, x, labels, [0, 3], [layer], name)
