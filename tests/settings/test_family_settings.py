"""The grid settings on ConvNeXt, Swin (v1, v2) and ViT: the equalities that define them, the
structural DiFull property, and the combinations that are refused (docs/architectures.md)."""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import (
    VisionTransformer,
    interpolate_embeddings,
)

from attrcli.errors import UserError
from attrcli.methods import METHODS
from attrcli.methods.applicability import check_method, valid_methods
from attrcli.metrics.localization import localization_scores
from attrcli.settings import create_setting
from tests.engine.helpers import engine_maps, grid_images, grid_labels
from tests.methods.registry_helpers import fitted_spec
from tests.models.tiny_families import BUILDERS, CELL, tiny
from tests.structure.toy_method import TEST_ONLY

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops
FAMILIES = list(BUILDERS)
CNN_LIKE = [name for name in FAMILIES if name != "tiny-vit"]


@pytest.fixture
def model(tiny_family):
    """Each tiny family in turn (the ``tiny_family`` fixture of tests/conftest.py)."""
    return tiny_family


def cells_of(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    c = x.shape[-1] // n
    return [x[..., (k // n) * c : (k // n + 1) * c, (k % n) * c : (k % n + 1) * c] for k in range(n * n)]


def settings_for(model) -> list[str]:
    return ["gridpg", "difull", "gridpg-rescaled"] + (["dipart"] if model.part_heads else [])


def test_single_cell_settings_equal_the_models_own_forward(model):
    x = grid_images(3, n=1, cell=CELL)
    with torch.no_grad():
        plain = model.module(x)
        for name in settings_for(model):
            torch.testing.assert_close(create_setting(name, model, 1).forward(x)[:, 0], plain, rtol=1e-12, atol=1e-12)


def test_difull_head_i_is_the_model_on_cell_i_alone(model):
    x = grid_images(2, n=3, cell=CELL)
    with torch.no_grad():
        heads = create_setting("difull", model, 3).forward(x)
        for i, cell in enumerate(cells_of(x, 3)):
            torch.testing.assert_close(heads[:, i], model.module(cell), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CNN_LIKE)
def test_gridpg_of_a_pooling_head_is_the_model_on_the_whole_grid(name):
    model = tiny(name)
    x = grid_images(2, cell=CELL)
    with torch.no_grad():
        torch.testing.assert_close(create_setting("gridpg", model, 2).forward(x)[:, 0], model.module(x), rtol=1e-12, atol=1e-12)


def test_gridpg_vit_is_the_vit_built_for_the_grid_with_interpolated_position_embeddings():
    """Reference: torchvision's own VisionTransformer for 32-pixel images, loaded with the tiny
    model's weights and torchvision's interpolate_embeddings (bicubic) applied to them."""
    model = tiny("tiny-vit")
    state = interpolate_embeddings(2 * CELL, 4, OrderedDict(model.module.state_dict()))
    reference = VisionTransformer(image_size=2 * CELL, patch_size=4, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=10)
    reference = reference.double().eval()
    reference.load_state_dict(state)
    x = grid_images(2, cell=CELL)
    with torch.no_grad():
        torch.testing.assert_close(create_setting("gridpg", model, 2).forward(x)[:, 0], reference(x), rtol=1e-12, atol=1e-12)


def test_gridpg_rescaled_is_the_model_on_the_grid_resized_to_one_cell(model):
    x = grid_images(2, cell=CELL)
    resized = F.interpolate(x, size=(CELL, CELL), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = create_setting("gridpg-rescaled", model, 2).forward(x)
        torch.testing.assert_close(logits[:, 0], model.module(resized), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CNN_LIKE)
def test_dipart_head_i_classifies_part_i_and_is_only_partly_disconnected(name):
    model = tiny(name)
    x = grid_images(2, cell=CELL)
    with torch.no_grad():
        heads = create_setting("dipart", model, 2).forward(x)
        for i, part in enumerate(cells_of(model.run_blocks(x), 2)):
            torch.testing.assert_close(heads[:, i], model.head(part), rtol=1e-12, atol=1e-12)
        alone = create_setting("difull", model, 2).forward(x)
    assert not torch.allclose(heads, alone)  # 7×7 convolutions / shifted windows cross cell borders


def test_dipart_is_refused_for_a_class_token_head_naming_the_valid_settings():
    with pytest.raises(UserError, match=r"dipart is not defined for tiny-vit: .*class token.*valid settings for it: difull, gridpg, gridpg-rescaled$"):
        create_setting("dipart", tiny("tiny-vit"), 2)


@pytest.mark.parametrize("name", ["gridpg", "difull", "gridpg-rescaled"])
def test_prefix_then_suffix_is_the_whole_setting_at_every_layer(model, name):
    setting = create_setting(name, model, 2)
    x = grid_images(2, cell=CELL)
    with torch.no_grad():
        whole = setting.forward(x)
        for layer in model.layers:
            index = model.layer_index(layer)
            torch.testing.assert_close(setting.suffix(setting.prefix(x, index), index), whole, rtol=1e-10, atol=1e-12)


def test_every_layer_is_a_map_that_tiles_the_grid(model):
    """Swin's (B, H, W, C) blocks and ViT's token sequences reach methods as (B, C, h, w)."""
    x = grid_images(1, cell=CELL)
    gridpg, difull = create_setting("gridpg", model, 2), create_setting("difull", model, 2)
    with torch.no_grad():
        for layer in model.layers[1:]:
            index = model.layer_index(layer)
            whole = gridpg.to_map(gridpg.prefix(x, index))
            stitched = difull.to_map(difull.prefix(x, index))
            one = model.spatial(model.run_blocks(cells_of(x, 2)[3], -1, index))
            assert whole.dim() == 4 and whole.shape == stitched.shape, layer
            # The stitched cell is the cell run alone, up to float64 rounding: batched attention
            # matmuls may sum in another order for 4 cells than for 1 (seen as 4e-16 on some CPUs).
            torch.testing.assert_close(cells_of(stitched, 2)[3], one, rtol=1e-12, atol=1e-13)


def test_swin_blocks_are_its_own_channels_last_features_permuted():
    model = tiny("tiny-swin")
    x = grid_images(1, cell=CELL)
    with torch.no_grad():
        native = model.module.features[:2](x)  # (B, H, W, C)
        torch.testing.assert_close(model.run_blocks(x, -1, model.layer_index("features.1")), native.permute(0, 3, 1, 2))


def test_vit_token_map_is_the_patch_tokens_in_row_major_order():
    model = tiny("tiny-vit")
    x = grid_images(1, n=1, cell=CELL)
    with torch.no_grad():
        tokens = model.run_blocks(x, -1, model.layer_index("middle"))  # (1, 1 + 16, 8)
        grid = model.spatial(tokens)
    assert tokens.shape == (1, 17, 8) and grid.shape == (1, 8, 4, 4)
    for k in range(16):
        torch.testing.assert_close(grid[0, :, k // 4, k % 4], tokens[0, 1 + k], rtol=0, atol=0)


def _scores(maps: torch.Tensor, cells: list[int]) -> np.ndarray:
    scores, _ = localization_scores(maps.float().numpy(), cells=np.array(cells), n=2, image_size=2 * CELL)
    return scores


NEVER_ZERO = ("grad", "ixg", "occlusion", "intgrad")  # on these models (CAM methods' ReLUs may zero a map)


@pytest.mark.parametrize("name", FAMILIES)
def test_difull_maps_are_zero_outside_the_target_cell(name):
    """The structural claim, for every method that declares it (``MethodTesting.difull_exact``)
    and applies to the family: exactly zero outside the target cell at every layer, so a score
    of exactly 1.0 at the input."""
    model = tiny(name, dtype=torch.float32)
    setting = create_setting("difull", model, 2)
    x, labels = grid_images(2, cell=CELL, dtype=torch.float32), torch.from_numpy(grid_labels(2, variant="corners"))
    cells = [0, 1, 2, 3]
    maps = {}
    for layer in ("input", "middle", "final"):
        exact = [m for m in valid_methods(setting, layer) if METHODS.get(m).testing.difull_exact]
        assert {"grad", "ixg"} <= set(exact)  # gradient methods run at every layer, token layers too
        maps.update(engine_maps(setting, x, labels, cells, [layer], [METHODS.get(m).testing.spec(m) for m in exact]))
    for (layer, method), value in maps.items():
        outside = ~setting.cell_mask(torch.tensor(cells), value.shape[-2:])
        assert torch.count_nonzero(value * outside[None]) == 0, (layer, method)
        if method.partition(":")[0] in NEVER_ZERO:
            assert torch.count_nonzero(value * ~outside[None]) > 0, (layer, method)
        if layer == "input":  # signed maps without a positive part (CAM ReLUs, LRP) score 0 anywhere
            positive = (value.flatten(2).amax(-1) > 0).numpy()
            if method.partition(":")[0] in NEVER_ZERO:
                assert positive.all(), (method, positive)
            assert np.all(_scores(value, cells)[positive] == 1.0), (method, _scores(value, cells))


@pytest.mark.parametrize("name", FAMILIES)
def test_methods_that_apply_and_maps_of_those_never_zero_here(name):
    """Which product methods apply (only gradient methods at token layers: ViT blocks; no guided
    backprop on GELU models), and maps of the methods that are never zero on these models, in
    every setting the family defines. (Every method's maps, toy included, run in
    tests/methods/test_generic_methods.py.)"""
    model = tiny(name, dtype=torch.float32)
    for setting_name in settings_for(model):
        setting = create_setting(setting_name, model, 2)
        variant = "corners" if setting_name in ("difull", "dipart") else "distinct"
        x, labels = grid_images(1, cell=CELL, dtype=torch.float32), torch.from_numpy(grid_labels(1, variant=variant))
        for layer in ("input", "final"):
            valid = valid_methods(setting, layer)
            computed = [m for m in valid if m not in TEST_ONLY and METHODS.get(m).kind != "derived"]
            if name == "tiny-vit" and layer == "final":
                assert computed == ["eigencam", "grad", "gradcam", "gradcam++", "hirescam", "ixg", "layercam", "xgradcam"]
                assert all(METHODS.get(m).kind == "gradient" or getattr(METHODS.get(m), "reads_layer_only", False)
                           for m in valid if METHODS.get(m).kind != "derived")
            else:
                assert "occlusion" in computed and "intgrad" in computed and "guided-backprop" not in computed
            fast = [fitted_spec(m, setting, layer) for m in NEVER_ZERO if m in valid]
            maps = engine_maps(setting, x, labels, [0, 3], [layer], fast, batch_size=8)
            assert len(maps) == len(fast)
            for (_, method), value in maps.items():
                assert torch.isfinite(value).all(), (setting_name, layer, method)
                assert value.abs().sum() > 0, (setting_name, layer, method)


def test_refused_combinations_name_what_is_valid():
    vit, convnext = tiny("tiny-vit"), tiny("tiny-convnext")
    gridpg = create_setting("gridpg", vit, 2)
    valid = valid_methods(gridpg, "middle")
    assert [m for m in valid if m not in TEST_ONLY] == [
        "eigencam", "grad", "gradcam", "gradcam++", "hirescam", "ixg", "layercam", "s-ixg", "xgradcam"]
    with pytest.raises(UserError, match=rf"^method occlusion cannot run at layer middle of tiny-vit in gridpg: .*token layer.*; valid there: {re.escape(', '.join(valid))}$"):
        check_method(gridpg, METHODS.get("occlusion"), "middle")
    check_method(gridpg, METHODS.get("occlusion"), "conv_proj")  # the patch embedding is a map
    with pytest.raises(UserError, match=r"guided-backprop cannot run .* ReLU networks and the model has GELU \(features\.1\.0\.block\.4\)"):
        check_method(create_setting("difull", convnext, 2), METHODS.get("guided-backprop"), "input")
    with pytest.raises(UserError, match="s-intgrad cannot run at layer final of tiny-vit"):
        check_method(gridpg, METHODS.get("s-intgrad"), "final")  # derived: checked as its base


def test_method_all_plans_only_the_methods_that_apply():
    """``--method all`` on a GELU model skips guided backprop and LRP instead of failing; named
    explicitly, they are refused."""
    from pathlib import Path

    from attrcli.data.gridfile import GridFile
    from attrcli.stages.plan import plan_jobs, resolve_methods, wants_all

    model = tiny("tiny-convnext", dtype=torch.float32)
    setting = create_setting("gridpg", model, 2)
    grid_file = GridFile(Path("test.h5"), "test", np.empty(0), np.empty(0), 2, model.cell_size, "distinct",
                         model.num_classes, "")
    specs = resolve_methods("all")
    assert wants_all("all") and not wants_all("grad,all")
    jobs, _ = plan_jobs(grid_file, setting, [0, 1, 2, 3], ["input"], specs, Path("unused"), applicable_only=True)
    planned = {job.spec.name for job in jobs}
    assert planned == set(valid_methods(setting, "input")) - {"s-intgrad", "s-ixg"} - {
        m for m in METHODS.names() if METHODS.get(m).kind == "derived"}
    assert {"grad", "occlusion", "intgrad"} <= planned and not {"guided-backprop", "lrp"} & planned
    named = [spec for spec in specs if spec.name in ("grad", "guided-backprop")]
    with pytest.raises(UserError, match="guided-backprop cannot run"):
        plan_jobs(grid_file, setting, [0, 1, 2, 3], ["input"], named, Path("unused"))
