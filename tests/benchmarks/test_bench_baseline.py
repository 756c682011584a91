"""The speed benchmark's harness (benchmarks/bench_baseline.py) on a tiny model: the loop's maps
agree with attrcli's where the methods are defined the same, a wrong map is caught, and the JSON
and markdown reports are well formed. Nothing here checks a timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _baseline_loop as loop
import _baseline_work as work
import bench_baseline as bench

from tests.benchmarks.tiny_model import CLASSES, tiny_vgg
from attrcli.models.adapter import ModelAdapter, vgg_adapter

REDUCED = work.Reduced(steps=3, masks=8, windows=3)  # windows=3 on 16 px: k=s=6, not flush


def tiny_adapter() -> ModelAdapter:
    """The tiny model with its last layer scaled up: gradients of order one, as in trained models,
    far above the 1e-6 that pytorch-grad-cam adds to Grad-CAM++'s denominator (which dominates
    at the 1e-4 gradients of the plain random initialisation)."""
    module = tiny_vgg(last_layer_scale=1000.0)
    adapter = vgg_adapter(module, name="tiny", cell_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=CLASSES)
    adapter.weights_hash = "tiny"
    return adapter


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops on an oversubscribed machine stall with several threads; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows(tmp_path_factory, one_thread) -> list[dict]:
    pytest.importorskip("pytorch_grad_cam")
    folder = tmp_path_factory.mktemp("bench")
    adapter = tiny_adapter()
    grids = {
        variant: work.random_grid_file(folder / f"{variant}.h5", adapter, variant=variant, count=2, seed=1)
        for variant in ("distinct", "corners")
    }
    plan = bench.Plan(grids=2, batch_size=4, reduced=REDUCED, loop_targets=None, repeats=1)
    return bench.bench_model(adapter, grids, plan, folder, torch.device("cpu"), lambda line: None)


def _keys(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["method"] != "together"]


def test_every_key_is_measured_once(rows):
    keys = _keys(rows)
    assert len(keys) == len(bench.SETTINGS) * len(bench.LAYERS) * len(bench.METHODS)
    assert len({(r["setting"], r["layer"], r["method"]) for r in keys}) == len(keys)
    for r in keys:
        assert r["targets"] == (4 if r["setting"] == "gridpg" else 2)
        assert r["attributions"] == 2 * r["targets"]
        assert r["speedup"] == pytest.approx(r["loop_s"] / r["attrcli_s"])
        assert r["attrcli_per_s"] == pytest.approx(r["attributions"] / r["attrcli_s"])
        assert r["floor_s"] > 0


def test_maps_agree_where_methods_are_defined_the_same(rows):
    for r in _keys(rows):
        how = loop.comparison(r["method"], r["layer"])
        expected = "not comparable" if how == "not comparable" else "agree"
        assert r["agreement"]["status"] == expected, (r["setting"], r["layer"], r["method"], r["agreement"])
    statuses = {(r["method"], r["layer"]): r["agreement"]["status"] for r in _keys(rows)}
    assert statuses[("scorecam", "middle")] == "not comparable"
    assert statuses[("ablationcam", "input")] == "not comparable"
    assert statuses[("ablationcam", "final")] == "agree"


def test_quick_parameters_reach_both_sides(rows):
    specs = {(r["layer"], r["method"]): r["spec"] for r in _keys(rows) if r["setting"] == "gridpg"}
    assert specs[("input", "intgrad")] == "intgrad:steps=3"
    assert specs[("middle", "rise")] == "rise:masks=8"
    assert specs[("input", "occlusion")] == "occlusion:k=6,s=6,scheme=inside"  # 16-pixel grid, 3 windows per axis
    assert specs[("final", "occlusion")] == "occlusion:k=3,s=3,scheme=inside"  # 8-position map: not flush
    assert specs[("input", "grad")] == "grad"


def test_a_wrong_map_is_caught():
    rng = np.random.default_rng(0)
    ours = rng.standard_normal((2, 4, 6, 6))
    assert loop.agreement("grad", "input", ours, ours.copy())["status"] == "agree"
    wrong = ours.copy()
    wrong[1, 2, 3, 3] += 0.1 * np.abs(ours).max()
    result = loop.agreement("grad", "input", ours, wrong)
    assert result["status"] == "differ" and result["max_diff"] == pytest.approx(0.1, rel=0.05)
    # only the first targets the loop computed are compared
    assert loop.agreement("ixg", "middle", ours, ours[:, :1].copy())["status"] == "agree"
    assert loop.agreement("scorecam", "final", ours, wrong)["status"] == "not comparable"
    assert "note" not in result


def test_maps_that_differ_are_rechecked_on_attrclis_kernels(monkeypatch):
    adapter = tiny_adapter()
    ours = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    seen = []

    def loop_maps(case, images, labels, cells, targets):  # rounds differently unless channels-last
        conv = next(p for p in adapter.module.parameters() if p.dim() == 4)
        seen.append(conv.is_contiguous(memory_format=torch.channels_last))
        return ours + (0 if seen[-1] else 0.05 * np.abs(ours).max())

    monkeypatch.setattr(bench, "loop_maps", loop_maps)
    case = loop.LoopCase(None, "input", "grad", None, 4, 0)
    cpu = torch.device("cpu")
    found = bench._agreement(case, adapter, None, None, [0], 1, ours, loop_maps(case, None, None, None, 1), None, cpu)
    assert seen == [False, True]  # the second loop pass ran on channels-last weights
    assert found["status"] == "differ" and found["same_kernels"]["status"] == "agree"
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in adapter.module.parameters())  # and the weights were put back
    report = bench.summarise([{"model": "vgg11", "setting": "gridpg", "layer": "input", "method": "grad",
                               "speedup": 2.0, "agreement": found}])
    assert report["agreement"] == {"rounding": 1} and report["differ"] == []


def test_normalised_comparison_ignores_scale_but_not_shape():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image

    ours = np.random.default_rng(1).standard_normal((1, 1, 4, 4)).astype(np.float32)
    theirs = scale_cam_image(scale_cam_image(np.maximum(3.0 * ours[0], 0), (8, 8)))[None]
    assert loop.agreement("gradcam", "middle", ours, theirs)["status"] == "agree"
    assert loop.agreement("gradcam", "middle", ours[..., ::-1, :].copy(), theirs)["status"] == "differ"


def test_occlusion_region_drops_positions_where_captum_lacks_the_flush_window():
    assert loop.occlusion_region(16, 2, 1) == slice(0, 16)
    assert loop.occlusion_region(56, 5, 2) == slice(0, 51)  # attrcli adds a window at 51
    assert loop.occlusion_region(4, 9, 2) == slice(0, 4)  # kernel clipped to the map


def test_capped_view_keeps_shapes_and_cuts_the_layer():
    adapter = tiny_adapter()
    view = work.capped(adapter, "middle", 2, 6)
    x = torch.randn(1, 3, 8, 8)
    index = adapter.layer_index("middle")
    assert view.run_blocks(x, -1, index).shape[1] == 2
    assert view.logits(x).shape == adapter.logits(x).shape
    full = adapter.run_blocks(x, -1, index)
    expected = adapter.head(adapter.run_blocks(torch.cat([full[:, :2], torch.zeros_like(full[:, 2:])], 1), index))
    torch.testing.assert_close(view.logits(x), expected)
    last = work.capped(adapter, "features.7", 3, 6)  # the last block: the head widens
    assert last.logits(x).shape == (1, CLASSES)


def test_floors_run_channels_last_and_the_loop_sees_the_model_as_loaded(tmp_path, monkeypatch, one_thread):
    """The floors time attrcli's kernels (channels-last convolution weights on the CPU); the loop,
    timed between attrcli's calls and the floors, sees the weights as loaded."""
    pytest.importorskip("pytorch_grad_cam")  # the loop's Grad-CAM (pip install -e '.[bench]')
    adapter = tiny_adapter()
    weight = adapter.module.features[0].weight
    layouts: dict[str, set[bool]] = {"floor": set(), "loop": set()}

    def spy(side, real):
        def wrapped(*args, **kwargs):
            layouts[side].add(weight.is_contiguous(memory_format=torch.channels_last))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(work, "measure", spy("floor", work.measure))
    monkeypatch.setattr(bench, "loop_maps", spy("loop", bench.loop_maps))
    grids = {"corners": work.random_grid_file(tmp_path / "g.h5", adapter, variant="corners", count=1)}
    plan = bench.Plan(grids=1, batch_size=4, reduced=work.Reduced(masks=4), loop_targets=1, repeats=1,
                      settings=("difull",), layers=("middle",), methods=("grad", "gradcam", "rise"))
    bench.bench_model(adapter, grids, plan, tmp_path, torch.device("cpu"), lambda line: None)
    assert layouts == {"floor": {True}, "loop": {False}}
    assert weight.is_contiguous()


