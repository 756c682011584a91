"""Display order, colours, output paths and input resolution shared by every figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrcli.errors import UserError
from attrcli.plots import common
from attrcli.plots.common import (
    as_stage,
    find_artifacts,
    method_colours,
    method_params,
    order_layers,
    order_methods,
    output_path,
    save_figure,
)


def test_methods_follow_the_paper_order_then_the_rest_naturally_sorted():
    found = ["zeta", "rise", "s-intgrad:k=17", "grad", "occlusion:k=8,s=4", "gradcam++",
             "occlusion", "s-intgrad:k=9", "gradcam", "guided-backprop"]
    assert order_methods(found) == [
        "grad", "guided-backprop", "gradcam", "gradcam++", "occlusion", "occlusion:k=8,s=4",
        "rise", "s-intgrad:k=9", "s-intgrad:k=17", "zeta",
    ]


def test_layers_input_middle_final_then_others_as_found():
    assert order_layers(["layer3", "final", "features.12", "input", "middle", "layer3"]) == [
        "input", "middle", "final", "layer3", "features.12",
    ]


def test_method_params_parse_the_spec():
    assert method_params("occlusion:k=8,s=4") == {"k": "8", "s": "4"}
    assert method_params("gradcam") == {}


def test_paper_methods_keep_their_colour_whatever_else_is_plotted():
    alone = method_colours(["gradcam"])
    crowded = method_colours(["zeta", "grad", "gradcam", "s-ixg:k=9", "s-ixg:k=17"])
    assert alone["gradcam"] == crowded["gradcam"]
    assert len(set(crowded.values())) == len(crowded)
    many = method_colours([f"m{i}" for i in range(40)] + ["grad"])
    assert len(set(many.values())) == 41


def test_output_path_defaults_and_format_from_suffix():
    assert output_path("boxes", None, None) == (Path("reports/figures/boxes.png"), "png")
    assert output_path("boxes", None, "svg") == (Path("reports/figures/boxes.svg"), "svg")
    assert output_path("boxes", Path("out/fig.pdf"), None) == (Path("out/fig.pdf"), "pdf")
    with pytest.raises(UserError, match="valid: png, pdf, svg"):
        output_path("boxes", None, "gif")


def test_save_refuses_a_suffix_that_contradicts_the_format(workdir):
    fig = common.new_figure(2, 2)
    fig.subplots().plot([0, 1], [0, 1])
    with pytest.raises(UserError, match="does not match --format png"):
        save_figure(fig, workdir / "fig.pdf", "png")
    assert not (workdir / "fig.pdf").exists()
    path = save_figure(fig, workdir / "sub" / "fig.pdf", "pdf")
    assert path.read_bytes().startswith(b"%PDF")
    assert [p.name for p in path.parent.iterdir()] == ["fig.pdf"]  # no temporary left


def test_attribution_paths_stand_for_their_scores(workdir, helpers, fakes):
    grid = fakes.make_grid_file(Path("data/grids/toy.h5"))
    attribution = fakes.make_attribution(helpers.CACHE, np.ones((2, 4, 4, 4)), grid_path=grid)
    with pytest.raises(UserError, match="run attrcli score first"):
        as_stage([attribution], "scores")
    score = helpers.write_scores(helpers.CACHE, np.ones((2, 4)))
    assert as_stage([attribution, score], "scores") == [score]
    with pytest.raises(UserError, match="needs score artifacts"):
        as_stage([Path("cache/aggatt/toy/gridpg/digits-vgg11/input/grad.h5")], "scores")


def test_find_artifacts_names_what_it_searched(workdir, helpers):
    with pytest.raises(UserError, match=r"no score artifacts for grids 'toy': searched cache/scores/toy"):
        find_artifacts(cache_root=Path("cache"), grids="toy", stage="scores")
    helpers.write_scores(helpers.CACHE, np.ones((2, 4)), layer="input", method="grad")
    helpers.write_scores(helpers.CACHE, np.ones((2, 4)), layer="final", method="gradcam")
    found = find_artifacts(cache_root=Path("cache"), grids="data/grids/toy.h5", stage="scores",
                           layers=["final"])
    assert found == [Path("cache/scores/toy/gridpg/digits-vgg11/final/gradcam.h5")]
    with pytest.raises(UserError, match="no method rise"):
        find_artifacts(cache_root=Path("cache"), grids="toy", stage="scores", methods=["rise"])
