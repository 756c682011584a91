"""Occlusion at several window sizes in one call (the B-cos localisation analysis uses K = 5, 9
and 13 on 224-pixel cells): ``--method`` takes a list of ``occlusion:k=...`` specs, each is its
own artifact, and the box-plot figure labels and colours them apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.plots.boxes import build_boxes
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids

SIZES = ("occlusion:k=5,s=8", "occlusion:k=9,s=8", "occlusion:k=13,s=8")  # stride 8: a fast test


def test_several_occlusion_sizes_are_attributed_scored_and_labelled_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRCLI_THREADS", "1")
    write_grids(Path("data/grids/toy.h5"), count=2, variant="distinct")
    runner = CliRunner()
    result = runner.invoke(app, [
        "attribute", "--model", "tests.engine.helpers:tiny_vgg_model", "--device", "cpu", "--quiet",
        "--grids", "data/grids/toy.h5", "--setting", "gridpg", "--layer", "input", "--method", ",".join(SIZES),
        "--batch-size", "2",
    ])
    assert result.exit_code == 0, result.output
    paths = result.stdout.splitlines()
    assert paths == [f"cache/attributions/toy/gridpg/tiny-vgg/input/{spec}.h5" for spec in SIZES]
    maps = [read_artifact(p).data["maps"] for p in paths]
    assert all(m.shape == (2, 4, 64, 64) for m in maps)
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])  # three computations
    scored = runner.invoke(app, ["score", "--grids", "data/grids/toy.h5", "--quiet"])
    assert scored.exit_code == 0, scored.output
    score_paths = [Path(p) for p in scored.stdout.splitlines()]
    assert len(score_paths) == 3
    figure = build_boxes(score_paths=score_paths)
    try:
        legend = [t for ax in figure.axes for lg in [ax.get_legend()] if lg for t in lg.get_texts()]
        legend += [t for lg in figure.legends for t in lg.get_texts()]
        labels = [t.get_text() for t in legend]
        assert [label for label in labels if label.startswith("occlusion")] == list(SIZES)
        handles = [h for lg in figure.legends for h in lg.legend_handles] + [
            h for ax in figure.axes if ax.get_legend() for h in ax.get_legend().legend_handles]
        colours = {tuple(np.round(h.get_facecolor(), 4)) for h, label in zip(handles, labels)
                   if label.startswith("occlusion")}
        assert len(colours) == 3
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


@pytest.mark.parametrize("spec", ["occlusion:k=5", "occlusion:k=9", "occlusion:k=13"])
def test_each_size_is_its_own_key_at_the_papers_stride(spec):
    """On 224-pixel cells each K keeps its own key beside the paper's preset (K=16, s=8)."""
    from attrcli.methods import parse_method, split_methods

    assert split_methods("occlusion:k=5,occlusion:k=9,occlusion:k=13")[["5", "9", "13"].index(spec[12:])] == spec
    canonical = parse_method(spec).canonical_for(cell_size=224, layer="input").canonical()
    assert canonical == spec
