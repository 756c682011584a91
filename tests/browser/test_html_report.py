"""``index.html`` of a small study: deterministic, self-contained, and in a real headless
Chromium free of console errors, every image loaded, the summary table sorted by a click."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from attrcli.metrics.summary import summarize
from attrcli.stages.html import selection_report, write_html
from tests.browser.cdp import Page, find_browser
from tests.stages.tiny_study import shared_tiny_study

SCREENSHOT = Path(__file__).parents[2] / "docs" / "figures" / "report.png"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The tiny study's page, with a PNG figure (embedded) and a PDF figure (linked)."""
    from attrcli.plots.boxes import plot_boxes

    study = shared_tiny_study()
    folder = tmp_path_factory.mktemp("report") / "reports" / "tiny"
    png = plot_boxes(score_paths=study.scores, out=folder / "boxes.png", fmt="png")
    pdf = folder / "boxes.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")  # linked, never read
    options = dict(report_dir=folder, title="tiny study", provenance={"study": "tiny", "seed": 0},
                   summary_rows=summarize(study.scores), figures=[png, pdf], correlations=[study.correlation],
                   comparisons=[study.comparison], aggatts=study.aggatts,
                   description="A random tiny VGG on four grid images.")
    page = write_html(**options)
    return study, page, options


def test_the_page_is_deterministic_and_rewritten_only_when_it_changes(report):
    _, page, options = report
    before, stat = page.read_bytes(), page.stat()
    assert write_html(**options) == page
    after = page.stat()
    assert page.read_bytes() == before and (after.st_mtime_ns, after.st_ino) == (stat.st_mtime_ns, stat.st_ino)
    changed = write_html(**{**options, "title": "tiny study, retitled"})
    assert b"tiny study, retitled" in changed.read_bytes() and changed.stat().st_ino != stat.st_ino
    write_html(**options)
    assert page.read_bytes() == before


def test_the_page_is_self_contained(report):
    study, page, _ = report
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<link" not in text
    assert "<script src" not in text and "@import" not in text
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert len(images) == 1 + 3 * len(study.aggatts)  # the box plot; per key AggAtt, example maps, images
    assert 'href="boxes.pdf"' in text
    table = text[text.index('<table class="sortable" id="summary">'):]
    assert table[:table.index("</table>")].count("<tr data-order=") == len(study.scores) == 7
    assert text.count('class="key"') == 7 and "toy" not in text
    assert len(text) < 400_000, f"the tiny study's page is {len(text)} bytes"


def test_attrcli_report_writes_the_same_kind_of_page(report, tmp_path):
    study, _, _ = report
    page = selection_report(score_paths=study.scores, report_dir=tmp_path / "sel", title="selection",
                            correlations=[], comparisons=[], figures=[], selection={"grids": "tiny"})
    text = page.read_text()
    assert text.count('class="key"') == 7 and "model weights (sha256)" in text and "tiny-vgg" in text


def _browser() -> str:
    found = find_browser()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no chromium: .ci/run installs Debian's chromium with apt-get")
        pytest.skip("no chromium on this machine (apt-get install chromium; required when CI=true)")
    return found


COLUMN = """(function (name) {
  var table = document.getElementById("summary");
  var heads = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) { return c.textContent.trim(); });
  var col = heads.indexOf(name);
  return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[col].getAttribute("data-sort"); });
})"""
CLICK = """(function (name) {
  var th = Array.prototype.filter.call(document.querySelectorAll("#summary th"),
                                       function (c) { return c.textContent.trim() === name; })[0];
  th.click();
  return th.getAttribute("aria-sort");
})"""


def test_a_real_browser_renders_it_loads_every_image_and_sorts(report):
    _browser()
    study, page, _ = report
    with Page(page.resolve().as_uri()) as browser:
        images = browser.evaluate("Array.prototype.map.call(document.images, function (i) {"
                                  " return [i.alt, i.complete, i.naturalWidth, i.naturalHeight]; })")
        assert len(images) == 1 + 3 * len(study.aggatts)
        assert [alt for alt, done, width, height in images if not (done and width > 0 and height > 0)] == []
        assert browser.evaluate('document.querySelectorAll("#summary tbody tr").length') == 7
        shown = [float(v) for v in browser.evaluate(COLUMN + '("median [CI]")')]
        medians = [r.median for r in summarize(study.scores)]
        assert sorted(shown) == sorted(medians) and shown != sorted(shown)  # not sorted yet
        assert browser.evaluate(CLICK + '("median [CI]")') == "ascending"
        assert [float(v) for v in browser.evaluate(COLUMN + '("median [CI]")')] == sorted(medians)
        assert browser.evaluate(CLICK + '("median [CI]")') == "descending"
        assert [float(v) for v in browser.evaluate(COLUMN + '("median [CI]")')] == sorted(medians, reverse=True)
        assert browser.evaluate(CLICK + '("method")') == "ascending"
        methods = browser.evaluate(COLUMN + '("method")')
        assert methods == sorted(methods) and methods != browser.evaluate(COLUMN + '("method")')[::-1]
        browser.evaluate(CLICK + '("median [CI]")')  # by median, for the docs
        assert browser.problems() == []
        shot = browser.screenshot()
        browser.evaluate('console.error("probe")')  # the check can fail: an error is seen
        assert any("probe" in problem for problem in browser.problems())
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(shot)


def test_the_report_command_over_a_selection(report, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from attrcli.cli.main import app

    study, _, _ = report
    monkeypatch.chdir(study.cache.parent)
    out = tmp_path / "page"
    result = CliRunner().invoke(app, ["report", "--grids", "tiny", "--layer", "input", "--out", str(out), "-q",
                                      "--correlation", str(study.correlation)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "index.html")
    text = (out / "index.html").read_text()
    assert text.count('class="key"') == 4 and "<h2>Correlations</h2>" in text and "final/grad" not in text.split(
        "<h2>Correlations</h2>")[0]
    bad = CliRunner().invoke(app, ["report", "--grids", "tiny", "--out", str(tmp_path / "bad"),
                                   "--correlation", "missing.h5"])
    assert bad.exit_code == 2 and "--correlation missing.h5: no such file" in bad.output
    assert not (tmp_path / "bad").exists()
