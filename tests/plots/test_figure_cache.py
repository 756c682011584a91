"""The figure stage: each figure redrawn only when what it is drawn from changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from attrcli.stages import figures
from attrcli.stages.figures import MANIFEST, FigureResult, draw_figures, plan_figures

STUDY = SimpleNamespace(name="toy", models=("digits-vgg11",), settings=("gridpg",),
                        layers=("input", "final"), smoothing_settings=("gridpg",), n=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory, helpers, fakes) -> Path:
    """Attributions, scores and AggAtt of 2 layers x 2 methods (GridPG, one model), made once."""
    folder = tmp_path_factory.mktemp("figure-bench")
    here = os.getcwd()
    os.chdir(folder)
    try:
        helpers.aggatt_study(fakes, layers=("input", "final"), methods=("gradcam", "grad"))
    finally:
        os.chdir(here)
    return folder


@pytest.fixture
def bench(built, workdir):
    """A copy of the built artifacts in the test's working folder (their paths are relative)."""
    shutil.copytree(built, workdir, dirs_exist_ok=True)
    keys = [(layer, method) for layer in ("input", "final") for method in ("gradcam", "grad")]

    def path(stage, layer, method):
        return Path("cache") / stage / "toy" / "gridpg" / "digits-vgg11" / layer / f"{method}.h5"

    return {"grid": Path("data/grids/toy.h5"), "report": Path("reports/toy"),
            **{stage: {k: path(stage, *k) for k in keys} for stage in ("attributions", "scores", "aggatt")}}


@pytest.fixture
def quick(monkeypatch):
    """Figures drawn as a few bytes naming what they show (the cache logic without matplotlib)."""
    from attrcli.store import file_hash
    from attrcli.store.files import write_bytes

    def draw(plan, out, fmt):
        write_bytes(out, " ".join([plan.figure, *(file_hash(p) for p in plan.reads)]).encode())
        return out

    monkeypatch.setattr(figures, "draw_figure", draw)


def _draw(bench, jobs: int = 1, **options) -> FigureResult:
    return draw_figures(study=STUDY, report_dir=bench["report"], fmt="png",
                        scores=list(bench["scores"].values()), aggatts=list(bench["aggatt"].values()),
                        correlations=[], grid_files={}, jobs=jobs, **options)


