"""The analysis stages on artifacts: caching, staleness, provenance, selection, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from attrcli.errors import UserError
from attrcli.metrics.intervals import BootstrapConfig
from attrcli.metrics.selection import select_keys, split_methods
from attrcli.metrics.summary import summarize
from attrcli.stages.aggatt import aggatt
from attrcli.stages.caching import COMPUTED, FORCED, STALE, UP_TO_DATE
from attrcli.stages.correlate import correlate
from attrcli.stages.score import SCORE_CONFIG, score
from attrcli.store import ArtifactKey, content_hash, file_hash, read_artifact, read_provenance

CACHE = Path("cache")


def target_maps(count, strength, *, targets=4, size=8, seed=0):
    """Random maps plus ``strength`` times a bump in each target's own cell."""
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((count, targets, size, size))
    half = size // 2
    for t in range(targets):
        r, c = divmod(t, 2)
        maps[:, t, r * half : (r + 1) * half, c * half : (c + 1) * half] += strength
    return maps


def test_score_writes_scores_numerators_and_provenance(workdir, grid_file, fakes):
    maps = np.zeros((3, 4, 8, 8))
    maps[:, :, :4, :4] = 1.0  # every target's map lies in the top-left cell
    attribution = fakes.make_attribution(CACHE, maps, grid_path=grid_file)
    [result] = score(attribution_paths=[attribution])
    assert result.status == COMPUTED
    assert result.path == Path("cache/scores/toy/gridpg/digits-vgg11/input/grad.h5")
    artifact = read_artifact(result.path)
    # upsampling 8 -> 64 leaks a ramp 1 - k/8 (k = 1/2 .. 15/2) across the cell border: each
    # row holds 31 inside cell 0 and 1 outside, so the score is 31 * 31 / (32 * 32) exactly.
    assert (artifact.data["scores"][:, 0] == 961 / 1024).all()
    assert (artifact.data["numerators"][:, 0] == 961).all()
    assert (artifact.data["scores"][:, 1:] == [31 / 1024, 31 / 1024, 1 / 1024]).all()
    assert artifact.data["cells"].tolist() == [0, 1, 2, 3]
    assert artifact.provenance["inputs"] == {"attribution": file_hash(attribution)}
    assert artifact.attrs["grids_hash"] == file_hash(grid_file)


def test_rerun_is_up_to_date_and_changed_attribution_is_recomputed(workdir, grid_file, fakes):
    attribution = fakes.make_attribution(CACHE, target_maps(6, 3.0), grid_path=grid_file)
    [first] = score(attribution_paths=[attribution])
    before = read_artifact(first.path).data["scores"]
    [again] = score(attribution_paths=[attribution])
    assert again.status == UP_TO_DATE
    fakes.make_attribution(CACHE, target_maps(6, 0.0, seed=1), grid_path=grid_file)
    [stale] = score(attribution_paths=[attribution])
    assert stale.status == STALE
    after = read_artifact(stale.path)
    assert not np.allclose(after.data["scores"], before)
    assert after.provenance["inputs"]["attribution"] == file_hash(attribution)
    assert score(attribution_paths=[attribution], force=True)[0].status == FORCED


def test_bad_input_writes_nothing(workdir, grid_file, fakes):
    good = fakes.make_attribution(CACHE, target_maps(2, 1.0), grid_path=grid_file)
    with pytest.raises(UserError, match="no such file"):
        score(attribution_paths=[good, CACHE / "attributions/toy/gridpg/m/input/nope.h5"])
    shard = fakes.make_attribution(
        CACHE, target_maps(2, 1.0), grid_path=grid_file, method="grad.shard-0-of-2"
    )
    with pytest.raises(UserError, match="attrcli merge"):
        score(attribution_paths=[good, shard])
    difull = fakes.make_attribution(
        CACHE,
        target_maps(2, 1.0, targets=2),
        grid_path=grid_file,
        setting="difull",
        cells=[0, 3],
        heads=[0, 3],
    )
    with pytest.raises(UserError, match="has no target at cell 1; evaluated cells: \\[0, 3\\]"):
        aggatt(paths=[good, difull], cell=1)
    assert not (CACHE / "scores").exists() and not (CACHE / "aggatt").exists()


