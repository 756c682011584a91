"""Occlusion, RISE, Score-CAM and Ablation-CAM on tiny hand-built models.

Each method is checked against a closed form on a linear model, against a plain loop that
perturbs the grid-layout map and runs the whole setting for every perturbation and target
(which also checks DiFull's shortcut of scoring single cells), and end to end through the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attrcli.engine.context import AttributionContext
from attrcli.errors import UserError
from attrcli.methods import occlusion, parse_method, rise
from attrcli.methods._perturb import gather
from attrcli.methods.ablationcam import AblationCAM
from attrcli.methods.occlusion import Occlusion, OcclusionConfig, window_starts
from attrcli.methods.rise import RISE, MaskSource, RISEConfig
from attrcli.methods.scorecam import ScoreCAM, normalised_masks
from attrcli.models.adapter import ModelAdapter
from attrcli.settings import SETTINGS as REGISTERED_SETTINGS
from attrcli.settings import create_setting
from attrcli.stages.attribute import attribute
from attrcli.store import read_artifact

CELL, CLASSES, N = 8, 5, 2
SETTINGS = REGISTERED_SETTINGS.names()  # every registered setting
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: many small ops
LAYERS = (("input", -1), ("final", 4))


def context(
    model, setting_name, layer="input", layer_index=-1, *, grids=3, batch_size=4, seed=0, x=None, cells="all"
):
    setting = create_setting(setting_name, model, N)
    gen = torch.Generator().manual_seed(seed)
    size = N * model.cell_size
    drawn = torch.randn(grids, 3, size, size, generator=gen, dtype=torch.float64)
    x = drawn if x is None else x
    labels = torch.randint(0, CLASSES, (len(x), N * N), generator=gen)
    targets = setting.targets(labels, setting.resolve_cells(cells))
    return AttributionContext(
        setting=setting, x=x, targets=targets, layer=layer, layer_index=layer_index, batch_size=batch_size
    )


# --- plain references: the whole setting for every perturbation and every target -------------


def full_scores(ctx, grid_map, b, t=None, softmax=False, layer_index=None):
    """Score of target t (default: every target) of grid image b whose map at the layer is
    ``grid_map`` (C, H, W), from the whole setting."""
    setting = ctx.setting
    index = ctx.layer_index if layer_index is None else layer_index
    logits = setting.suffix(setting.from_map(grid_map[None]), index)[0]
    logits = logits.softmax(-1) if softmax else logits
    scores = logits[ctx.targets.heads, ctx.targets.classes[b]]
    return scores if t is None else scores[t]


def occlusion_reference(ctx, k, s, scheme="paper"):
    """Occlude each window of the scheme on the whole grid map and run the whole setting.

    ``paper``: each drop divided by the clipped window's area and added to its positions;
    ``inside``: the mean drop over the windows covering a position."""
    A = ctx.setting.to_map(ctx.activations)
    B, T, (H, W) = ctx.grids, ctx.targets.count, A.shape[-2:]
    total = torch.zeros(B, T, H, W, dtype=A.dtype)
    count = torch.zeros(H, W, dtype=A.dtype)
    for y0 in window_starts(H, k, s, scheme):
        for x0 in window_starts(W, k, s, scheme):
            ys, xs = slice(max(y0, 0), min(y0 + k, H)), slice(max(x0, 0), min(x0 + k, W))
            area = (ys.stop - ys.start) * (xs.stop - xs.start)
            count[ys, xs] += 1
            for b in range(B):
                occluded = A[b].clone()
                occluded[:, ys, xs] = 0
                drop = full_scores(ctx, A[b], b) - full_scores(ctx, occluded, b)
                total[b, :, ys, xs] += drop[:, None, None] / (area if scheme == "paper" else 1)
    return total if scheme == "paper" else total / count


def cell_view(ctx, t, H, W):
    n, cell = ctx.setting.n, int(ctx.targets.cells[t])
    h, w = H // n, W // n
    return slice(cell // n * h, cell // n * h + h), slice(cell % n * w, cell % n * w + w)


def cam_reference(ctx, weight):
    A = ctx.setting.to_map(ctx.activations)
    maps = torch.zeros(ctx.grids, ctx.targets.count, *A.shape[-2:], dtype=A.dtype)
    for b in range(ctx.grids):
        for t in range(ctx.targets.count):
            for c in range(A.shape[1]):
                maps[b, t] += weight(A, b, t, c) * A[b, c]
    return maps


def ablation_reference(ctx):
    def weight(A, b, t, c):
        ablated = A[b].clone()
        ablated[c] = 0
        y = full_scores(ctx, A[b], b, t)
        return (y - full_scores(ctx, ablated, b, t)) / y

    return cam_reference(ctx, weight)


def scorecam_reference(ctx):
    image = ctx.x  # grid layout

    def weight(A, b, t, c):
        if ctx.setting.disconnected:  # the explained head's cell masks its own image
            rows, cols = cell_view(ctx, t, *A.shape[-2:])
            irows, icols = cell_view(ctx, t, *image.shape[-2:])
            masked = image[b].clone()
            mask = normalised_masks(A[b, c][None, rows, cols], masked[:, irows, icols].shape[-2:])[0]
            masked[:, irows, icols] = masked[:, irows, icols] * mask
            constant = A[b, c][rows, cols].max() == A[b, c][rows, cols].min()
        else:
            masked = image[b] * normalised_masks(A[b, c][None], image.shape[-2:])[0]
            constant = A[b, c].max() == A[b, c].min()
        return 0.0 if constant else full_scores(ctx, masked, b, t, softmax=True, layer_index=-1)

    return cam_reference(ctx, weight)


def rise_reference(ctx, config):
    A = ctx.setting.to_map(ctx.activations)
    masks = MaskSource(config, tuple(A.shape[-2:]), ctx.seed, ctx.device)(torch.arange(config.masks), A.dtype)
    maps = torch.zeros(ctx.grids, ctx.targets.count, *A.shape[-2:], dtype=A.dtype)
    for b in range(ctx.grids):
        for m in range(config.masks):
            maps[b] += full_scores(ctx, A[b] * masks[m], b, softmax=True)[:, None, None] * masks[m]
    return maps / (config.masks * config.p)


# --- agreement with the references ------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("layer,index", LAYERS)
@pytest.mark.parametrize("k,s,scheme", [(3, 2, "paper"), (4, 2, "paper"), (3, 2, "inside")])
@pytest.mark.parametrize("path", ["incremental", "plain, masks made once", "plain, masks made per batch"])
def test_occlusion_equals_plain_loop(setting, layer, index, k, s, scheme, path, monkeypatch, conv_model):
    if path != "incremental":  # the full recomputation of every window
        monkeypatch.setattr(occlusion, "INCREMENTAL", False)
    if path.endswith("per batch"):  # the path of maps too large for a table of every window mask
        monkeypatch.setattr(occlusion, "TABLE_BYTES", 0)
    ctx = context(conv_model(), setting, layer, index, grids=2)
    got = Occlusion(OcclusionConfig(k=k, s=s, scheme=scheme)).attribute(ctx)
    torch.testing.assert_close(got, occlusion_reference(ctx, k, s, scheme))


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("layer,index", LAYERS)
def test_ablationcam_equals_plain_loop(setting, layer, index, conv_model):
    ctx = context(conv_model(), setting, layer, index, grids=2)
    torch.testing.assert_close(AblationCAM().attribute(ctx), ablation_reference(ctx))


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("layer,index", LAYERS)
def test_scorecam_equals_plain_loop_on_the_evaluated_head(setting, layer, index, conv_model):
    ctx = context(conv_model(), setting, layer, index, grids=2)
    torch.testing.assert_close(ScoreCAM().attribute(ctx), scorecam_reference(ctx))


@pytest.mark.parametrize("setting", SETTINGS)
def test_rise_equals_plain_loop(setting, conv_model):
    config = RISEConfig(masks=6, s=3, p=0.5)
    ctx = context(conv_model(), setting, "final", 4, grids=2)
    torch.testing.assert_close(RISE(config).attribute(ctx), rise_reference(ctx, config))


# --- closed forms on a linear model -------------------------------------------------------------


def linear_gradient(ctx):
    """Gradient ``(B, T, C, H, W)`` of each target logit w.r.t. the grid-layout map (constant)."""
    A = ctx.setting.to_map(ctx.activations).clone().requires_grad_(True)
    grads = torch.zeros(ctx.grids, ctx.targets.count, *A.shape[1:], dtype=A.dtype)
    for b in range(ctx.grids):
        for t in range(ctx.targets.count):
            (g,) = torch.autograd.grad(full_scores(ctx, A[b], b, t), A)
            grads[b, t] = g[b]
    return A.detach(), grads


# Window starts along the 16-position axis of the toy grid map, listed by hand from the scheme:
# paper, even K=4, s=2: (i - (K/s - 1))·s for i = 0 … 16/2 + 4/2 - 2 = 8, i.e. -2, 0, …, 14;
# paper, odd K=3, s=2: centres 0, 2, …, 16, i.e. starts -1, 1, …, 15;
# inside, K=3, s=2: 0, 2, …, 12 and a last one flush with the border at 13.
HAND_STARTS = {
    (4, 2, "paper"): list(range(-2, 15, 2)),
    (3, 2, "paper"): list(range(-1, 16, 2)),
    (3, 2, "inside"): [*range(0, 13, 2), 13],
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("k,s,scheme", list(HAND_STARTS))
def test_occlusion_linear_closed_form(setting, k, s, scheme, linear_model):
    """On a linear model a window's drop is the sum of the contributions it hides: the map
    follows in closed form from hand-listed windows, overhanging ones clipped to the map."""
    ctx = context(linear_model(), setting)
    A, g = linear_gradient(ctx)
    contribution = (A[:, None] * g).sum(2)  # (B, T, H, W): the logit is their sum plus the bias
    size = N * CELL
    starts = HAND_STARTS[(k, s, scheme)]
    assert window_starts(size, k, s, scheme) == starts
    cover = torch.zeros(len(starts), size, dtype=A.dtype)
    for i, y0 in enumerate(starts):
        cover[i, max(y0, 0) : y0 + k] = 1  # clipped to the map
    drops = torch.einsum("iy,btyx,jx->btij", cover, contribution, cover)
    if scheme == "paper":  # drop / clipped area, summed over the windows covering a position
        share = cover / cover.sum(1, keepdim=True)
        expected = torch.einsum("iy,btij,jx->btyx", share, drops, share)
    else:  # mean drop over the windows covering a position
        expected = torch.einsum("iy,btij,jx->btyx", cover, drops, cover) / torch.outer(cover.sum(0), cover.sum(0))
    got = Occlusion(OcclusionConfig(k=k, s=s, scheme=scheme)).attribute(ctx)
    torch.testing.assert_close(got, expected)


def test_occlusion_by_hand_on_a_4x4_map():
    """A 1-channel 4×4 map of ones whose logit is ``v · (row 0)``, K=2, s=1.

    Paper scheme: windows start at -1, 0, 1, 2, 3 on each axis. Along x the windows over row 0
    hide {0}, {0,1}, {1,2}, {2,3}, {3}: drops 1, 3, 6, 12, 8, each shared over the clipped width,
    so the x-profile is p = [1 + 3/2, 3/2 + 6/2, 6/2 + 12/2, 12/2 + 8]. Along y, row 0 is covered
    by the window hiding {0} (height 1) and the one hiding {0,1} (height 2): row 0 = (1 + 1/2)·p,
    row 1 = p/2, rows 2 and 3 see no drop. Inside scheme: windows at 0, 1, 2 on each axis, a
    position gets the mean drop of the windows covering it.
    """
    v = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    weight = torch.zeros(1, 16, dtype=torch.float64)
    weight[0, :4] = v
    linear = nn.Linear(16, 1, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
    module = nn.Sequential(nn.Identity(), nn.Flatten(), linear).eval()
    model = ModelAdapter(
        name="by-hand", module=module, blocks=[("0", module[0])], head=lambda f: linear(f.flatten(1)),
        gap_head=False, aliases={"middle": "0", "final": "0"}, stage_layers=["0"], cell_size=4,
        num_classes=1, mean=(0,), std=(1,),
    )
    setting = create_setting("gridpg", model, 1)
    ctx = AttributionContext(
        setting=setting, x=torch.ones(1, 1, 4, 4, dtype=torch.float64),
        targets=setting.targets(torch.zeros(1, 1, dtype=torch.long), [0]), layer="input", layer_index=-1,
        batch_size=8,
    )
    p = torch.tensor([2.5, 4.5, 9.0, 14.0], dtype=torch.float64)
    paper = torch.stack([1.5 * p, 0.5 * p, 0 * p, 0 * p])
    torch.testing.assert_close(Occlusion(OcclusionConfig(k=2, s=1)).attribute(ctx)[0, 0], paper)
    row0 = torch.tensor([3.0, 4.5, 9.0, 12.0], dtype=torch.float64)
    inside = torch.stack([row0, row0 / 2, 0 * row0, 0 * row0])
    torch.testing.assert_close(Occlusion(OcclusionConfig(k=2, s=1, scheme="inside")).attribute(ctx)[0, 0], inside)


@pytest.mark.parametrize("setting", SETTINGS)
def test_ablationcam_linear_closed_form(setting, linear_model):
    ctx = context(linear_model(), setting)
    A, g = linear_gradient(ctx)
    y = torch.stack([torch.stack([full_scores(ctx, A[b], b, t) for t in range(ctx.targets.count)])
                     for b in range(ctx.grids)])
    weights = (A[:, None] * g).sum((-2, -1)) / y[..., None]  # (B, T, C): the logit each channel adds
    expected = torch.einsum("btc,bchw->bthw", weights, A)
    torch.testing.assert_close(AblationCAM().attribute(ctx), expected)


@pytest.mark.parametrize("setting", SETTINGS)
def test_rise_all_ones_masks_give_the_softmax(setting, conv_model):
    ctx = context(conv_model(), setting, "final", 4)
    maps = RISE(RISEConfig(masks=7, s=3, p=1.0)).attribute(ctx)
    A = ctx.setting.to_map(ctx.activations)
    with torch.no_grad():
        softmax = torch.tensor([[float(full_scores(ctx, A[b], b, t, softmax=True)) for t in range(ctx.targets.count)]
                                for b in range(ctx.grids)], dtype=maps.dtype)
    torch.testing.assert_close(maps, softmax[..., None, None].expand_as(maps))


# --- properties -----------------------------------------------------------------------------------


def test_window_starts_cover_every_position():
    assert window_starts(16, 16, 8) == [0]
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 5, 2) == [0]  # a kernel larger than the map is clipped to it
    assert len(window_starts(448, 16, 8, "paper")) == 57  # the paper's 3,249 windows a grid
    assert window_starts(448, 16, 8, "paper")[:2] == [-8, 0] and window_starts(448, 16, 8, "paper")[-1] == 440
    assert window_starts(14, 5, 2, "paper") == [-2, 0, 2, 4, 6, 8, 10, 12]  # centres 0, 2, …, 14


def test_rise_masks_are_seeded_and_keep_about_p():
    config = RISEConfig(masks=400, s=4, p=0.25)
    first = MaskSource(config, (20, 20), seed=3, device=torch.device("cpu"))(torch.arange(400))
    again = MaskSource(config, (20, 20), seed=3, device=torch.device("cpu"))(torch.arange(400))
    other = MaskSource(config, (20, 20), seed=4, device=torch.device("cpu"))(torch.arange(400))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1 + 1e-6
    assert abs(float(first.mean()) - 0.25) < 0.03


def test_rise_masks_made_once_equal_masks_made_per_chunk(monkeypatch):
    config = RISEConfig(masks=50, s=3, p=0.5)
    made = MaskSource(config, (12, 12), seed=1, device=torch.device("cpu"))
    monkeypatch.setattr(rise, "MADE_BYTES", 0)
    per_chunk = MaskSource(config, (12, 12), seed=1, device=torch.device("cpu"))
    assert made.made is not None and per_chunk.made is None
    item = torch.tensor([7, 0, 49, 7])
    origin = torch.tensor([[0, 0], [6, 0], [0, 6], [6, 6]])
    assert torch.equal(made(item), per_chunk(item))
    assert torch.equal(made(item, origin=origin, size=(6, 6)), per_chunk(item, origin=origin, size=(6, 6)))
    whole = made(item)  # a cell's mask is the whole map's mask cropped at the cell
    crops = torch.stack([whole[r, y : y + 6, x : x + 6] for r, (y, x) in enumerate(origin.tolist())])
    assert torch.equal(made(item, origin=origin, size=(6, 6)), crops)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gather_copies_rows_in_the_tensors_own_layout(layout):
    a = torch.randn(5, 3, 4, 4).contiguous(memory_format=layout)
    rows = torch.tensor([4, 0, 4])
    out = gather(a, rows)
    assert torch.equal(out, a[rows]) and out.is_contiguous(memory_format=layout)
    out.zero_()  # a copy: the source is untouched
    assert a.abs().sum() > 0


@pytest.mark.parametrize("setting", SETTINGS)
def test_seeded_rise_reruns_identically_whatever_the_batch_size(setting, conv_model):
    config = RISEConfig(masks=10, s=3, p=0.3)
    first = RISE(config).attribute(context(conv_model(), setting, batch_size=3))
    again = RISE(config).attribute(context(conv_model(), setting, batch_size=7))
    torch.testing.assert_close(first, again, rtol=0, atol=1e-12)
    other = RISE(config).attribute(context(conv_model(), setting, batch_size=3))
    assert torch.equal(first, other)


def test_difull_occlusion_at_the_input_stays_near_the_target_cell(conv_model):
    """Supplement B.2: near-perfect localisation; leakage only from windows straddling a border."""
    ctx = context(conv_model(cell=16), "difull", grids=4)
    k = 2
    maps = Occlusion(OcclusionConfig(k=k, s=1)).attribute(ctx)
    size = N * 16
    for t, cell in enumerate(ctx.targets.cells.tolist()):
        inside = torch.zeros(size, size, dtype=torch.bool)
        rows, cols = cell_view(ctx, t, size, size)
        inside[rows, cols] = True
        near = torch.zeros_like(inside)
        near[max(rows.start - k + 1, 0) : rows.stop + k - 1, max(cols.start - k + 1, 0) : cols.stop + k - 1] = True
        assert maps[:, t][:, ~near].abs().max() == 0  # nothing beyond one kernel width of the border
        positive = maps[:, t].clamp(min=0)
        score = positive[:, inside].sum(-1) / positive.flatten(1).sum(-1)
        assert score.min() > 0.85


def test_scorecam_constant_channel_gives_no_nan(conv_model):
    model = conv_model()
    conv = model.blocks[3][1]
    with torch.no_grad():
        conv.weight[0] = 0
        conv.bias[0] = 0.5  # channel 0 of layer 0.4 is the constant 0.5
    for setting in SETTINGS:
        ctx = context(model, setting, "final", 4, grids=2)
        maps = ScoreCAM().attribute(ctx)
        assert torch.isfinite(maps).all()
        torch.testing.assert_close(maps, scorecam_reference(ctx))


def test_difull_scorecam_weights_come_from_the_explained_cell(conv_model):
    """Changing a cell no target explains leaves the weights (and so the target cells' maps) alone."""
    before_ctx = context(conv_model(), "difull", "final", 4, grids=2, cells="0,3")
    changed = before_ctx.x.clone()
    changed[:, :, :CELL, CELL:] += 3.0  # cell 1
    after_ctx = context(conv_model(), "difull", "final", 4, grids=2, x=changed, cells="0,3")
    before, after = ScoreCAM().attribute(before_ctx), ScoreCAM().attribute(after_ctx)
    half = CELL // 2
    torch.testing.assert_close(before[:, 0, :half, :half], after[:, 0, :half, :half])
    torch.testing.assert_close(before[:, 1, half:, half:], after[:, 1, half:, half:])
    assert not torch.allclose(before[:, 0, :half, half:], after[:, 0, :half, half:])


def test_presets_and_validation():
    assert Occlusion.preset(cell_size=224, layer="input") == OcclusionConfig(k=16, s=8)
    assert Occlusion.preset(cell_size=224, layer="middle") == OcclusionConfig(k=5, s=2)
    assert Occlusion.preset(cell_size=32, layer="input") == OcclusionConfig(k=4, s=2)
    assert Occlusion.preset(cell_size=32, layer="final") == OcclusionConfig(k=2, s=1)
    assert RISE.preset(cell_size=224, layer="input") == RISEConfig(masks=1000, s=6, p=0.1)
    assert parse_method("occlusion:k=4,s=2").build(cell_size=32, layer="input").config == OcclusionConfig(4, 2)
    assert OcclusionConfig().scheme == "paper"
    for bad in ("occlusion:k=0", "rise:p=0", "rise:p=1.5", "rise:masks=0", "occlusion:size=3",
                "occlusion:k=3,k=5", "occlusion:scheme=centred"):
        with pytest.raises(UserError):
            parse_method(bad)


# --- end to end through the engine ------------------------------------------------------------


@pytest.mark.parametrize("setting,variant", [("gridpg", "distinct"), ("difull", "corners")])
def test_engine_writes_each_method_with_its_parameters_in_the_key(tmp_path, monkeypatch, setting, variant, conv_model, toy_grid_file):
    monkeypatch.chdir(tmp_path)
    model = conv_model()
    model.module.float()
    path = toy_grid_file(tmp_path / "data" / "grids" / "toy.h5", variant)
    specs = "occlusion:k=3,s=2,rise:masks=12,scorecam,ablationcam"
    results = attribute(grids=path, setting=setting, model=model, layers="input,final", methods=specs,
                        cache_root=tmp_path / "cache", batch_size=2)
    names = sorted({r.path.name for r in results})
    # s=2 is the input preset of 8-pixel cells (K=4, s=2) but not the final layer's (K=2, s=1)
    assert names == ["ablationcam.h5", "occlusion:k=3,s=2.h5", "occlusion:k=3.h5", "rise:masks=12.h5", "scorecam.h5"]
    artifact = read_artifact(next(r.path for r in results if r.path.name.startswith("occlusion")
                                  and r.key.layer == "input"))
    grids = torch.from_numpy(read_artifact(path).data["images"])
    ctx = AttributionContext(
        setting=create_setting(setting, model, N), x=grids,
        targets=create_setting(setting, model, N).targets(
            torch.from_numpy(read_artifact(path).data["labels"]),
            create_setting(setting, model, N).default_cells()),
        layer="input", layer_index=-1, batch_size=2,
    )
    expected = Occlusion(OcclusionConfig(k=3, s=2)).attribute(ctx)
    np.testing.assert_allclose(artifact.data["maps"], expected.numpy(), rtol=1e-5, atol=1e-6)
    rise = next(r.path for r in results if r.path.name.startswith("rise") and r.key.layer == "final")
    config = RISEConfig(masks=12, s=6, p=0.1)
    assert read_artifact(rise).provenance["config"]["identity"]["method_config"] == {"masks": 12, "s": 6, "p": 0.1}
    assert config == parse_method("rise:masks=12").build(cell_size=CELL, layer="final").config
