"""Gaussian smoothing (S-IntGrad, S-IxG) and SmoothGrad on tiny hand-built models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from attrcli.engine.context import AttributionContext
from attrcli.errors import UserError
from attrcli.methods import parse_method
from attrcli.methods._perturb import gradient_maps
from attrcli.methods.intgrad import IntegratedGradients, IntGradConfig
from attrcli.methods.ixg import InputXGradient
from attrcli.methods.smoothgrad import SmoothGradIntGrad, SmoothGradIxG
from attrcli.methods.smoothing import (
    SmoothedIntGrad,
    SmoothingConfig,
    gaussian_kernel,
    gaussian_smooth,
    paper_kernels,
)
from attrcli.settings import SETTINGS as REGISTERED_SETTINGS
from attrcli.settings import create_setting
from attrcli.stages.attribute import attribute
from attrcli.store import read_artifact

CELL, CLASSES, N = 8, 5, 2
SETTINGS = REGISTERED_SETTINGS.names()  # every registered setting
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops


# --- Gaussian smoothing ---------------------------------------------------------------------------


def test_kernel_is_normalised_with_sigma_a_quarter_of_its_size():
    g = gaussian_kernel(9)
    assert float(g.sum()) == pytest.approx(1.0)
    assert float(g[4] / g[0]) == pytest.approx(np.exp(4**2 / (2 * (9 / 4) ** 2)))
    assert torch.equal(g, g.flip(0))


def test_k_1_is_the_identity():
    maps = torch.randn(3, 2, 10, 12)
    assert torch.equal(SmoothedIntGrad(SmoothingConfig(k=1)).derive(maps), maps)


@pytest.mark.parametrize("k", [3, 9, 17])
def test_matches_zero_padded_convolution(k):
    maps = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    kernel = np.outer(gaussian_kernel(k).numpy(), gaussian_kernel(k).numpy())
    expected = np.stack([[ndimage.convolve(m, kernel, mode="constant", cval=0.0) for m in row] for row in maps.numpy()])
    np.testing.assert_allclose(gaussian_smooth(maps, k).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_preserves_the_sum_away_from_the_borders():
    maps = torch.zeros(2, 1, 40, 40)
    maps[:, :, 15:25, 12:27] = torch.rand(2, 1, 10, 15)
    smoothed = gaussian_smooth(maps, 17)  # radius 8 stays inside the 40 x 40 map
    torch.testing.assert_close(smoothed.sum((-2, -1)), maps.sum((-2, -1)))
    assert smoothed[:, :, 14, 20].min() > 0  # mass spread beyond the support
    border = torch.zeros(1, 1, 40, 40)
    border[..., 0, 0] = 1.0
    assert float(gaussian_smooth(border, 17).sum()) < 0.5  # mass falls off at a corner


def test_presets_and_validation():
    assert SmoothedIntGrad.preset(cell_size=224, layer="input") == SmoothingConfig(k=129)
    assert SmoothedIntGrad.preset(cell_size=32, layer="input") == SmoothingConfig(k=19)
    assert paper_kernels(224) == [9, 17, 33, 65, 129, 257]
    assert paper_kernels(32) == [3, 5, 9, 19, 37]
    for bad in ("s-intgrad:k=8", "s-ixg:k=0", "s-ixg:sigma=2"):
        with pytest.raises(UserError):
            parse_method(bad)


# --- SmoothGrad -------------------------------------------------------------------------------------


def context(model, setting_name, layer="input", layer_index=-1, *, seed=0, batch_size=3):
    setting = create_setting(setting_name, model, N)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, N * CELL, N * CELL, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (3, N * N), generator=gen)
    return AttributionContext(
        setting=setting, x=x, targets=setting.targets(labels, setting.resolve_cells("all")), layer=layer,
        layer_index=layer_index, batch_size=batch_size, seed=seed,
    )


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("layer,index", [("input", -1), ("middle", 1)])
def test_zero_noise_gives_the_base_method(setting, layer, index, conv_model):
    ctx = context(conv_model(), setting, layer, index)
    sg_ixg = SmoothGradIxG(dataclasses.replace(SmoothGradIxG.Config(), noise=0.0, samples=2))
    torch.testing.assert_close(sg_ixg.attribute(ctx), gradient_maps(InputXGradient(), ctx))
    sg_ig = SmoothGradIntGrad(SmoothGradIntGrad.Config(noise=0.0, samples=2, steps=5))
    torch.testing.assert_close(sg_ig.attribute(ctx), IntegratedGradients(IntGradConfig(steps=5)).attribute(ctx))


@pytest.mark.parametrize("setting", SETTINGS)
def test_ixg_maps_agree_with_the_engines_gradient_pass(setting, conv_model):
    from attrcli.engine.gradients import gradient_pass

    ctx = context(conv_model(), setting, "middle", 1)
    a, g = gradient_pass(ctx.setting, ctx.x, ctx.targets, [1])[1]
    torch.testing.assert_close(gradient_maps(InputXGradient(), ctx), InputXGradient().from_gradients(a, g))


@pytest.mark.parametrize("setting", SETTINGS)
def test_noise_is_seeded_and_scales_with_the_input_range(setting, linear_model):
    ctx = context(linear_model(), setting)
    base = gradient_maps(InputXGradient(), ctx)
    small = SmoothGradIxG(SmoothGradIxG.Config(noise=0.1, samples=3)).attribute(ctx)
    large = SmoothGradIxG(SmoothGradIxG.Config(noise=0.2, samples=3)).attribute(ctx)
    # IxG of a linear model is linear in the input, so the same draws twice as large move it twice as far
    torch.testing.assert_close(large - base, 2 * (small - base))
    assert not torch.allclose(small, base)
    again = SmoothGradIxG(SmoothGradIxG.Config(noise=0.1, samples=3)).attribute(context(linear_model(), setting))
    assert torch.equal(small, again)
    other = SmoothGradIxG(SmoothGradIxG.Config(noise=0.1, samples=3)).attribute(context(linear_model(), setting, seed=1))
    assert not torch.equal(small, other)


def test_noise_is_relative_to_each_grid_images_range(linear_model):
    """Scaling one grid image scales its noise too, so IxG of a linear model scales with it."""
    ctx = context(linear_model(), "gridpg")
    scaled_x = ctx.x.clone()
    scaled_x[1] *= 3
    scaled = dataclasses.replace(ctx, x=scaled_x)
    config = SmoothGradIxG.Config(noise=0.2, samples=2)
    plain, tripled = SmoothGradIxG(config).attribute(ctx), SmoothGradIxG(config).attribute(scaled)
    torch.testing.assert_close(tripled[1], 3 * plain[1])
    torch.testing.assert_close(tripled[0], plain[0])


# --- end to end through the engine -----------------------------------------------------------------


def test_engine_derives_every_k_from_one_cached_base(tmp_path, monkeypatch, conv_model, toy_grid_file):
    monkeypatch.chdir(tmp_path)
    model = conv_model()
    model.module.float()
    path = toy_grid_file(tmp_path / "toy.h5")
    results = attribute(
        grids=path, setting="gridpg", model=model, layers="input",
        methods="s-intgrad:k=3,s-intgrad:k=5,s-ixg:k=1,smoothgrad-ixg:samples=2", cache_root=tmp_path / "cache",
    )
    by_name = {r.path.name: r for r in results}
    assert sorted(by_name) == [
        "intgrad.h5", "ixg.h5", "s-intgrad:k=3.h5", "s-intgrad:k=5.h5", "s-ixg:k=1.h5", "smoothgrad-ixg:samples=2.h5"
    ]
    base = read_artifact(by_name["intgrad.h5"].path)
    for k in (3, 5):
        derived = read_artifact(by_name[f"s-intgrad:k={k}.h5"].path)
        expected = gaussian_smooth(torch.from_numpy(base.data["maps"]), k).numpy()
        np.testing.assert_allclose(derived.data["maps"], expected, rtol=1e-5, atol=1e-7)
        assert derived.attrs["method"] == f"s-intgrad:k={k}"
    ixg = read_artifact(by_name["ixg.h5"].path).data["maps"]
    np.testing.assert_array_equal(read_artifact(by_name["s-ixg:k=1.h5"].path).data["maps"], ixg)
    again = attribute(
        grids=path, setting="gridpg", model=model, layers="input", methods="s-intgrad:k=3,smoothgrad-ixg:samples=2",
        cache_root=tmp_path / "cache",
    )
    assert {r.status for r in again} == {"up to date"}
