"""LIME on a regular patch grid: the segmentation, the kernel and the weighted ridge fit against
scikit-learn, and the engine's maps against a direct implementation (each sample masked and
scored on its own) in GridPG and DiFull."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrcli.errors import UserError
from attrcli.methods import parse_method
from attrcli.methods.lime import kernel_weights, segment_map, weighted_ridge
from tests.engine.helpers import engine_maps
from tests.methods.registry_helpers import case

pytestmark = pytest.mark.usefixtures("one_thread")


def test_segments_are_patches_inside_one_cell():
    segments, p = segment_map((8, 8), 2, 2)
    assert p == 2 and segments.shape == (8, 8)
    assert torch.equal(segments[:2, :2], torch.zeros(2, 2, dtype=torch.long))
    assert sorted(segments.unique().tolist()) == list(range(16))
    for cell_rows in (slice(0, 4), slice(4, 8)):
        for cell_cols in (slice(0, 4), slice(4, 8)):
            other = set(segments[cell_rows, cell_cols].unique().tolist())
            assert len(other) == 4  # p² segments per cell, none shared with another cell
    assert segment_map((4, 4), 2, 8)[1] == 2  # at most one segment per map position


def test_kernel_and_fit_are_limes_and_scikit_learns():
    sklearn = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import pairwise_distances

    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, (40, 9)).astype(np.float64)
    z[0], z[1] = 1, 0
    distance = pairwise_distances(z, np.ones((1, 9)), metric="cosine")[:, 0]
    distance[1] = 1.0  # scikit-learn's cosine distance of the zero vector
    expected = np.sqrt(np.exp(-(distance**2) / 0.25**2))
    weights = kernel_weights(torch.from_numpy(z), 0.25)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-12)
    y = rng.standard_normal((3, 40))
    beta = weighted_ridge(torch.from_numpy(z), torch.from_numpy(y), weights, 1.0)
    for row in range(3):
        fit = sklearn.Ridge(alpha=1.0, fit_intercept=True).fit(z, y[row], sample_weight=expected)
        np.testing.assert_allclose(beta[row].numpy(), fit.coef_, rtol=1e-9, atol=1e-12)


def _samples(seed: int, samples: int, count: int) -> torch.Tensor:
    """LIME's documented sampling: fair bits from the seed, the first sample all ones."""
    z = torch.randint(0, 2, (samples, count), generator=torch.Generator().manual_seed(seed)).double()
    z[0] = 1
    return z


@pytest.mark.parametrize("setting_name", ["gridpg", "difull"])
def test_maps_equal_a_direct_fit_on_each_masked_sample(setting_name, conv_model):
    sklearn = pytest.importorskip("sklearn.linear_model")
    setting, x, labels = case(conv_model(), setting_name)
    cells = [0, 3]
    (maps,) = engine_maps(setting, x, labels, cells, ["input"], ["lime:samples=24,patches=2"]).values()
    size = x.shape[-1]
    segments, p = segment_map((size, size), 2, 2)
    z = _samples(0, 24, 16)
    model = setting.model
    d = model.cell_size
    for b in range(len(x)):
        for t, cell in enumerate(cells):
            r, c = divmod(cell, 2)
            if setting_name == "gridpg":
                masked = torch.stack([x[b] * z[m][segments] for m in range(24)])
                with torch.no_grad():
                    probs = setting.forward(masked)[:, 0].softmax(-1)[:, labels[b, cell]]
                features = z.numpy()
                expected = None
            else:  # head t sees its cell alone; the features are its cell's segments
                window = (slice(d * r, d * r + d), slice(d * c, d * c + d))
                own = segments[window]
                masked = torch.stack([x[b][:, window[0], window[1]] * z[m][own] for m in range(24)])
                with torch.no_grad():
                    probs = model.logits(masked).softmax(-1)[:, labels[b, cell]]
                columns = sorted(own.unique().tolist())
                features = z[:, columns].numpy()
            weights = kernel_weights(torch.from_numpy(features), 0.25).numpy()
            fit = sklearn.Ridge(alpha=1.0).fit(features, probs.numpy(), sample_weight=weights)
            coef = torch.from_numpy(fit.coef_)
            if setting_name == "gridpg":
                expected = coef[segments]
                torch.testing.assert_close(maps[b, t], expected, rtol=1e-8, atol=1e-12)
            else:
                lookup = {s: i for i, s in enumerate(columns)}
                expected = coef[torch.tensor([[lookup[int(s)] for s in row] for row in own])]
                torch.testing.assert_close(maps[b, t, window[0], window[1]], expected, rtol=1e-8, atol=1e-12)
                outside = maps[b, t].clone()
                outside[window] = 0
                assert torch.count_nonzero(outside) == 0
            assert expected.abs().max() > 1e-6


def test_bad_parameters_are_refused_in_one_line():
    for bad in ("samples=1", "patches=0", "kernel_width=0", "alpha=0"):
        with pytest.raises(UserError, match=r"^lime needs samples >= 2") as refused:
            parse_method(f"lime:{bad}")
        assert "\n" not in str(refused.value)