def _state(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


NAMES = ["boxes.png", "aggatt-gridpg-digits-vgg11.png", "examples-gridpg-digits-vgg11-input.png",
         "examples-gridpg-digits-vgg11-final.png"]


def test_second_draw_writes_nothing_and_force_redraws_the_same_bytes(bench, helpers):
    first = _draw(bench, jobs=2)  # in two worker processes
    assert [p.name for p in first.paths] == NAMES
    assert first.redrawn == first.paths and first.reused == ()
    assert list(first) == list(first.paths) and len(first) == 4  # a sequence of its paths
    before = _state(bench["report"])
    assert set(before) == {*NAMES, MANIFEST}
    second = _draw(bench)
    assert second.reused == first.paths and second.redrawn == ()
    assert second.to_dict() == {"figures": [str(p) for p in first.paths],
                                "reused": [str(p) for p in first.paths], "redrawn": []}
    assert _state(bench["report"]) == before  # not one file written: same mtimes, same bytes
    forced = _draw(bench, force=True)  # in this process
    assert forced.redrawn == first.paths
    after = _state(bench["report"])
    for name in NAMES:  # drawn again, to the same bytes (no dates or versions in the file)
        assert after[name][0] > before[name][0] and after[name][1] == before[name][1]
        helpers.assert_drawn(bench["report"] / name)


def test_one_changed_input_redraws_only_the_figures_that_show_it(bench, helpers, fakes, quick):
    from attrcli.stages.aggatt import aggatt

    _draw(bench)
    before = _state(bench["report"])
    helpers.write_scores(helpers.CACHE, np.full((20, 4), 0.5), layer="input", method="grad")
    assert bench["scores"]["input", "grad"].exists()
    changed = _draw(bench)
    assert [p.name for p in changed.redrawn] == ["boxes.png"]
    after = _state(bench["report"])
    assert {n for n in NAMES if after[n] != before[n]} == {"boxes.png"}
    # A recomputed attribution (and its AggAtt) at the final layer: the AggAtt figure and the
    # final layer's examples, not the input layer's.
    fakes.make_attribution(helpers.CACHE, helpers.bump_maps(20, strength=3.0, seed=99),
                           grid_path=bench["grid"], layer="final", method="grad")
    aggatt(paths=[bench["attributions"]["final", "grad"]], cell=0)
    again = _draw(bench)  # the AggAtt stage scored the new maps too: the box plot shows them
    assert {p.name for p in again.redrawn} == {"boxes.png", "aggatt-gridpg-digits-vgg11.png",
                                               "examples-gridpg-digits-vgg11-final.png"}
    final = _state(bench["report"])
    assert final["examples-gridpg-digits-vgg11-input.png"] == after["examples-gridpg-digits-vgg11-input.png"]
    assert _draw(bench).redrawn == ()


def test_touched_inputs_are_rehashed_and_a_lost_figure_is_redrawn(bench, quick):
    _draw(bench)
    before = _state(bench["report"])
    for path in bench["scores"].values():
        os.utime(path)  # identity changed, content not: reused after hashing again
    touched = _draw(bench)
    assert touched.redrawn == ()
    assert all(_state(bench["report"])[n] == before[n] for n in NAMES)
    (bench["report"] / "boxes.png").unlink()
    (bench["report"] / NAMES[1]).write_bytes(b"edited")
    redrawn = _draw(bench)
    assert {p.name for p in redrawn.redrawn} == {"boxes.png", NAMES[1]}
    assert (bench["report"] / NAMES[1]).read_bytes() == before[NAMES[1]][1]


def test_manifest_records_hashes_and_options(bench, quick):
    from attrcli.plots.common import DPI, DRAWING_VERSION
    from attrcli.store import file_hash

    _draw(bench)
    manifest = json.loads((bench["report"] / MANIFEST).read_text())
    entry = manifest["figures"]["boxes.png"]
    assert entry["options"]["format"] == "png" and entry["options"]["dpi"] == DPI
    assert entry["options"]["drawing"] == DRAWING_VERSION
    assert entry["inputs"] == {str(p): file_hash(p) for p in bench["scores"].values()}
    assert entry["output"] == file_hash(bench["report"] / "boxes.png")
    examples = manifest["figures"]["examples-gridpg-digits-vgg11-final.png"]["inputs"]
    assert str(bench["attributions"]["final", "grad"]) in examples  # the maps it shows


def test_a_failed_figure_is_reported_and_the_others_are_kept(bench):
    from attrcli.errors import UserError

    bench["aggatt"]["input", "grad"].unlink()
    with pytest.raises(UserError):
        _draw(bench)
    manifest = json.loads((bench["report"] / MANIFEST).read_text())
    assert "boxes.png" in manifest["figures"]
    assert "aggatt-gridpg-digits-vgg11.png" not in manifest["figures"]


def test_missing_parts_are_left_out(tmp_path):
    """No smoothed keys: no smoothing figure; only the settings and layers given."""

    def key(stage, setting, layer, method):
        return tmp_path / stage / "toy" / setting / "digits-vgg11" / layer / f"{method}.h5"

    study = SimpleNamespace(models=("digits-vgg11", "digits-resnet18"), settings=("gridpg", "difull"),
                            layers=("input",), smoothing_settings=("gridpg",))
    scores = [key("scores", "gridpg", "input", m) for m in ("grad", "intgrad", "ixg")]
    aggatts = [key("aggatt", "gridpg", "input", m) for m in ("grad", "ixg")]
    plans = plan_figures(study=study, fmt="png", scores=scores,
                         aggatts=aggatts, correlations=[])
    assert [p.name for p in plans] == ["boxes.png", "aggatt-gridpg-digits-vgg11.png",
                                       "examples-gridpg-digits-vgg11-input.png"]
    smoothed = scores + [key("scores", "gridpg", "input", "s-ixg:k=3")]
    plans = plan_figures(study=study, fmt="png", scores=smoothed,
                         aggatts=[], correlations=[])
    assert [p.name for p in plans] == ["boxes.png", "smoothing.png"]
    assert plans[1].options == {"reference": "input/gradcam", "layer": "input"}
    assert str(smoothed[-1]) in plans[1].paths and str(smoothed[-1]) not in plans[0].paths
    study.figures = ("smoothing",)  # a study file that asks for the sweep alone
    assert [p.name for p in plan_figures(study=study, fmt="png", scores=smoothed,
                                         aggatts=aggatts, correlations=[])] == ["smoothing.png"]


def test_a_3x3_study_draws_its_chance_line_at_one_ninth(workdir, helpers):
    from attrcli.plots import build_boxes, build_smoothing

    rng = np.random.default_rng(3)
    paths = [helpers.write_scores(helpers.CACHE, rng.random((12, 9)), n=3, method=m, layer=layer)
             for m in ("grad", "gradcam") for layer in ("input", "final")]
    fig = build_boxes(score_paths=paths)
    (ax,) = fig.axes
    guides = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    assert guides == pytest.approx([1 / 9, 1.0])
    assert "uniform attribution (1/n² = 0.111)" in [t.get_text() for t in fig.legends[0].get_texts()]
    sweep = helpers.write_scores(helpers.CACHE, rng.random((12, 9)), n=3, method="s-ixg:k=3")
    base = helpers.write_scores(helpers.CACHE, rng.random((12, 9)), n=3, method="ixg")
    (loc,) = build_smoothing(score_paths=[sweep, base]).axes  # no reference: one panel
    assert sorted(line.get_ydata()[0] for line in loc.get_lines()
                  if line.get_linestyle() == ":" and len(set(line.get_ydata())) == 1) == pytest.approx([1 / 9, 1.0])