def test_aggatt_from_score_path_computes_missing_scores_and_tracks_them(workdir, grid_file, fakes):
    attribution = fakes.make_attribution(CACHE, target_maps(50, 1.0), grid_path=grid_file)
    score_path = ArtifactKey.from_path(attribution).with_stage("scores").path(CACHE)
    [result] = aggatt(paths=[score_path])
    assert score_path.exists() and result.status == COMPUTED
    artifact = read_artifact(result.path)
    assert artifact.data["bins"].shape == (6, 64, 64) and artifact.data["bins"].dtype == np.float32
    assert artifact.data["counts"].tolist() == [1, 2, 22, 23, 1, 1]
    assert artifact.data["edges"].tolist() == [0, 2, 5, 50, 95, 98, 100]
    assert artifact.attrs["cell"] == 0 and artifact.attrs["normaliser"] > 0
    # the median example of bin [5, 50) %: sorted positions 3..24, median 13, as a flattened
    # (row * T + slot) index and as a grid row
    scores = read_artifact(score_path).data
    order = np.lexsort((np.arange(50), -scores["numerators"][:, 0], -scores["scores"][:, 0]))
    assert artifact.data["median_index"][2] == order[13] * 4
    assert artifact.data["median_row"][2] == order[13]
    assert artifact.provenance["inputs"] == {
        "attribution": file_hash(attribution),
        "scores": content_hash(scores["scores"], scores["numerators"]),
    }
    assert aggatt(paths=[attribution])[0].status == UP_TO_DATE
    fakes.make_attribution(CACHE, target_maps(50, 2.0, seed=3), grid_path=grid_file)
    assert aggatt(paths=[attribution])[0].status == STALE
    assert aggatt(paths=[attribution], cell=1)[0].status == STALE  # config changed


def test_correlate_matches_scipy_and_is_cached(workdir, grid_file, fakes):
    paths = [
        fakes.make_attribution(CACHE, target_maps(20, s, seed=i), grid_path=grid_file, method=m)
        for i, (m, s) in enumerate([("grad", 0.5), ("ixg", 1.0), ("gradcam", 2.0)])
    ]
    scored = [r.path for r in score(attribution_paths=paths)]
    result = correlate(score_paths=scored)
    vectors = np.stack([read_artifact(p).data["scores"].ravel() for p in scored])
    np.testing.assert_allclose(result.matrix, spearmanr(vectors.T).statistic, rtol=1e-12)
    assert (
        result.rows
        == result.columns
        == [
            "gridpg/digits-vgg11/input/grad",
            "gridpg/digits-vgg11/input/ixg",
            "gridpg/digits-vgg11/input/gradcam",
        ]
    )
    assert result.count == 80 and result.path.parent == CACHE / "correlations"
    assert result.path.name.startswith("toy.gridpg.digits-vgg11.")
    stored = read_artifact(result.path)
    np.testing.assert_array_equal(stored.data["matrix"], result.matrix)
    assert set(stored.provenance["inputs"].values()) == {
        content_hash(read_artifact(p).data["scores"]) for p in scored
    }
    assert correlate(score_paths=scored).status == UP_TO_DATE
    fakes.make_attribution(CACHE, target_maps(20, 0.1, seed=9), grid_path=grid_file, method="ixg")
    again = correlate(score_paths=paths)  # attribution paths: the stale score is redone
    assert again.status == STALE and not np.allclose(again.matrix, result.matrix)


def test_correlate_against_a_reference_gives_one_row(workdir, grid_file, fakes):
    for i, (layer, method) in enumerate(
        [("final", "gradcam"), ("input", "s-ixg:k=9"), ("input", "s-ixg:k=17"), ("input", "ixg")]
    ):
        fakes.make_attribution(
            CACHE, target_maps(20, 1.0, seed=i), grid_path=grid_file, layer=layer, method=method
        )
    keys = select_keys(cache_root=CACHE, grids="toy", layers=["input"], methods=["s-ixg"])
    result = correlate(keys=keys, reference="final/gradcam", cache_root=CACHE, name="tab1")
    assert result.rows == ["gridpg/digits-vgg11/final/gradcam"]
    assert [c.split("/")[-1] for c in result.columns] == ["s-ixg:k=9", "s-ixg:k=17"]
    assert result.matrix.shape == (1, 2) and result.path == CACHE / "correlations/tab1.h5"
    full = correlate(
        keys=keys + select_keys(cache_root=CACHE, grids="toy", layers=["final"]), cache_root=CACHE
    )
    np.testing.assert_allclose(result.matrix[0], full.matrix[2, :2], rtol=1e-12)


def test_correlate_refuses_keys_over_different_attributions(workdir, grid_file, fakes):
    a = fakes.make_attribution(CACHE, target_maps(4, 1.0), grid_path=grid_file)
    other_grid = fakes.make_grid_file(workdir / "data/grids/other.h5", seed=1)
    b = fakes.make_attribution(CACHE, target_maps(4, 1.0), grid_path=other_grid)
    with pytest.raises(UserError, match="different grid files"):
        correlate(score_paths=[a, b])
    c = fakes.make_attribution(
        CACHE,
        target_maps(4, 1.0, targets=2),
        grid_path=grid_file,
        setting="difull",
        cells=[0, 3],
        heads=[0, 3],
    )
    with pytest.raises(UserError, match="different cells"):
        correlate(score_paths=[a, c])
    assert not (CACHE / "scores").exists() and not (CACHE / "correlations").exists()
    with pytest.raises(UserError, match="invalid correlation name"):
        correlate(score_paths=[a], name="../x")


