"""The study summary's structural findings, each checked against its bootstrap interval."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from attrcli.metrics.intervals import BootstrapConfig, score_intervals
from attrcli.metrics.summary import summarize
from attrcli.stages.report import findings, smoothing_findings

CONFIG = BootstrapConfig(resamples=400)


@pytest.fixture
def write(tmp_path, monkeypatch):
    """``write(values, setting, layer, method)``: a score artifact with its stored intervals."""
    monkeypatch.chdir(tmp_path)
    path = Path(__file__).parents[1] / "plots" / "helpers.py"
    spec = importlib.util.spec_from_file_location("attrcli_plot_helpers", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)

    def make(values, setting, layer, method, cells=(0, 3)):
        values = np.asarray(values, dtype=np.float64)
        return helpers.write_scores(
            helpers.CACHE, values, setting=setting, layer=layer, method=method,
            cells=list(cells), intervals=score_intervals(values, CONFIG),
        )

    return make


def test_each_finding_states_whether_its_interval_supports_it(write):
    rng = np.random.default_rng(0)
    noise = lambda scale: scale * rng.standard_normal((30, 2))  # noqa: E731
    paths = [
        write(np.ones((30, 2)), "difull", "input", "grad"),
        write(np.clip(0.97 + noise(0.01), 0, 1), "difull", "final", "grad"),
        write(np.clip(0.8 + noise(0.05), 0, 1), "dipart", "input", "grad"),
        write(np.full((30, 4), 0.25), "gridpg", "final", "grad", cells=range(4)),
        write(np.clip(0.2 + noise(0.2)[:, :1].repeat(4, 1), 0, 1), "gridpg", "input", "ixg",
              cells=range(4)),
    ]
    text = "\n".join(findings(summarize(paths)))
    assert "DiFull, input: grad localize perfectly" in text
    assert "share of perfect scores has the interval [1.00, 1.00] (or narrower): supported" in text
    assert "lies above the uniform baseline is supported by the 95 % interval" in text
    assert "DiPart vs DiFull at the input: grad score lower in DiPart" in text
    pattern = r"grad: Δmedian -0\.1\d\d \[-0\.\d+, -0\.\d+\], supported by the 95 % interval"
    assert re.search(pattern, text)
    assert "The medians' intervals are [0.250, 0.250]: supported" in text
    # ixg's median is below 1/n² but its grids vary together: the interval may reach 0.25
    assert "GridPG, input: ixg have medians below the uniform baseline 1/n² (ixg 0." in text


def test_smoothing_finding_is_a_paired_difference_with_its_interval(write):
    rng = np.random.default_rng(1)
    base = rng.random((40, 4)) * 0.5
    paths = [
        write(base, "gridpg", "input", "intgrad", cells=range(4)),
        write(np.clip(base + 0.2, 0, 1), "gridpg", "input", "s-intgrad:k=9", cells=range(4)),
        write(np.clip(base + 0.01 * rng.standard_normal((40, 4)), 0, 1), "gridpg", "input",
              "s-ixg:k=9", cells=range(4)),
        write(base[:, ::-1].copy(), "gridpg", "input", "ixg", cells=range(4)),
    ]
    [intgrad, ixg] = smoothing_findings(summarize(paths))
    assert intgrad.startswith("digits-vgg11: S-IntGrad (s-intgrad:k=9, the best kernel by median) "
                              "beats IntGrad at the input on gridpg: Δmedian +0.2")
    assert intgrad.endswith("supported by the 95 % interval.")
    assert "S-IxG (s-ixg:k=9, the best kernel by median)" in ixg
    assert "not supported by the 95 % interval (it includes 0)" in ixg
