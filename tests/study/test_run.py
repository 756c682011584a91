"""``attrcli run``: the whole study on a small preset, then a cached second run."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.stages.run import scaled_kernels

TINY = """
name = "tiny-digits"
models = ["digits-vgg11", "digits-resnet18"]
layers = ["input", "final"]
methods = ["grad", "ixg", "intgrad", "gradcam"]

[grids]
cell_size = 32
count_distinct = 4
count_corners = 4

[smoothing]
smoothgrad = ["smoothgrad-ixg"]
smoothgrad_settings = ["gridpg"]

[compute]
batch_size = 16
"""


def test_kernels_scale_from_448_pixel_grids():
    assert scaled_kernels(448) == (9, 17, 33, 65, 129, 257)
    assert scaled_kernels(64) == (3, 5, 9, 19, 37)
    assert all(k % 2 == 1 for k in scaled_kernels(100))


def test_unknown_preset_and_bad_weights_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--preset", "nope"])
    assert result.exit_code == 2 and "unknown study preset 'nope'; valid: digits, paper-imagenet" in result.output
    result = runner.invoke(app, ["run", "--weights", "vgg11"])
    assert result.exit_code == 2 and "MODEL=FILE" in result.output
    assert list(tmp_path.iterdir()) == []
    result = runner.invoke(app, ["run", "--preset", "digits", "study.toml"])
    assert result.exit_code == 2 and "a study file or --preset, not both" in result.output


@pytest.mark.slow
def test_run_writes_report_then_only_redraws(tmp_path, monkeypatch, trained_digits_cache):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_digits_cache / "models", tmp_path / "cache" / "models")
    runner = CliRunner()
    (tmp_path / "tiny.toml").write_text(TINY)
    args = ["run", "tiny.toml", "--device", "cpu", "--json", "--quiet"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    import json

    report = json.loads(first.stdout)
    assert report["computed"] > 0
    summary = Path(report["summary"]).read_text()
    for expected in ("## gridpg · digits-vgg11", "## difull · digits-resnet18", "Best median per layer",
                     "## Structural findings", "s-ixg:k=3"):
        assert expected in summary
    # DiFull gradients at the input localize perfectly: the summary states it from the data.
    assert "DiFull, input: grad, ixg, intgrad localize perfectly" in summary
    names = {Path(f).name for f in report["figures"]}
    assert {"boxes.png", "smoothing.png", "aggatt-gridpg-digits-vgg11.png"} <= names
    for figure in report["figures"]:
        pixels = mpimg.imread(figure)
        assert pixels.std() > 0.01  # not blank
    _page_renders(Path(report["html"]))
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["computed"] == 0


def _page_renders(page: Path) -> None:
    """The digits study's index.html in headless Chromium (required under CI=true, which
    .ci/run sets): no console errors, every image loaded, sorting by median reorders the rows."""
    import os

    from tests.browser.cdp import Page, find_browser

    if find_browser() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no chromium: .ci/run installs Debian's chromium with apt-get")
        pytest.skip("no chromium on this machine")
    order = ("Array.prototype.map.call(document.querySelectorAll('#summary tbody tr'), function (r) {"
             " var i = Array.prototype.map.call(document.querySelectorAll('#summary th'),"
             " function (c) { return c.textContent.trim(); }).indexOf('median [CI]');"
             " return parseFloat(r.cells[i].getAttribute('data-sort')); })")
    click = ("Array.prototype.filter.call(document.querySelectorAll('#summary th'), function (c) {"
             " return c.textContent.trim() === 'median [CI]'; })[0].click()")
    with Page(page.resolve().as_uri()) as browser:
        images = browser.evaluate("Array.prototype.map.call(document.images, function (i) {"
                                  " return i.complete && i.naturalWidth > 0; })")
        assert len(images) > 10 and all(images)
        before = browser.evaluate(order)
        browser.evaluate(click)
        after = browser.evaluate(order)
        assert sorted(before) == after and before != after
        assert browser.problems() == []
