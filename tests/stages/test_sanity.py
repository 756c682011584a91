"""Model-randomisation sanity checks (Adebayo et al., NeurIPS 2018) on tiny models with random
weights: the check separates methods that depend on the model from those that do not, the
steps are the documented ones, and everything is cached and resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import attrcli.stages.sanity as sanity_stage
from attrcli.errors import UserError
from attrcli.metrics.intervals import BootstrapConfig
from attrcli.metrics.similarity import spearman_maps, ssim
from attrcli.stages.sanity import randomisation_steps, randomise, sanity
from attrcli.store import read_artifact
from tests.conftest import make_conv_model, make_toy_grid_file

pytestmark = pytest.mark.usefixtures("one_thread")
BOOT = BootstrapConfig(resamples=200)


def conv32():
    model = make_conv_model()
    model.module.float()
    return model


def run(tmp_path, methods, *, mode="cascading", model=None, layers="input", count=6, **extra):
    grids = tmp_path / "toy.h5"
    if not grids.exists():
        make_toy_grid_file(grids, count=count)
    return sanity(
        grids=grids, model=model or conv32(), setting="gridpg", layers=layers, methods=methods,
        cache_root=tmp_path / "cache", mode=mode, bootstrap=BOOT, batch_size=4, **extra,
    )


def test_steps_go_from_the_head_down_through_every_stage():
    model = conv32()
    assert randomisation_steps(model, "cascading") == [
        ("trained", []), ("head", ["head"]), ("0.4", ["head", "0.4"]), ("0.1", ["head", "0.4", "0.1"]),
    ]
    assert randomisation_steps(model, "independent") == [
        ("trained", []), ("head", ["head"]), ("0.4", ["0.4"]), ("0.1", ["0.1"]),
    ]
    with pytest.raises(UserError, match="randomisation mode"):
        randomisation_steps(model, "sideways")


def test_randomise_changes_exactly_the_groups_and_is_seeded():
    model = conv32()
    trained = {k: v.clone() for k, v in model.module.state_dict().items()}
    randomise(model, ["head", "0.4"], seed=3)
    state = model.module.state_dict()
    changed = {k for k in state if not torch.equal(state[k], trained[k])}
    # module 0 is the features (0.0 conv, 0.3 conv), module 2 the linear head
    assert changed == {"0.3.weight", "0.3.bias", "2.weight", "2.bias"}
    again = conv32()
    randomise(again, ["head"], seed=3)
    randomise(again, ["0.4"], seed=3)  # one group at a time: the same draws as together
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in state.items())
    other = conv32()
    randomise(other, ["head", "0.4"], seed=4)
    assert not torch.equal(other.module.state_dict()["2.weight"], state["2.weight"])


def test_cascading_randomisation_separates_model_methods_from_model_free_ones(tmp_path):
    results = {r.key.split("/")[-1]: r for r in run(tmp_path, "grad,ixg,gradcam,random,centre")}
    for result in results.values():
        assert result.steps == ["trained", "head", "0.4", "0.1"]
        assert result.means["spearman"][0] == 1.0 and result.means["ssim"][0] == pytest.approx(1.0)
        assert result.means["score_change"][0] == 0.0
    for method in ("grad", "ixg", "gradcam"):
        assert results[method].means["spearman"][-1] < 0.5, method
        assert results[method].means["spearman_abs"][-1] < 0.5, method
        assert results[method].means["ssim"][-1] < 0.5, method
    for method in ("random", "centre"):  # the same maps whatever the weights: similarity stays 1
        assert results[method].means["spearman"] == [1.0] * 4, method
        assert results[method].means["ssim"] == pytest.approx([1.0] * 4), method
        assert results[method].means["score_change"] == [0.0] * 4, method
    # every value is recorded per attribution, trained model first
    stored = read_artifact(results["grad"].path)
    assert stored.data["spearman"].shape == (4, 6, 4)
    assert (stored.data["spearman"][0] == 1.0).all()
    low, high = results["grad"].intervals["spearman"][-1]
    assert low <= results["grad"].means["spearman"][-1] <= high


def test_independent_head_step_equals_the_cascading_one(tmp_path):
    [cascading] = run(tmp_path, "grad")
    [independent] = run(tmp_path, "grad", mode="independent")
    assert independent.steps == cascading.steps
    assert independent.means["spearman"][1] == cascading.means["spearman"][1]  # same groups, same seed
    assert independent.means["spearman"][2] != cascading.means["spearman"][2]


def test_a_second_run_computes_nothing(tmp_path):
    first = run(tmp_path, "grad,random")
    assert {s for r in first for s in r.maps.values()} == {"computed"}
    times = {r.path: r.path.stat().st_mtime_ns for r in first}
    maps = sorted((tmp_path / "cache").rglob("attributions/**/*.h5"))
    assert len(maps) == 2 * 4  # two methods, four steps
    map_times = [p.stat().st_mtime_ns for p in maps]
    again = run(tmp_path, "grad,random")
    assert {r.status for r in again} == {"up to date"}
    assert {s for r in again for s in r.maps.values()} == {"up to date"}
    assert {r.path: r.path.stat().st_mtime_ns for r in again} == times
    assert [p.stat().st_mtime_ns for p in maps] == map_times
    assert [r.means for r in again] == [r.means for r in first]


def test_a_killed_run_resumes_with_the_steps_it_finished(tmp_path, monkeypatch):
    calls = []
    real = sanity_stage.run_attribute

    def dies_at_the_third_step(request, progress=None):
        calls.append(request.cache_root)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(request, progress=progress)

    monkeypatch.setattr(sanity_stage, "run_attribute", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "grad")
    monkeypatch.setattr(sanity_stage, "run_attribute", real)
    [result] = run(tmp_path, "grad")
    assert result.maps == {"trained": "up to date", "head": "up to date", "0.4": "computed", "0.1": "computed"}
    # the model handed in is left with its trained weights
    model = conv32()
    run(tmp_path, "grad", model=model)
    assert all(torch.equal(v, conv32().module.state_dict()[k]) for k, v in model.module.state_dict().items())


def test_bad_input_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="randomisation mode"):
        run(tmp_path, "grad", mode="sideways")
    with pytest.raises(UserError):
        run(tmp_path, "nosuchmethod")
    assert not (tmp_path / "cache").exists()


def test_spearman_of_maps_is_scipys_and_ssim_is_exact_on_constants():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 5, 5))
    expected = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(spearman_maps(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(
        spearman_maps(a, b, absolute=True),
        [spearmanr(np.abs(a[i]).ravel(), np.abs(b[i]).ravel()).statistic for i in range(3)], rtol=1e-12,
    )
    assert np.isnan(spearman_maps(np.ones((4, 4)), a[0, :4, :4]))
    assert ssim(a, a) == pytest.approx([1.0, 1.0, 1.0])
    # constant images: no variance, SSIM = (2 mu1 mu2 + C1) / (mu1² + mu2² + C1)
    c1 = 0.01**2
    value = ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6))
    assert value == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-12)


@pytest.mark.slow
def test_trained_digits_vgg_fails_no_gradient_method_and_baselines_stay_at_chance(tmp_path, trained_digits_cache):
    """The issue's bars on the trained digits VGG: cascading randomisation drives the input maps of
    grad, ixg and Grad-CAM below Spearman 0.5; random and centre stay at 1 and score 1/n²."""
    import shutil

    from attrcli.metrics.summary import summarize
    from attrcli.stages.make_grids import make_grids
    from attrcli.stages.score import score

    cache = tmp_path / "cache"
    shutil.copytree(trained_digits_cache, cache)
    (grids,) = make_grids(dataset="digits", variant="distinct", n=2, count=16, models=["digits-vgg11"],
                          out_dir=tmp_path, cache_dir=cache, device="cpu")
    results = sanity(grids=grids, model="digits-vgg11", layers="input", methods="grad,ixg,gradcam,random,centre",
                     cache_root=cache, bootstrap=BOOT, device="cpu")
    by_method = {r.key.split("/")[-1]: r for r in results}
    for method in ("grad", "ixg", "gradcam"):
        assert by_method[method].means["spearman"][-1] < 0.5, method
    for method in ("random", "centre"):
        assert by_method[method].means["spearman"] == [1.0] * len(by_method[method].steps)
    trained = [cache / "attributions" / grids.stem / "gridpg" / "digits-vgg11" / "input" / f"{m}.h5"
               for m in ("random", "centre")]
    for row in summarize([r.path for r in score(attribution_paths=trained, bootstrap=BOOT)]):
        low, high = row.mean_ci
        assert low - 1e-9 <= 0.25 <= high + 1e-9, row.method


def test_figure_draws_one_curve_per_method_and_layer_with_the_stored_means(tmp_path, monkeypatch):
    import attrcli.plots.sanity as plots

    results = run(tmp_path, "grad,random", layers="input,final")
    drawn = {}

    def keep(fig, out, fmt):
        drawn["fig"] = fig
        return out

    monkeypatch.setattr(plots, "save_figure", keep)
    plots.plot_sanity(sanity_paths=[r.path for r in results], out=tmp_path / "f.png")
    axes = [ax for ax in drawn["fig"].axes if ax.get_visible() and ax.lines]
    assert [ax.get_title() for ax in axes] == ["tiny-conv · gridpg · input", "tiny-conv · gridpg · final"]
    for ax, layer in zip(axes, ("input", "final")):
        curves = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
        assert set(curves) == {"grad", "random"}
        expected = next(r for r in results if r.key.endswith(f"{layer}/grad")).means["spearman"]
        np.testing.assert_allclose(curves["grad"].get_ydata(), expected)
        assert curves["random"].get_linestyle() == "--"
    with pytest.raises(UserError, match="measure"):
        plots.plot_sanity(sanity_paths=[r.path for r in results], out=tmp_path / "f.png", measure="pearson")


def test_cell_region_compares_each_targets_own_cell(tmp_path):
    """In DiFull a gradient map is zero outside its cell whatever the weights: over the grid
    those shared zeros keep Spearman up; over the cell only the model decides."""
    from attrcli.metrics.similarity import cell_crops

    grids = tmp_path / "toy.h5"
    make_toy_grid_file(grids, variant="corners", count=6)
    common = dict(grids=grids, model=conv32(), setting="difull", layers="input", methods="grad",
                  cache_root=tmp_path / "cache", bootstrap=BOOT, batch_size=4)
    [whole] = sanity(**common)
    [cell] = sanity(**common, region="cell")
    assert cell.maps == dict.fromkeys(cell.steps, "up to date")  # the same maps, compared again
    assert cell.path != whole.path and "similarity-cell" in str(cell.path)
    assert whole.means["spearman"][-1] > 0.9 > 0.5 > cell.means["spearman"][-1]
    maps = np.arange(2 * 2 * 4 * 4, dtype=float).reshape(2, 2, 4, 4)
    crops = cell_crops(maps, np.array([3, 0]), 2)
    np.testing.assert_array_equal(crops[:, 0], maps[:, 0, 2:, 2:])
    np.testing.assert_array_equal(crops[:, 1], maps[:, 1, :2, :2])
    with pytest.raises(UserError, match="region"):
        sanity(**common, region="border")
