"""The pointing game (Zhang et al., ECCV 2016) on the grids: exact hits and misses on
constructed maps, the tie rule, and the hit rate in score artifacts and summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrcli.errors import UserError
from attrcli.metrics.intervals import BootstrapConfig, mean_interval
from attrcli.metrics.localization import localization_scores, pointing_hits


def hits_of(maps, cells, *, n=2, image_size=None):
    maps = np.asarray(maps, dtype=np.float32)
    size = image_size or maps.shape[-1]
    _, _, hits = localization_scores(maps, cells=np.array(cells), n=n, image_size=size, pointing=True)
    return hits


def test_peak_inside_the_target_cell_is_a_hit_outside_a_miss():
    maps = np.zeros((1, 4, 8, 8))
    maps[0, :, 1, 1] = 5.0  # peak in cell 0 (top-left), for every target
    maps[0, :, 6, 6] = 1.0  # a lower bump in cell 3
    hits = hits_of(maps, [0, 1, 2, 3])
    assert hits.dtype == np.uint8
    assert hits.tolist() == [[1, 0, 0, 0]]


def test_mass_does_not_decide_only_the_peak():
    maps = np.zeros((1, 1, 8, 8))
    maps[0, 0, :4, :4] = 1.0  # all the mass (score 16/19) in cell 0
    maps[0, 0, 7, 7] = 3.0  # a single higher pixel in cell 3
    scores, _, hits = localization_scores(
        maps.astype(np.float32), cells=np.array([0]), n=2, image_size=8, pointing=True
    )
    assert scores[0, 0] == pytest.approx(16 / 19)
    assert hits[0, 0] == 0


def test_ties_inside_the_cell_hit_ties_across_the_border_miss():
    inside = np.zeros((8, 8))
    inside[0, 0] = inside[3, 3] = 2.0  # two maxima, both in cell 0
    across = np.zeros((8, 8))
    across[3, 3] = across[3, 4] = 2.0  # one maximum in cell 0, its twin in cell 1
    hits = hits_of(np.stack([inside, across])[:, None], [0])
    assert hits[:, 0].tolist() == [1, 0]
    # the same tie seen from the other cell is a miss too
    assert hits_of(across[None, None], [1])[0, 0] == 0


def test_maps_without_positive_attribution_miss_everywhere():
    maps = np.stack([np.zeros((4, 8, 8)), -np.ones((4, 8, 8))])
    assert (hits_of(maps, [0, 1, 2, 3]) == 0).all()


def test_negative_values_do_not_point():
    maps = -np.ones((1, 1, 8, 8))
    maps[0, 0, 0, 0] = -0.5  # the signed maximum, but not positive
    maps[0, 0, 5, 5] = 0.1  # the only positive pixel, in cell 3
    assert hits_of(maps, [0])[0, 0] == 0
    assert hits_of(maps, [3])[0, 0] == 1


def test_a_peak_on_the_pixels_of_no_cell_is_a_miss():
    # a 9-pixel grid of n=2: cells are 4 pixels wide, row and column 8 belong to no cell
    positive = torch.zeros(1, 1, 9, 9)
    positive[0, 0, 8, 8] = 4.0
    positive[0, 0, 0, 0] = 3.0
    assert not pointing_hits(positive, np.array([0]), 2)[0, 0]
    positive[0, 0, 8, 8] = 2.0
    assert pointing_hits(positive, np.array([0]), 2)[0, 0]


def test_the_peak_is_taken_after_bilinear_upsampling():
    # at layer resolution the maximum is in cell 1; it stays there after upsampling to 32 pixels
    maps = np.zeros((1, 2, 4, 4))
    maps[0, :, 0, 3] = 1.0
    assert hits_of(maps, [0, 1], image_size=32).tolist() == [[0, 1]]


def test_hit_rate_interval_covers_the_rate_and_is_exact_for_constant_hits():
    config = BootstrapConfig(resamples=200)
    ones = np.ones((10, 4))
    assert mean_interval(ones, config).tolist() == [1.0, 1.0]
    rng = np.random.default_rng(0)
    hits = (rng.random((50, 4)) < 0.3).astype(np.float64)
    low, high = mean_interval(hits, config)
    assert low < hits.mean() < high


CACHE = "cache"


def peaked_maps(count=6, targets=4, size=8, miss_every=3):
    """Each target's map peaks in its own cell, except every ``miss_every``-th grid image,
    whose peak is in the next cell (none with ``miss_every=0``)."""
    maps = np.zeros((count, targets, size, size))
    half = size // 2
    for i in range(count):
        for t in range(targets):
            cell = (t + 1) % 4 if miss_every and i % miss_every == 0 else t
            r, c = divmod(cell, 2)
            maps[i, t, r * half + 1, c * half + 1] = 2.0
    return maps


def test_score_artifact_records_hits_beside_unchanged_scores(workdir, grid_file, fakes):
    from attrcli.metrics.summary import summarize
    from attrcli.stages.score import score
    from attrcli.store import read_artifact

    maps = peaked_maps()
    attribution = fakes.make_attribution(workdir / CACHE, maps, grid_path=grid_file)
    [result] = score(attribution_paths=[attribution], bootstrap=BootstrapConfig(resamples=200))
    artifact = read_artifact(result.path)
    expected = np.array([[0] * 4 if i % 3 == 0 else [1] * 4 for i in range(6)], dtype=np.uint8)
    assert artifact.data["pointing"].dtype == np.uint8
    np.testing.assert_array_equal(artifact.data["pointing"], expected)
    # the localization scores are those of localization_scores alone
    scores, numerators = localization_scores(
        maps.astype(np.float32), cells=np.arange(4), n=2, image_size=64
    )
    assert artifact.data["scores"].tobytes() == scores.tobytes()
    assert artifact.data["numerators"].tobytes() == numerators.tobytes()
    [row] = summarize([result.path])
    assert row.pointing == pytest.approx(4 / 6)
    low, high = row.pointing_ci
    assert low <= 4 / 6 <= high and high - low > 0
    assert row.to_dict()["pointing"] == pytest.approx(4 / 6)


def test_interval_change_keeps_hits_and_recomputes_only_intervals(workdir, grid_file, fakes, monkeypatch):
    import attrcli.stages.score as score_stage
    from attrcli.store import read_artifact

    attribution = fakes.make_attribution(workdir / CACHE, peaked_maps(), grid_path=grid_file)
    [first] = score_stage.score(attribution_paths=[attribution], bootstrap=BootstrapConfig(resamples=200))
    before = read_artifact(first.path).data

    def fail(*args, **kwargs):
        raise AssertionError("maps were read again")

    monkeypatch.setattr(score_stage, "localization_scores", fail)
    [again] = score_stage.score(
        attribution_paths=[attribution], bootstrap=BootstrapConfig(resamples=200, confidence=0.5)
    )
    after = read_artifact(again.path).data
    assert after["pointing"].tobytes() == before["pointing"].tobytes()
    assert after["pointing_interval"][1] - after["pointing_interval"][0] < (
        before["pointing_interval"][1] - before["pointing_interval"][0]
    )


@pytest.mark.usefixtures("one_thread")
def test_difull_gradient_at_the_input_always_points_at_its_cell(tmp_path, conv_model, toy_grid_file):
    from attrcli.metrics.summary import summarize
    from attrcli.stages.attribute import attribute
    from attrcli.stages.score import score

    grids = toy_grid_file(tmp_path / "toy.h5", variant="corners", count=4)
    model = conv_model()
    model.module.float()
    [result] = attribute(
        grids=grids, setting="difull", model=model, layers="input", methods="grad",
        cache_root=tmp_path / CACHE,
    )
    [scored] = score(attribution_paths=[result.path], bootstrap=BootstrapConfig(resamples=200))
    [row] = summarize([scored.path])
    assert row.count == 8  # 4 grid images, the two corner heads
    assert row.pointing == 1.0 and row.pointing_ci == (1.0, 1.0)


def test_compare_and_correlate_take_the_hit_rate_as_statistic(workdir, grid_file, fakes):
    from attrcli.stages.compare import compare
    from attrcli.stages.correlate import correlate

    always = peaked_maps(miss_every=0)  # every attribution a hit
    some = peaked_maps(miss_every=2)  # grid images 0, 2, 4 miss
    first = fakes.make_attribution(workdir / CACHE, always, grid_path=grid_file, method="grad")
    second = fakes.make_attribution(workdir / CACHE, some, grid_path=grid_file, method="ixg")
    config = BootstrapConfig(resamples=200)
    by_hits = compare(score_paths=[first, second], statistic="pointing", bootstrap=config)
    [pair] = by_hits.pairs
    assert pair.delta_mean == pytest.approx(0.5)  # hit rates 1.0 and 0.5
    assert by_hits.statistic == "pointing" and by_hits.name.endswith(".pointing")
    by_scores = compare(score_paths=[first, second], bootstrap=config)
    assert by_scores.path != by_hits.path and by_scores.statistic == "score"
    assert by_scores.to_dict()["statistic"] == "score"
    assert compare(score_paths=[first, second], statistic="pointing", bootstrap=config).status == "up to date"
    hits = correlate(score_paths=[first, second], statistic="pointing", bootstrap=config)
    # the first key's hits are constant: no ranking, so NaN against the other
    assert np.isnan(hits.matrix[0, 1]) and hits.matrix[1, 1] == pytest.approx(1.0)
    with pytest.raises(UserError, match="statistic"):
        compare(score_paths=[first, second], statistic="energy")


def test_statistic_is_refused_on_one_line_by_the_cli(workdir, grid_file, fakes):
    from typer.testing import CliRunner

    from attrcli.cli.main import app

    first = fakes.make_attribution(workdir / CACHE, peaked_maps(), grid_path=grid_file, method="grad")
    second = fakes.make_attribution(workdir / CACHE, peaked_maps(miss_every=2), grid_path=grid_file, method="ixg")
    runner = CliRunner()
    bad = runner.invoke(app, ["compare", str(first), str(second), "--statistic", "energy"])
    assert bad.exit_code == 2 and "unknown --statistic" in bad.output
    assert not (workdir / CACHE / "comparisons").exists()
    good = runner.invoke(app, ["correlate", str(first), str(second), "--statistic", "pointing", "--json",
                               "--resamples", "100"])
    assert good.exit_code == 0, good.output
    import json

    assert json.loads(good.stdout)["statistic"] == "pointing"


def test_box_plot_marks_the_hit_rate_beside_the_score(workdir, grid_file, fakes):
    from attrcli.plots.boxes import build_boxes
    from attrcli.stages.score import score

    attribution = fakes.make_attribution(workdir / CACHE, peaked_maps(), grid_path=grid_file)
    [result] = score(attribution_paths=[attribution], bootstrap=BootstrapConfig(resamples=200))
    plain = build_boxes(score_paths=[result.path])
    marked = build_boxes(score_paths=[result.path], pointing=True)

    def diamonds(fig):
        return [line.get_ydata()[0] for ax in fig.axes for line in ax.lines if line.get_marker() == "D"]

    assert diamonds(plain) == []
    assert diamonds(marked) == [pytest.approx(4 / 6)]
    assert "hit rate" in marked.axes[0].get_ylabel()
