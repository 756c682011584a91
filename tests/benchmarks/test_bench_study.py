"""The whole-study benchmark's harness (benchmarks/bench_study.py) on a tiny model through the real
CLI: the calls it makes, maps of both sides that agree, totals that are sums of the per-key
times, ratios that are loop over attrcli, and attrcli-only methods kept out of the ratio.
Nothing here checks a timing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _baseline_work as work
import _study_models
import bench_study as bench

from tests.benchmarks.tiny_model import CLASSES, tiny_vgg
from attrcli.models.adapter import vgg_adapter

METHODS = ("grad", "occlusion", "rise")
EXTRA = ("smoothgrad-ixg",)
LAYERS = ("input", "final")


@pytest.fixture(scope="module")
def tiny():
    """The tiny model as `_study_models:tiny-c8` (the factory's memo, so the CLI gets it too),
    on one torch thread; both restored afterwards."""
    module = tiny_vgg(last_layer_scale=100.0)
    adapter = vgg_adapter(module, name="tiny-c8", cell_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=CLASSES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _study_models._built["tiny-c8"] = adapter
    yield adapter
    _study_models._built.pop("tiny-c8", None)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study() -> bench.Study:
    return bench.Study(models=("tiny",), layers=LAYERS, methods=METHODS, extra=EXTRA, cell_size=8,
                       reduced=work.Reduced(masks=4, windows=2), samples=2, batch_size=4, grids=2)


@pytest.fixture(scope="module")
def report(tiny, study, tmp_path_factory) -> dict:
    return bench.bench(study, tmp_path_factory.mktemp("study"), lambda line: None)


def test_one_call_per_setting_except_what_differs_by_layer(report, study):
    calls = report["calls"]
    for setting in bench.SETTINGS:
        mine = [c for c in calls if c["setting"] == setting]
        # grad and rise at both layers in one call; occlusion's window differs by layer; the
        # attrcli-only method in a call of its own
        assert [(c["layers"], c["specs"], c["extra"]) for c in mine] == [
            (["input", "final"], ["grad", "rise:masks=4"], False),
            (["input"], ["occlusion:k=8,s=8,scheme=inside"], False),  # 16-pixel grid, 2 windows
            (["final"], ["occlusion:k=4,s=4,scheme=inside"], False),  # 8-position map
            (["input", "final"], ["smoothgrad-ixg:samples=2"], True),
        ]
        assert [c["artifacts"] for c in mine] == [4, 1, 1, 2]


def test_every_key_is_measured_once_and_both_sides_agree(report):
    keys = report["keys"]
    assert len(keys) == len(bench.SETTINGS) * len(LAYERS) * len(METHODS)
    assert len({(k["setting"], k["layer"], k["method"]) for k in keys}) == len(keys)
    for k in keys:
        assert k["targets"] == (4 if k["setting"] == "gridpg" else 2)
        assert k["attributions"] == 2 * k["targets"]
        assert k["loop_targets_timed"] == k["targets"]
        assert k["speedup_cpu"] == pytest.approx(k["loop_cpu_s"] / k["attrcli_cpu_s"])
        assert k["speedup_wall"] == pytest.approx(k["loop_wall_s"] / k["attrcli_wall_s"])
        assert k["agreement"]["status"] == "agree", (k["setting"], k["layer"], k["method"], k["agreement"])


def test_attrcli_only_methods_stay_out_of_the_ratio(report):
    extra = report["attrcli_only"]
    assert [(e["setting"], e["methods"], e["keys"]) for e in extra] == [
        (s, ["smoothgrad-ixg:samples=2"], len(LAYERS)) for s in bench.SETTINGS]
    assert all("loop_cpu_s" not in e and e["loop"].startswith("no implementation") for e in extra)
    only = report["summary"]["attrcli_only"]
    assert only["methods"] == ["smoothgrad-ixg"] and only["keys"] == 6 and only["calls"] == 3
    assert only["cpu_s"] == pytest.approx(sum(c["cpu_s"] for c in report["calls"] if c["extra"]))
    assert "smoothgrad-ixg" not in report["summary"]["per_method"]
    assert all(k["method"] in METHODS for k in report["keys"])


def test_totals_are_sums_and_ratios_are_loop_over_attrcli(report):
    summary, keys, calls = report["summary"], report["keys"], report["calls"]
    ours = [c for c in calls if not c["extra"]]
    for clock in ("cpu", "wall"):
        s = summary["study"][clock]
        assert s["loop_s"] == pytest.approx(sum(k[f"loop_{clock}_s"] for k in keys))
        assert s["attrcli_study_s"] == pytest.approx(sum(c[f"{clock}_s"] for c in ours))
        assert s["attrcli_keys_alone_s"] == pytest.approx(sum(k[f"attrcli_{clock}_s"] for k in keys))
        assert s["ratio_of_totals"] == pytest.approx(s["loop_s"] / s["attrcli_study_s"])
        assert s["ratio_of_totals_keys_alone"] == pytest.approx(s["loop_s"] / s["attrcli_keys_alone_s"])
        speedups = [k[f"speedup_{clock}"] for k in keys]
        assert s["geomean_speedup"] == pytest.approx(math.exp(sum(map(math.log, speedups)) / len(speedups)))
        assert min(speedups) <= s["geomean_speedup"] <= max(speedups)
        assert s["slowest"]["speedup"] == pytest.approx(min(speedups))
        settings = summary["per_setting"].values()
        assert sum(t[clock]["loop_s"] for t in settings) == pytest.approx(s["loop_s"])
        assert sum(t[clock]["attrcli_study_s"] for t in settings) == pytest.approx(s["attrcli_study_s"])
        methods = summary["per_method"].values()
        assert sum(m[clock]["loop_s"] for m in methods) == pytest.approx(s["loop_s"])
    assert summary["study"]["keys"] == len(keys) and summary["study"]["calls"] == len(ours)
    assert summary["agreement"] == {"agree": len(keys)}


def test_report_tables(report, study):
    report = report | {"meta": {"mode": "quick", "date": "d", "cpu": "c", "load_before": [1.0], "load_after": [1.0]},
                       "plan": {**bench.dataclasses.asdict(study), "grid_px": 16, "reductions": bench.reductions(study, 16)}}
    text = bench.markdown(report)
    ratio = report["summary"]["study"]["cpu"]["ratio_of_totals"]
    assert f"**Whole study: {ratio:.2f}×" in text
    assert text.count("\n| tiny | ") == len(bench.SETTINGS) and "| **study** | all | 18 | 9 |" in text
    assert "smoothgrad-ixg; attrcli ran their 6 keys in 3 more calls" in text and "occlusion 2×2 windows per map (scheme=inside)" in text
    assert bench.readme_line(report).startswith("| whole study, tiny (3 settings, 18 keys, `bench_study.py --quick`) |")


def test_the_channel_cap_gets_its_own_view_and_call():
    study = bench.Study(models=("vgg11",), methods=("grad", "scorecam", "ablationcam", "occlusion"), extra=(),
                        reduced=work.Reduced(channels=8))
    calls = bench.study_calls("vgg11", study, {"input": 448, "middle": 56, "final": 28}, 224)
    assert [(c.model, c.layers, c.specs) for c in calls] == [
        ("vgg11-c224", ["input", "middle", "final"], ["grad", "occlusion:scheme=inside"]),
        ("vgg11-c224-cap8", ["input", "middle", "final"], ["scorecam", "ablationcam"]),
    ]
    assert bench.key_view("vgg11", "scorecam", study, 224) == "vgg11-c224-cap8"
    assert bench.key_view("vgg11", "occlusion", study, 224) == "vgg11-c224"


def test_capped_view_cuts_middle_and_final(tiny):
    view = _study_models.build("tiny-c8-cap2")
    assert _study_models.build("tiny-c8-cap2") is view  # memoised: every call gets the same weights
    x = torch.randn(1, 3, 8, 8)
    for layer in ("middle", "final"):
        assert view.run_blocks(x, -1, view.layer_index(layer)).shape[1] == 2
    assert view.run_blocks(x, -1, view.layer_index("input") + 1).shape == tiny.run_blocks(x, -1, 0).shape
    assert view.logits(x).shape == tiny.logits(x).shape
    _study_models._built.pop("tiny-c8-cap2")


def test_a_failing_call_raises_its_error_line(tiny, tmp_path):
    grid = work.random_grid_file(tmp_path / "g.h5", tiny, variant="distinct", count=1)
    with pytest.raises(RuntimeError, match=r"exit 2\): .*nosuch"):
        bench.cli(["attribute", "--grids", str(grid), "--model", _study_models.spec("tiny-c8"),
                   "--method", "nosuch", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.h5"))
