"""Intervals in the score and correlation artifacts, the compare stage, and changed grid files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrcli.errors import UserError
from attrcli.metrics import intervals
from attrcli.metrics.intervals import BootstrapConfig
from attrcli.metrics.summary import summarize
from attrcli.stages import compare as compare_stage
from attrcli.stages import correlate as correlate_stage
from attrcli.stages import score as score_stage
from attrcli.stages.aggatt import aggatt
from attrcli.stages.caching import COMPUTED, STALE, UP_TO_DATE
from attrcli.stages.compare import compare
from attrcli.stages.correlate import correlate
from attrcli.stages.score import score
from attrcli.store import read_artifact, read_provenance

CACHE = Path("cache")


def bump_maps(count, strength, *, targets=4, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((count, targets, 8, 8))
    for t in range(targets):
        r, c = divmod(t, 2)
        maps[:, t, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += strength
    return maps


def forbid(monkeypatch, module, name):
    """Make ``module.name`` fail if called: proves a step computes nothing."""

    def fail(*args, **kwargs):
        raise AssertionError(f"{name} was called")

    monkeypatch.setattr(module, name, fail)


def test_score_artifact_holds_seeded_intervals_and_a_rerun_computes_nothing(
    workdir, grid_file, fakes, monkeypatch
):
    attribution = fakes.make_attribution(CACHE, bump_maps(12, 1.0), grid_path=grid_file)
    [result] = score(attribution_paths=[attribution])
    artifact = read_artifact(result.path)
    expected = intervals.score_intervals(artifact.data["scores"], BootstrapConfig())
    np.testing.assert_array_equal(artifact.data["intervals"], expected)
    assert artifact.attrs["interval_statistics"] == ["median", "mean", "perfect"]
    assert (artifact.attrs["confidence"], artifact.attrs["resamples"]) == (0.95, 2000)
    assert artifact.provenance["config"]["intervals"]["seed"] == 0
    [row] = summarize([result.path])
    assert row.median_ci == tuple(expected[0]) and row.perfect_ci == tuple(expected[2])
    assert row.median_ci[0] <= row.median <= row.median_ci[1] and row.confidence == 0.95
    forbid(monkeypatch, score_stage, "score_intervals")
    forbid(monkeypatch, score_stage, "localization_scores")
    assert score(attribution_paths=[attribution])[0].status == UP_TO_DATE


def test_changed_interval_config_recomputes_the_intervals_only(
    workdir, grid_file, fakes, monkeypatch
):
    attribution = fakes.make_attribution(CACHE, bump_maps(12, 1.0), grid_path=grid_file)
    [first] = score(attribution_paths=[attribution])
    before = read_artifact(first.path)
    [agg] = aggatt(paths=[attribution])
    forbid(monkeypatch, score_stage, "localization_scores")  # no map is read again
    config = BootstrapConfig(confidence=0.8, resamples=300, seed=5)
    [again] = score(attribution_paths=[attribution], bootstrap=config)
    assert again.status == STALE
    after = read_artifact(again.path)
    np.testing.assert_array_equal(after.data["scores"], before.data["scores"])
    np.testing.assert_array_equal(
        after.data["intervals"], intervals.score_intervals(before.data["scores"], config)
    )
    assert read_provenance(again.path)["config"]["intervals"]["confidence"] == 0.8
    assert score(attribution_paths=[attribution], bootstrap=config)[0].status == (
        UP_TO_DATE
    )
    # the AggAtt depends on the scores, not on their intervals, and other interval configs are
    # accepted by the stages that only need scores
    assert aggatt(paths=[attribution])[0].status == UP_TO_DATE
    assert agg.path.exists()


def test_a_truncated_grid_file_is_refused_by_score_aggatt_and_correlate(workdir, grid_file, fakes):
    attribution = fakes.make_attribution(CACHE, bump_maps(4, 1.0), grid_path=grid_file)
    other = fakes.make_attribution(CACHE, bump_maps(4, 2.0), grid_path=grid_file, method="ixg")
    size = grid_file.stat().st_size
    with open(grid_file, "r+b") as handle:
        handle.truncate(size // 2)
    for call in (
        lambda: score(attribution_paths=[attribution]),
        lambda: aggatt(paths=[attribution]),
        lambda: correlate(score_paths=[attribution, other]),
        lambda: compare(score_paths=[attribution, other]),
    ):
        with pytest.raises(UserError, match="computed from another version of .*toy.h5"):
            call()
    assert not CACHE.joinpath("scores").exists() and not CACHE.joinpath("aggatt").exists()


def test_a_missing_grid_file_is_not_needed_to_score(workdir, grid_file, fakes):
    attribution = fakes.make_attribution(CACHE, bump_maps(4, 1.0), grid_path=grid_file)
    grid_file.unlink()
    assert score(attribution_paths=[attribution])[0].status == COMPUTED


def test_correlation_artifact_holds_intervals(workdir, grid_file, fakes, monkeypatch):
    paths = [
        fakes.make_attribution(CACHE, bump_maps(16, s, seed=i), grid_path=grid_file, method=m)
        for i, (m, s) in enumerate([("grad", 0.5), ("ixg", 1.0)])
    ]
    config = BootstrapConfig(resamples=300)
    result = correlate(score_paths=paths, bootstrap=config)
    scored = [r.path for r in score(attribution_paths=paths)]
    scores = np.stack([read_artifact(p).data["scores"] for p in scored])
    bounds = intervals.spearman_intervals(scores, None, config)
    np.testing.assert_array_equal(result.low, bounds[..., 0])
    np.testing.assert_array_equal(result.high, bounds[..., 1])
    stored = read_artifact(result.path)
    np.testing.assert_array_equal(stored.data["low"], result.low)
    assert stored.attrs["resamples"] == 300
    document = result.to_dict()
    assert document["low"][0][1] == result.low[0, 1] and document["intervals"]["resamples"] == 300
    forbid(monkeypatch, correlate_stage, "spearman_intervals")
    again = correlate(score_paths=paths, bootstrap=config)
    assert again.status == UP_TO_DATE
    np.testing.assert_array_equal(again.high, result.high)


def test_compare_two_keys_with_identical_maps(workdir, grid_file, fakes, monkeypatch):
    maps = bump_maps(10, 1.0)
    a = fakes.make_attribution(CACHE, maps, grid_path=grid_file, method="grad")
    b = fakes.make_attribution(CACHE, maps, grid_path=grid_file, method="ixg")
    result = compare(score_paths=[a, b])
    assert result.keys == ["gridpg/digits-vgg11/input/grad", "gridpg/digits-vgg11/input/ixg"]
    [pair] = result.pairs
    assert (pair.delta_median, pair.delta_median_ci, pair.p_value) == (0.0, (0.0, 0.0), 1.0)
    assert result.path.parent == CACHE / "comparisons" and result.grid_images == 10
    assert result.count == 40 and result.status == COMPUTED
    forbid(monkeypatch, compare_stage, "compare_keys")
    again = compare(score_paths=[a, b])
    assert again.status == UP_TO_DATE and again.pairs == result.pairs


def test_compare_matrix_and_refusals(workdir, grid_file, fakes):
    paths = [
        fakes.make_attribution(CACHE, bump_maps(20, s, seed=i), grid_path=grid_file, method=m)
        for i, (m, s) in enumerate([("grad", 0.0), ("ixg", 1.0), ("gradcam", 3.0)])
    ]
    result = compare(score_paths=paths, bootstrap=BootstrapConfig(resamples=300))
    assert len(result.pairs) == 3
    delta = result.matrix("delta_median")
    np.testing.assert_allclose(delta, -delta.T)
    assert delta[2, 0] > 0 and result.matrix("p_adjusted")[0, 2] < 0.01
    document = result.to_dict()
    assert document["correction"].startswith("holm") and len(document["pairs"]) == 3
    assert document["pairs"][0]["first"] == "gridpg/digits-vgg11/input/grad"
    difull = fakes.make_attribution(
        CACHE, bump_maps(20, 1.0, targets=2), grid_path=grid_file, setting="difull",
        cells=[0, 3], heads=[0, 3],
    )
    with pytest.raises(UserError, match="cannot compare .* different cells"):
        compare(score_paths=[paths[0], difull])
    with pytest.raises(UserError, match="at least two different keys"):
        compare(score_paths=[paths[0], paths[0]])
    with pytest.raises(UserError, match="invalid comparison name"):
        compare(score_paths=paths, name="../x")
