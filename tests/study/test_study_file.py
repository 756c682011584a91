"""Study files: read and checked before anything runs, planned, run, rerun (``attrcli run STUDY.toml``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.stages.studyfile import preset_names, preset_text, read_study, render

runner = CliRunner()

PLUGIN_MODEL = "tests.study.plugin_models:small_vgg"
PLUGIN_METHOD = "tests.structure.toy_method:ToyScaledGradient:scale=3"

MINI = f"""
name = "mini"
description = "A tiny custom study: a plugin model and a plugin method on 3x3 grids."
models = ["{PLUGIN_MODEL}"]
settings = ["gridpg", "difull"]
layers = ["input", "final"]
methods = ["grad", "{PLUGIN_METHOD}", "intgrad:steps=4"]

[[methods_at]]
layers = ["final"]
methods = ["grad", "gradcam"]

[grids]
n = 3
distinct = "distinct.h5"
corners = "corners.h5"

[smoothing]
settings = []

[analysis]
figures = ["boxes", "aggatt"]
resamples = 200

[[analysis.compare]]
setting = "gridpg"
keys = ["input/grad", "final/gradcam"]

[compute]
device = "cpu"
batch_size = 2
"""


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """A study folder with the study file and its two 3×3 grid files."""
    from tests.engine.helpers import write_grids

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRCLI_JOBS", "1")  # in this process; the parallel path has a test of its own
    write_grids(tmp_path / "distinct.h5", count=2, n=3, variant="distinct")
    write_grids(tmp_path / "corners.h5", count=2, n=3, variant="corners")
    (tmp_path / "mini.toml").write_text(MINI)
    return tmp_path


# --- presets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", preset_names())
def test_a_preset_renders_as_a_commented_file_that_reads_back_equal(name):
    study = read_study(preset_text(name), source=f"{name}.toml")
    shown = runner.invoke(app, ["run", "--show-preset", name])
    assert shown.exit_code == 0, shown.output
    assert read_study(shown.stdout, source="copy.toml") == study
    lines = shown.stdout.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#?\s?[a-z_]+ = ", line) and not line.startswith("# [") and i > 0:
            assert lines[i - 1].startswith("# "), f"no comment above {line!r}"
    assert render(study) == shown.stdout


def test_the_digits_preset_plans_exactly_the_earlier_study():
    """The shipped digits file makes the requests the hard-coded preset made: one per model and
    setting over the three layers and eleven methods, then the smoothing sweep at the input
    (GridPG and DiFull; SmoothGrad on GridPG only)."""
    from attrcli.stages.run import _planned

    planned = _planned("digits", {}, Path("data/grids"), Path("cache"), False)
    kernels = (3, 5, 9, 19, 37)
    assert planned.kernels == kernels and planned.label == "digits"
    seen = []
    for r in planned.requests:
        seen.append((r.model, r.setting, tuple(r.layers), tuple(r.methods), Path(r.grids).name, r.batch_size, r.heads))
    paper = ("grad", "guided-backprop", "ixg", "intgrad", "gradcam", "gradcam++", "layercam", "ablationcam",
             "scorecam", "occlusion", "rise")
    expected = []
    for model in ("digits-vgg11", "digits-resnet18"):
        for setting in ("gridpg", "difull", "dipart"):
            grids = "digits-distinct-n2-count32.h5" if setting == "gridpg" else "digits-corners-n2-count32.h5"
            expected.append((model, setting, ("input", "middle", "final"), paper, grids, 64, None))
            if setting != "dipart":
                derived = tuple(f"s-{b}:k={k}" for b in ("intgrad", "ixg") for k in kernels)
                if setting == "gridpg":
                    derived += ("smoothgrad-intgrad", "smoothgrad-ixg")
                expected.append((model, setting, ("input",), derived, grids, 64, None))
    assert seen == expected


# --- broken files: exit 2, one line naming the file and the place, nothing written ---------------

BROKEN = [
    # (what is changed in MINI, replaced by, expected message)
    ('name = "mini"', 'name = "mini"\nname2 = 1', r"mini\.toml: name2: unknown key \(did you mean name\?\)"),
    ('name = "mini"', 'nmae = "mini"', r"mini\.toml: nmae: unknown key \(did you mean name\?\)"),
    ('name = "mini"', 'name = 3', r"mini\.toml: name: must be a string, got 3"),
    ('name = "mini"', 'name = "a/b"', r"mini\.toml: name: must be a folder name"),
    ('name = "mini"\n', '', r"mini\.toml: name: missing"),
    (f'models = ["{PLUGIN_MODEL}"]', 'models = []', r"mini\.toml: models: missing"),
    (f'models = ["{PLUGIN_MODEL}"]', 'models = ["vgg12"]', r"mini\.toml: models\[0\]: unknown model 'vgg12'"),
    (f'models = ["{PLUGIN_MODEL}"]', 'models = [3]', r"mini\.toml: models\[0\]: must be a model name or a \{name, weights\} table, got 3"),
    (f'models = ["{PLUGIN_MODEL}"]', f'models = [{{ name = "{PLUGIN_MODEL}", weights = "nope.pth" }}]',
     r"mini\.toml: models\[0\]\.weights: .*nope\.pth"),
    (f'models = ["{PLUGIN_MODEL}"]', f'models = [{{ name = "{PLUGIN_MODEL}", wieghts = "w.pth" }}]',
     r"mini\.toml: \[\[models\]\]\[0\] wieghts: unknown key \(did you mean weights\?\)"),
    (f'models = ["{PLUGIN_MODEL}"]', f'models = ["{PLUGIN_MODEL}", "{PLUGIN_MODEL}"]', r"mini\.toml: models\[1\]: .* listed twice"),
    ('settings = ["gridpg", "difull"]', 'settings = ["gridpg", "difful"]', r"mini\.toml: settings\[1\]: unknown setting 'difful'"),
    ('settings = ["gridpg", "difull"]', 'settings = "gridpg"', r"mini\.toml: settings: must be a list of strings"),
    ('settings = ["gridpg", "difull"]', 'settings = []', r"mini\.toml: settings: must not be empty"),
    ('settings = ["gridpg", "difull"]', 'settings = ["gridpg", "gridpg"]', r"mini\.toml: settings\[1\]: 'gridpg' is listed twice"),
    ('layers = ["input", "final"]', 'layers = ["input", "finale"]', r"mini\.toml: layers\[1\]: .*finale"),
    ('layers = ["input", "final"]', 'layers = ["input", 7]', r"mini\.toml: layers\[1\]: must be a string, got 7"),
    ('methods = ["grad"', 'methods = ["gradcm"', r"mini\.toml: methods\[0\]: unknown method 'gradcm'; valid: .*grad"),
    ('"intgrad:steps=4"', '"intgrad:stepz=4"', r"mini\.toml: methods\[2\]: method intgrad has no parameter 'stepz'"),
    ('"intgrad:steps=4"', '"intgrad:steps=four"', r"mini\.toml: methods\[2\]: method intgrad: parameter steps must be int"),
    ('"intgrad:steps=4"', '"occlusion:k=500"', r"mini\.toml: methods\[2\]: .*occlusion"),
    ('"intgrad:steps=4"', '"no.such.module:Thing"', r"mini\.toml: methods\[2\]: "),
    ('methods = ["grad", "gradcam"]', 'methods = ["grad", "gradcm"]', r"mini\.toml: methods_at\[0\]\.methods\[1\]: unknown method 'gradcm'"),
    ('layers = ["final"]\nmethods', 'layers = ["fianl"]\nmethods', r"mini\.toml: methods_at\[0\]\.layers\[0\]: 'fianl' is not a layer"),
    ('layers = ["final"]\nmethods', 'layer = ["final"]\nmethods', r"mini\.toml: \[\[methods_at\]\]\[0\] layer: unknown key \(did you mean layers\?\)"),
    ('n = 3', 'n = "3x3"', r'mini\.toml: grids\.n: must be an integer, got "3x3"'),
    ('n = 3', 'n = 1', r"mini\.toml: grids\.n: must be an integer >= 2, got 1"),
    ('n = 3', 'n = 2', r"mini\.toml: grids\.distinct: distinct\.h5 holds 3×3 grids but grids\.n = 2"),
    ('n = 3', 'n = 3\ncount_distinct = 0', r"mini\.toml: grids\.count_distinct: must be an integer >= 1, got 0"),
    ('n = 3', 'n = 3\nmin_conf = 1.5', r"mini\.toml: grids\.min_conf: must be a number between 0 and 1"),
    ('n = 3', 'n = 3\ncel_size = 32', r"mini\.toml: \[grids\] cel_size: unknown key \(did you mean cell_size\?\)"),
    ('n = 3', 'n = 3\ncell_size = 64', r"mini\.toml: grids\.cell_size: tests\.study\.plugin_models:small_vgg needs 32-pixel cells, not 64"),
    ('distinct = "distinct.h5"', 'distinct = "missing.h5"', r"mini\.toml: grids\.distinct: no such file"),
    ('distinct = "distinct.h5"', 'distinct = "corners.h5"', r"mini\.toml: grids\.distinct: corners\.h5 holds corners grids, not distinct"),
    ('distinct = "distinct.h5"', 'distinct = "grids.txt"', r"mini\.toml: grids\.distinct: no such file"),
    ('distinct = "distinct.h5"\ncorners = "corners.h5"', 'dataset = "imagenet"', r"mini\.toml: grids\.root: the imagenet dataset needs its folder"),
    ('distinct = "distinct.h5"\ncorners = "corners.h5"', 'dataset = "mnist"', r"mini\.toml: grids\.dataset: unknown dataset 'mnist'"),
    ('distinct = "distinct.h5"\ncorners = "corners.h5"', 'dataset = "imagenet"\nroot = "/no/such/folder"',
     r"mini\.toml: grids\.root: no such folder '/no/such/folder'"),
    ('[smoothing]\nsettings = []', '[smoothing]\nsettings = []\nkernels = [4]', r"mini\.toml: smoothing\.kernels\[0\]: must be an odd integer >= 3"),
    ('[smoothing]\nsettings = []', '[smoothing]\nsettings = ["gridpgg"]', r"mini\.toml: smoothing\.settings\[0\]: unknown setting 'gridpgg'"),
    ('[smoothing]\nsettings = []', '[smoothing]\nsettings = []\nsmoothgrad = ["smoothgrad"]', r"mini\.toml: smoothing\.smoothgrad\[0\]: unknown value 'smoothgrad'"),
    ('figures = ["boxes", "aggatt"]', 'figures = ["boxes", "heatmap"]', r"mini\.toml: analysis\.figures\[1\]: unknown value 'heatmap' \(valid: boxes"),
    ('resamples = 200', 'resamples = 10', r"mini\.toml: analysis\.resamples: must be an integer >= 100, got 10"),
    ('resamples = 200', 'resamples = 200\nconfidence = 95', r"mini\.toml: analysis\.confidence: must be a number between 0 and 1"),
    ('resamples = 200', 'resamples = 200\ninterval = "normal"', r"mini\.toml: analysis\.interval: unknown value 'normal' \(valid: percentile, bca\)"),
    ('resamples = 200', 'resamples = 200\nformat = "gif"', r"mini\.toml: analysis\.format: unknown value 'gif'"),
    ('resamples = 200', 'resamples = 200\ncorrelate = ["dipartt"]', r"mini\.toml: analysis\.correlate\[0\]: unknown setting 'dipartt'"),
    ('keys = ["input/grad", "final/gradcam"]', 'keys = ["input/grad"]', r"mini\.toml: analysis\.compare\[0\]\.keys: give at least two"),
    ('keys = ["input/grad", "final/gradcam"]', 'keys = ["input/grad", "final/scorecam"]',
     r"mini\.toml: analysis\.compare\[0\]\.keys\[1\]: final/scorecam is not a key the study computes"),
    ('keys = ["input/grad", "final/gradcam"]', 'keys = ["input/grad", "gradcam"]', r"mini\.toml: analysis\.compare\[0\]\.keys\[1\]: write a key as layer/method"),
    ('setting = "gridpg"\nkeys', 'setting = "dipart"\nkeys', r"mini\.toml: analysis\.compare\[0\]\.setting: 'dipart' is not a setting of the study"),
    ('setting = "gridpg"\nkeys', 'setting = "gridpg"\nmodel = "vgg11"\nkeys', r"mini\.toml: analysis\.compare\[0\]\.model: 'vgg11' is not a model of the study"),
    ('setting = "gridpg"\nkeys', 'settting = "gridpg"\nkeys', r"mini\.toml: \[\[analysis\.compare\]\]\[0\] settting: unknown key \(did you mean setting\?\)"),
    ('device = "cpu"', 'device = "tpu"', r"mini\.toml: compute\.device: unknown device 'tpu'"),
    ('device = "cpu"', 'device = "cpu"\nprecision = "fp16"', r"mini\.toml: compute\.precision: unknown value 'fp16' \(valid: fp32, tf32, bf16\)"),
    ('device = "cpu"', 'device = "cpu"\nprecision = "tf32"', r"mini\.toml: compute\.precision: .*tf32"),
    ('batch_size = 2', 'batch_size = 0', r"mini\.toml: compute\.batch_size: must be an integer >= 1, got 0"),
    ('batch_size = 2', 'batch_size = 2.5', r"mini\.toml: compute\.batch_size: must be an integer, got 2\.5"),
    ('batch_size = 2', 'batch_size = 2\n\n[launcher]\npartiton = "gpu"', r"mini\.toml: \[launcher\] partiton: unknown key \(did you mean partition\?\)"),
    ('batch_size = 2', 'batch_size = 2\n\n[launcher]\nkind = "pbs"', r"mini\.toml: launcher\.kind: unknown value 'pbs' \(valid: inline, local, slurm\)"),
    ('batch_size = 2', 'batch_size = 2\n\n[launcher]\nshards = 0', r"mini\.toml: launcher\.shards: must be an integer >= 1, got 0"),
    ('batch_size = 2', 'batch_size = 2\n\n[launcher]\ntime = true', r"mini\.toml: launcher\.time: must be an integer, got true"),
    ('heads', 'heads', None),  # placeholder removed below
    ('[compute]', '[compute]\nheads = "all"', r"mini\.toml: \[compute\] heads: unknown key"),
    ('layers = ["input", "final"]', 'layers = ["input", "final"]\nheads = "some"', r"mini\.toml: heads: must be .*corners"),
    ('layers = ["input", "final"]', 'layers = ["input", "final"]\nheads = [0, 0]', r"mini\.toml: heads: must be distinct cell indices"),
    ('layers = ["input", "final"]', 'layers = ["input", "final"]\nseed = -1', r"mini\.toml: seed: must be an integer >= 0, got -1"),
    ('[grids]', '[grids]\n[grids.extra]', r"mini\.toml: \[grids\] extra: unknown key"),
    ('name = "mini"', 'name = "mini', r"mini\.toml: not a valid TOML file: .*line \d+, column \d+"),
    ('[grids]', '[grids', r"mini\.toml: not a valid TOML file: .*line \d+, column \d+"),
    ('methods = ["grad"', 'methods = ["guided-backprop", "grad"', None),  # valid on this model: checked below
]
BROKEN = [case for case in BROKEN if case[2] is not None]


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN, ids=[f"{i:02d}" for i in range(len(BROKEN))])
def test_a_broken_study_file_exits_2_with_one_line_naming_file_and_place(mini, old, new, expected):
    assert old in MINI
    (mini / "mini.toml").write_text(MINI.replace(old, new, 1))
    before = _tree(mini)
    result = runner.invoke(app, ["run", "mini.toml", "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert re.search(expected, lines[0]), lines[0]
    assert _tree(mini) == before


def test_there_are_at_least_forty_kinds_of_broken_file():
    assert len(BROKEN) >= 40


def test_a_combination_that_does_not_apply_is_named(tmp_path, monkeypatch):
    """Guided backprop on a GELU model, DiPart on a ViT: refused with the place in the file."""
    monkeypatch.chdir(tmp_path)
    study = 'name = "vit"\nmodels = ["vit_b_16"]\nsettings = ["gridpg", "dipart"]\nlayers = ["input"]\nmethods = ["grad"]\n'
    (tmp_path / "vit.toml").write_text(study + '[grids]\ndataset = "imagenet"\nroot = "."\n')
    result = runner.invoke(app, ["run", "vit.toml"])
    assert result.exit_code == 2 and re.search(r"vit\.toml: settings\[1\]: .*dipart", result.output.lower()), result.output
    (tmp_path / "vit.toml").write_text(study.replace('"gridpg", "dipart"', '"gridpg"').replace('["grad"]', '["grad", "guided-backprop"]')
                                       + '[grids]\ndataset = "imagenet"\nroot = "."\n')
    result = runner.invoke(app, ["run", "vit.toml"])
    assert result.exit_code == 2 and re.search(r"vit\.toml: methods\[1\]: .*guided", result.output), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.toml"]


def test_a_cli_override_names_the_option_not_the_file(mini):
    result = runner.invoke(app, ["run", "mini.toml", "--device", "tpu"])
    assert result.exit_code == 2 and "--device: unknown device 'tpu'" in result.output


# --- planned, run, rerun ------------------------------------------------------------------------

def _dry(args: list[str]) -> dict:
    result = runner.invoke(app, ["run", *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_custom_study_runs_what_its_dry_run_lists_and_reports_exactly_its_parts(mini):
    plan = _dry(["mini.toml"])
    to_compute = sorted(label for job in plan["jobs"] for label in job["to_compute"])
    # 2 settings × (input: grad, plugin, intgrad; final: grad, gradcam) = 10 keys, in 3×3 grids
    assert len(to_compute) == 10 and plan["total"]["up_to_date"] == 0
    assert "distinct/gridpg/small-vgg/input/tests.structure.toy_method:ToyScaledGradient:scale=3.0" in to_compute
    assert "distinct/gridpg/small-vgg/input/intgrad:steps=4" in to_compute
    assert not any(label.endswith("final/intgrad:steps=4") for label in to_compute)  # methods_at: final
    assert all(job["macs"] > 0 for job in plan["jobs"])
    assert list(mini.glob("cache")) == [] and list(mini.glob("reports")) == []  # the dry run wrote nothing

    first = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet", "--device", "cpu"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert sorted(report["computed_keys"]) == to_compute
    assert _dry(["mini.toml"])["total"]["to_compute"] == 0

    summary = Path(report["summary"]).read_text()
    assert "## gridpg · small-vgg" in summary and "## difull · small-vgg" in summary and "dipart" not in summary
    assert "uniform map = 0.111" in summary  # 1/n² of 3×3 grids
    assert "| tests.structure.toy_method:ToyScaledGradient:scale=3.0 |" in summary
    assert "| intgrad:steps=4 |" in summary
    assert "## Paired comparisons" in summary and "input/grad" in summary
    assert "Smoothing" not in summary
    from attrcli.stages.studyfile import load_study

    assert load_study(mini / "mini.toml").text_hash in summary and 'name = "mini"' in summary
    assert "`--device cpu`" in summary
    page = Path(report["html"]).read_text()
    assert Path(report["html"]).parent == Path(report["summary"]).parent
    assert "intgrad:steps=4" in page and load_study(mini / "mini.toml").text_hash in page and "dipart" not in page
    names = sorted(Path(f).name for f in report["figures"])
    assert names == ["aggatt-difull-small-vgg.png", "aggatt-gridpg-small-vgg.png", "boxes.png"]

    # A rerun with nothing changed writes nothing in the report folder.
    report_dir = Path(report["summary"]).parent
    before = _tree(report_dir)
    again = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet", "--device", "cpu"])
    assert again.exit_code == 0 and json.loads(again.stdout)["computed_keys"] == []
    assert json.loads(again.stdout)["figures_redrawn"] == [] and len(json.loads(again.stdout)["figures_reused"]) == 3
    assert _tree(report_dir) == before

    # Editing one method's parameter recomputes that key alone, in both settings.
    (mini / "mini.toml").write_text(MINI.replace("intgrad:steps=4", "intgrad:steps=6"))
    plan = _dry(["mini.toml"])
    assert sorted(label for job in plan["jobs"] for label in job["to_compute"]) == [
        "corners/difull/small-vgg/input/intgrad:steps=6", "distinct/gridpg/small-vgg/input/intgrad:steps=6"]
    second = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet"])
    assert second.exit_code == 0, second.output
    assert sorted(json.loads(second.stdout)["computed_keys"]) == sorted(
        label for job in plan["jobs"] for label in job["to_compute"])


def test_parallel_attribution_processes_write_the_same_artifacts(mini, monkeypatch):
    """A cold run with two attribution processes gives the maps of a run in this process."""
    import shutil

    import h5py
    import numpy as np

    serial = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet"])
    assert serial.exit_code == 0, serial.output
    shutil.move(mini / "cache", mini / "serial")
    monkeypatch.setenv("ATTRCLI_JOBS", "2")
    parallel = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet"])
    assert parallel.exit_code == 0, parallel.output
    assert sorted(json.loads(parallel.stdout)["computed_keys"]) == sorted(json.loads(serial.stdout)["computed_keys"])
    artifacts = sorted((mini / "serial" / "attributions").rglob("*.h5"))
    assert len(artifacts) == 10
    for path in artifacts:
        twin = mini / "cache" / path.relative_to(mini / "serial")
        with h5py.File(path) as a, h5py.File(twin) as b:
            assert np.array_equal(a["maps"][()], b["maps"][()]), path


def test_run_the_preset_and_the_shipped_file_are_one_study(tmp_path):
    from importlib import resources

    from attrcli.stages.run import open_study

    shipped = resources.files("attrcli.stages") / "presets" / "digits.toml"
    copy = tmp_path / "digits.toml"
    copy.write_text(shipped.read_text())
    assert open_study("digits") == open_study(copy) == open_study(str(copy))
    assert open_study("digits").text == shipped.read_text()


def test_a_study_file_reaches_the_sanity_checks(mini):
    """[sanity] runs the model-randomisation check over the chosen keys, into the summary."""
    text = MINI.replace('methods = ["grad", "gradcam"]\n', 'methods = ["grad", "gradcam"]\n\n[sanity]\nmodes = ["cascading"]\n'
                        'layers = ["input"]\nmethods = ["grad", "random"]\n', 1)
    text = text.replace('settings = ["gridpg", "difull"]', 'settings = ["gridpg"]', 1).replace(
        '[[analysis.compare]]\nsetting = "gridpg"\nkeys = ["input/grad", "final/gradcam"]\n', '')
    (mini / "mini.toml").write_text(text)
    result = runner.invoke(app, ["run", "mini.toml", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = Path(json.loads(result.stdout)["summary"]).read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in summary.splitlines() if line.startswith("| gridpg/")}
    assert set(rows) == {"gridpg/small-vgg/input/grad", "gridpg/small-vgg/input/random"}
    assert "| cascading |" in rows["gridpg/small-vgg/input/random"] and "| 1.00" in rows["gridpg/small-vgg/input/random"]
    broken = text.replace('methods = ["grad", "random"]', 'methods = ["grad", "randon"]')
    (mini / "mini.toml").write_text(broken)
    result = runner.invoke(app, ["run", "mini.toml"])
    assert result.exit_code == 2 and "mini.toml: sanity.methods[1]: unknown method 'randon'" in result.output


def test_a_weights_path_is_read_relative_to_the_study_file(mini, monkeypatch):
    """`weights = "w.pth"` names the file beside the study file, wherever the run starts."""
    import torch

    from tests.study.plugin_models import small_vgg

    torch.save(small_vgg().module.state_dict(), mini / "w.pth")
    text = MINI.replace(f'models = ["{PLUGIN_MODEL}"]', f'models = [{{ name = "{PLUGIN_MODEL}", weights = "w.pth" }}]')
    (mini / "mini.toml").write_text(text)
    (mini / "elsewhere").mkdir()
    monkeypatch.chdir(mini / "elsewhere")
    plan = _dry(["../mini.toml"])
    assert plan["total"]["to_compute"] == 10
    (mini / "w.pth").unlink()
    result = runner.invoke(app, ["run", "../mini.toml", "--dry-run"])
    assert result.exit_code == 2 and "mini.toml: models[0].weights: " in result.output