def test_difull_floors_run_the_target_cells_and_whole_maps_the_other_prefix(one_thread):
    from attrcli.settings import create_setting

    adapter = tiny_adapter()
    setting = create_setting("difull", adapter, 2)
    labels = torch.randint(0, CLASSES, (3, 4), generator=torch.Generator().manual_seed(0))
    floors = work.Floors(setting, torch.randn(3, 3, 16, 16), labels, setting.default_cells(), 4, torch.device("cpu"))
    index = adapter.layer_index("middle")
    assert len(floors.prefix(index)[1]) == len(floors.prefix(index, others=True)[1]) == 3 * 2
    grad = floors.seconds("middle", "grad", None, 6)
    assert floors.seconds("middle", "gradcam", None, 6) == pytest.approx(grad + floors.prefix(index, others=True)[0])
    assert floors.seconds("input", "gradcam", None, 3) == floors.seconds("input", "grad", None, 3)


@pytest.mark.parametrize("setting_name", ["gridpg", "difull"])
def test_perturbation_floors_count_the_rows_the_methods_evaluate(setting_name, monkeypatch):
    from attrcli.engine.context import AttributionContext
    from attrcli.methods import _perturb, parse_method
    from attrcli.settings import create_setting

    adapter, grids = tiny_adapter(), 3
    setting = create_setting(setting_name, adapter, 2)
    cells = setting.default_cells()
    labels = torch.randint(0, CLASSES, (grids, 4), generator=torch.Generator().manual_seed(0))
    x = torch.randn(grids, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    from attrcli.methods import occlusion

    # the floors count the plain method's evaluations; incremental occlusion goes below them, and
    # so do the passes Score-CAM and Ablation-CAM skip (constant, repeated or zero channels)
    monkeypatch.setattr(occlusion, "INCREMENTAL", False)
    monkeypatch.setattr(_perturb, "SKIP_KNOWN", False)
    evaluated = []
    original = _perturb.evaluate
    monkeypatch.setattr(_perturb, "evaluate", lambda ctx, rows, *a, **k: evaluated.append(len(rows)) or original(ctx, rows, *a, **k))
    for layer in ("input", "middle"):
        ctx = AttributionContext(setting=setting, x=x, targets=setting.targets(labels, cells), layer=layer,
                                 layer_index=adapter.layer_index(layer), batch_size=2)
        a = ctx.activations
        size = tuple(setting.to_map(a[: ctx.units_per_grid]).shape[-2:])
        for spec in ("occlusion:k=3,s=2", "ablationcam", "rise:masks=5", "scorecam"):
            method = parse_method(spec).build(cell_size=adapter.cell_size, layer=layer)
            evaluated.clear()
            method.attribute(ctx)
            expected = work.perturbations(spec.split(":")[0], method.config, setting, cells, a.shape[1], size)
            assert sum(evaluated) == grids * expected, (layer, spec)


def test_together_calls_group_specs_by_layer(rows):
    together = {r["setting"]: r for r in rows if r["method"] == "together"}
    # one call for the specs shared by all layers, one per layer for occlusion's k/s
    assert together["gridpg"]["calls"] == together["difull"]["calls"] == 1 + len(bench.LAYERS)
    for r in together.values():
        assert r["attributions"] == sum(k["attributions"] for k in _keys(rows) if k["setting"] == r["setting"])


def test_summary_geometric_means_and_bars():
    def row(model, speedup, status="agree"):
        return {"model": model, "setting": "gridpg", "layer": "input", "method": "grad", "speedup": speedup,
                "agreement": {"status": status, "max_diff": 0.0}}

    summary = bench.summarise([row("vgg11", 2.0), row("vgg11", 32.0), row("resnet18", 8.0, "differ"),
                               row("digits-vgg11", 0.5)])
    assert summary["per_model"]["vgg11"]["geomean_speedup"] == pytest.approx(8.0)
    assert summary["bar_geomean_speedup"] == pytest.approx(8.0)
    assert summary["bar_geomean_met"] is True and summary["bar_none_slower_met"] is True
    assert summary["overall_geomean_speedup"] == pytest.approx(4.0)
    assert summary["slowest"]["model"] == "digits-vgg11"
    assert summary["agreement"] == {"agree": 3, "differ": 1}
    assert bench.summarise([row("vgg11", 0.9), row("resnet18", 90.0)])["bar_none_slower_met"] is False
    assert summary["bar_geomean_speedup_in_one_call"] is None  # no together rows
    shared = bench.summarise([row("vgg11", 2.0), row("vgg11", 8.0),
                              {"model": "vgg11", "setting": "gridpg", "method": "together", "sharing": 3.0}])
    assert shared["per_model"]["vgg11"]["geomean_speedup_in_one_call"] == pytest.approx(12.0)


def test_report_files_are_well_formed(rows, tmp_path):
    report = {"meta": bench.metadata("quick", torch.device("cpu"), (1.0, 1.0, 1.0)), "plans": {},
              "rows": rows, "summary": bench.summarise(rows)}
    json_path, md_path = bench.write_report(report, tmp_path)
    data = json.loads(json_path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["meta"]["mode"] == "quick" and data["meta"]["cpu_count"] >= 1
    assert len(data["rows"]) == len(rows)
    assert data["summary"]["per_model"]["tiny"]["keys"] == len(_keys(rows))
    lines = md_path.read_text().splitlines()
    table = [line for line in lines if line.startswith(("| tiny | gridpg", "| tiny | difull"))]
    assert len(table) == len(rows)
    header = next(line for line in lines if line.startswith("| model | setting"))
    assert all(line.count("|") == header.count("|") for line in table)


def test_together_row_times_one_call_against_the_loop_sum(tmp_path, one_thread):
    adapter = tiny_adapter()
    grids = {"distinct": work.random_grid_file(tmp_path / "g.h5", adapter, variant="distinct", count=1)}
    plan = bench.Plan(grids=1, batch_size=4, reduced=work.Reduced(steps=3), loop_targets=1, repeats=1,
                      settings=("gridpg",), layers=("input", "final"), methods=("grad", "intgrad", "occlusion"))
    rows = bench.bench_model(adapter, grids, plan, tmp_path, torch.device("cpu"), lambda line: None)
    together = rows[-1]
    assert together["method"] == "together" and len(rows) == 7
    assert together["calls"] == 1  # every spec is the same at both layers
    assert together["sharing"] == pytest.approx(together["attrcli_separate_s"] / together["attrcli_s"])
    assert together["loop_s"] == pytest.approx(sum(r["loop_s"] for r in rows[:-1]))
    assert together["attributions"] == 6 * 4
    assert all(r["loop_targets_timed"] == 1 for r in rows[:-1])
    lines = bench.markdown({"meta": bench.metadata("default", torch.device("cpu"), (0.0, 0.0, 0.0)),
                            "rows": rows, "summary": bench.summarise(rows)}).splitlines()
    assert sum("| together |" in line for line in lines) == 1


def test_missing_grad_cam_is_a_clear_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(loop.MissingBaseline, match="pip install grad-cam"):
        loop.gradcam_module()
    assert bench.main(["--methods", "gradcam", "--out-dir", str(tmp_path)]) == 2
    assert "pip install grad-cam" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
