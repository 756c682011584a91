"""Score-CAM and Ablation-CAM skip the passes whose result they know: the maps are those of the
path that runs every pass (``_perturb.SKIP_KNOWN = False``), and exactly the known passes are
left out.

The toy convolutional model (float64) is given, at its final layer, a channel that is zero
everywhere, a channel that is constant but not zero, and a channel that copies another (same
weights), so each rule has something to skip in every setting.
"""

from __future__ import annotations

import pytest
import torch

from attrcli.methods import _perturb
from attrcli.settings import create_setting
from tests.conftest import TOY_CELL, TOY_CLASSES, make_conv_model
from tests.engine.helpers import engine_maps, grid_images

COUNT = 2
LAYER = "final"  # the ReLU after the second convolution (6 channels)


def model():
    adapter = make_conv_model(seed=3)
    conv = adapter.module[0][3]
    with torch.no_grad():
        conv.weight[0].zero_()
        conv.bias[0] = 0.0  # zero everywhere: no Score-CAM mask, ablating it changes nothing
        conv.weight[1].zero_()
        conv.bias[1] = 0.5  # constant, not zero: Score-CAM weight 0, Ablation-CAM must still run
        conv.weight[3].copy_(conv.weight[2])
        conv.bias[3] = conv.bias[2]  # the same map as channel 2: the same Score-CAM mask
    return adapter


def run(setting_name: str, methods: list[str], layers: list[str], *, skip: bool, monkeypatch) -> tuple[dict, int]:
    monkeypatch.setattr(_perturb, "SKIP_KNOWN", skip)
    rows = []
    real = _perturb.evaluate

    def counted(ctx, perturbed, classes, **kw):
        rows.append(len(perturbed))
        return real(ctx, perturbed, classes, **kw)

    monkeypatch.setattr(_perturb, "evaluate", counted)
    setting = create_setting(setting_name, model(), 2)
    x = grid_images(COUNT, cell=TOY_CELL, seed=1)
    labels = torch.stack([torch.randperm(TOY_CLASSES, generator=torch.Generator().manual_seed(i))[:4] for i in range(COUNT)])
    if setting.variant == "corners":
        labels[:, -1] = labels[:, 0]
    maps = engine_maps(setting, x, labels, setting.default_cells(), layers, methods, batch_size=COUNT)
    return maps, sum(rows)


@pytest.mark.parametrize("setting_name", ["gridpg", "difull", "dipart"])
def test_skipping_known_passes_keeps_the_maps(setting_name: str, monkeypatch) -> None:
    methods = ["scorecam", "ablationcam"]
    fast, fast_rows = run(setting_name, methods, [LAYER], skip=True, monkeypatch=monkeypatch)
    full, full_rows = run(setting_name, methods, [LAYER], skip=False, monkeypatch=monkeypatch)
    assert set(fast) == set(full) == {(LAYER, m) for m in methods}
    for key, value in full.items():
        # float64; the kept passes run in other batch compositions, which may round differently
        torch.testing.assert_close(fast[key], value, rtol=1e-12, atol=1e-12 * float(value.abs().max()))
    # per evaluated row Score-CAM skips channels 0, 1 (constant) and 3 (a copy of 2), Ablation-CAM
    # channel 0 (zero); other channels of the random model may be dead too
    setting = create_setting(setting_name, model(), 2)
    per_grid = len(setting.default_cells()) if setting.disconnected else 1
    assert full_rows - fast_rows >= (3 + 1) * COUNT * per_grid
    assert fast_rows < full_rows


def test_duplicates_are_found_per_row() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]).view(1, 5, 1, 2)
    b = torch.arange(10.0).view(1, 5, 1, 2)
    first = _perturb.first_duplicates(torch.cat([a, b]))
    assert first.tolist() == [[0, 1, 0, 3, 1], [0, 1, 2, 3, 4]]


def test_the_layer_really_holds_the_planted_channels() -> None:
    """The skips above are the planted ones: the layer's activations have channel 0 zero,
    channel 1 constant and channel 3 bitwise equal to channel 2."""
    adapter = model()
    x = grid_images(1, cell=TOY_CELL, seed=1)
    a = adapter.run_blocks(x[:, :, :TOY_CELL, :TOY_CELL], -1, adapter.layer_index(LAYER))
    assert torch.equal(a[0, 0], torch.zeros_like(a[0, 0]))
    assert torch.equal(a[0, 1], torch.full_like(a[0, 1], 0.5))
    assert torch.equal(a[0, 3], a[0, 2]) and a[0, 2].max() > a[0, 2].min()
