"""The random and centre baselines score the chance level 1/n² in GridPG (within the interval),
ignore the model, and point as their definition says."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
import torch

from attrcli.methods.baselines import centre_map
from attrcli.metrics.intervals import BootstrapConfig
from attrcli.metrics.summary import summarize
from attrcli.stages.attribute import attribute
from attrcli.stages.score import score
from tests.engine.helpers import tiny_vgg, write_grids

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = BootstrapConfig(resamples=400)


@cache
def model():
    return tiny_vgg(dtype=torch.float32)


def summaries(tmp_path, n, methods, *, count=40, model=None, setting="gridpg"):
    grids = write_grids(tmp_path / f"grids{n}.h5", count=count, n=n, cell=32)
    results = attribute(
        grids=grids, setting=setting, model=model or globals()["model"](), layers="input,final", methods=methods,
        cache_root=tmp_path / "cache", batch_size=16,
    )
    scored = score(attribution_paths=[r.path for r in results], bootstrap=CONFIG)
    return {(row.layer, row.method): row for row in summarize([s.path for s in scored])}


@pytest.mark.parametrize("n", [2, 3])
def test_baselines_score_one_over_n_squared_in_gridpg(tmp_path, n):
    rows = summaries(tmp_path, n, "random,centre")
    chance = 1 / n**2
    for (layer, method), row in rows.items():
        assert row.chance == chance
        low, high = row.mean_ci
        assert low <= chance <= high or abs(row.mean - chance) < 1e-12, (layer, method, row.mean_ci)
    # the centre map is symmetric: over all n² targets its mean share is 1/n² up to rounding
    for layer in ("input", "final"):
        assert rows[(layer, "centre")].mean == pytest.approx(chance, abs=1e-12)
        assert abs(rows[(layer, "random")].mean - chance) < 0.05


def test_centre_points_at_the_central_cell_only_on_odd_grids(tmp_path):
    odd = summaries(tmp_path, 3, "centre", count=4)
    assert odd[("input", "centre")].pointing == pytest.approx(1 / 9)
    even = summaries(tmp_path / "even", 2, "centre", count=4)
    assert even[("input", "centre")].pointing == 0.0  # the peak ties across the four central cells


def test_random_hit_rate_is_near_chance(tmp_path):
    rows = summaries(tmp_path, 2, "random", count=60)
    row = rows[("input", "random")]
    low, high = row.pointing_ci
    assert low <= 0.25 <= high


def test_baselines_do_not_depend_on_the_weights(tmp_path):
    first = summaries(tmp_path / "a", 2, "random,centre", count=4)
    changed = copy.deepcopy(model())
    with torch.no_grad():
        for param in changed.module.parameters():
            param.normal_()
    changed.weights_hash = ""
    other = summaries(tmp_path / "b", 2, "random,centre", count=4, model=changed)
    for key, row in first.items():
        assert row.mean == other[key].mean and row.median == other[key].median


def test_centre_map_is_the_documented_gaussian():
    single = centre_map(5, 5, 0.25)
    assert single[2, 2] == 1.0
    sigma = 0.25 * 5
    assert single[2, 4].item() == pytest.approx(np.exp(-4 / (2 * sigma**2)))
    assert torch.equal(single, single.flip(0)) and torch.equal(single, single.T)