def test_summarize_gives_quartiles_mean_and_share_of_perfect(workdir, grid_file, fakes):
    maps = np.zeros((4, 1, 64, 64))
    maps[0, 0, :32, :32] = 1.0  # 1.0
    maps[1, 0] = 1.0  # 0.25
    maps[2, 0] = -1.0  # 0.0
    maps[3, 0, :32, :] = 1.0  # 0.5
    attribution = fakes.make_attribution(CACHE, maps, grid_path=grid_file, cells=[0])
    [row] = summarize([score(attribution_paths=[attribution])[0].path])
    assert (row.count, row.median, row.mean, row.perfect, row.chance) == (
        4,
        0.375,
        0.4375,
        0.25,
        0.25,
    )
    assert (row.q1, row.q3) == (0.1875, 0.625)
    assert row.to_dict()["method"] == "grad"


def test_select_keys_all_explicit_families_and_errors(workdir, grid_file, fakes):
    for layer, method in [
        ("input", "grad"),
        ("final", "grad"),
        ("final", "gradcam"),
        ("input", "s-ixg:k=9"),
        ("middle", "grad"),
    ]:
        fakes.make_attribution(
            CACHE, target_maps(2, 1.0), grid_path=grid_file, layer=layer, method=method
        )
    labels = lambda keys: [(k.layer, k.method) for k in keys]  # noqa: E731
    assert labels(select_keys(cache_root=CACHE, grids=grid_file)) == [
        ("input", "grad"),
        ("input", "s-ixg:k=9"),
        ("middle", "grad"),
        ("final", "grad"),
        ("final", "gradcam"),
    ]
    assert labels(
        select_keys(cache_root=CACHE, grids="toy", layers=["all"], methods=["gradcam"])
    ) == [("final", "gradcam")]
    assert labels(select_keys(cache_root=CACHE, grids="toy", methods=["s-ixg"])) == [
        ("input", "s-ixg:k=9")
    ]
    with pytest.raises(UserError, match="no gradcam at layer input"):
        select_keys(cache_root=CACHE, grids="toy", layers=["input", "final"], methods=["gradcam"])
    with pytest.raises(UserError, match="no layer conv9 .*found: input, middle, final"):
        select_keys(cache_root=CACHE, grids="toy", layers=["conv9"])
    with pytest.raises(UserError, match="no setting difull"):
        select_keys(cache_root=CACHE, grids="toy", settings=["difull"])
    with pytest.raises(UserError, match="no attributions artifacts for grids 'nope'"):
        select_keys(cache_root=CACHE, grids="nope")
    fakes.make_grid_file(grid_file, seed=5)  # the grid file changed after the attributions
    with pytest.raises(UserError, match="another version"):
        select_keys(cache_root=CACHE, grids=grid_file)


def test_split_methods_keeps_configs_together():
    assert split_methods("occlusion:k=8,s=4,gradcam, s-ixg:k=9") == [
        "occlusion:k=8,s=4",
        "gradcam",
        "s-ixg:k=9",
    ]


def test_score_artifact_provenance_config_is_recorded(workdir, grid_file, fakes):
    attribution = fakes.make_attribution(CACHE, target_maps(2, 1.0), grid_path=grid_file)
    [result] = score(attribution_paths=[attribution], cache_root=workdir / "elsewhere")
    assert result.path.is_relative_to(workdir / "elsewhere")
    config = read_provenance(result.path)["config"]
    assert config == {**SCORE_CONFIG, "intervals": BootstrapConfig().to_dict()}


def test_a_grid_name_with_glob_characters_and_spaces_is_taken_literally(workdir, fakes):
    odd = fakes.make_grid_file(workdir / "data/grids/toy [12].h5")
    look_alike = fakes.make_grid_file(workdir / "data/grids/toy 1.h5", seed=1)
    for method in ("grad", "ixg"):
        fakes.make_attribution(CACHE, target_maps(8, 1.0), grid_path=odd, method=method)
    fakes.make_attribution(CACHE, target_maps(8, 1.0), grid_path=look_alike, method="gradcam")
    shard = ArtifactKey("attributions", "toy [12]", "gridpg", "digits-vgg11", "input", "rise",
                        shard=(0, 2)).path(CACHE)
    shard.write_bytes(b"a shard is no key of its own")
    keys = select_keys(cache_root=CACHE, grids=odd)
    assert [(k.grids, k.method) for k in keys] == [("toy [12]", "grad"), ("toy [12]", "ixg")]
    result = correlate(keys=keys, cache_root=CACHE)  # the default name holds the grid name
    assert result.path.parent == CACHE / "correlations" and result.path.name.startswith("toy [12].")
    assert result.matrix[0, 1] == pytest.approx(1.0)
