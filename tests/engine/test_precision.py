"""Precision modes (:mod:`attrcli.engine.precision`) on small random models on the CPU.

fp32 must be today's computation bit for bit; bf16 must run (maps differ from fp32) and stay
close to fp32: per map, correlation with the fp32 map above 0.9 and the largest difference
below 40 % of the fp32 map's largest magnitude. Measured on these models the worst were 0.95 and
34 % (gradients at the input of a random VGG, the noisiest maps), 0.99 and under 5 % for
perturbation and CAM methods.
"""

from __future__ import annotations

import pytest
import torch

from attrcli.engine.precision import (
    PRECISIONS,
    as_float32,
    bf16_modules,
    check_device,
    key_suffix,
    logit_layer,
    precision_context,
    provenance,
    split_key_method,
    validate_precision,
)
from attrcli.errors import UserError
from attrcli.settings import create_setting
from attrcli.store.keys import ArtifactKey
from tests.engine.helpers import engine_maps, grid_images, grid_labels, resnet18, tiny_vgg

GRADIENT = ["grad", "gradcam", "gradcam++", "guided-backprop", "ixg", "layercam"]
MODEL = ["ablationcam", "intgrad:steps=4", "lrp", "occlusion", "rise:masks=40", "scorecam", "smoothgrad-ixg:samples=3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vgg():
    return tiny_vgg(dtype=torch.float32)


def _batch(count: int = 2):
    return grid_images(count, dtype=torch.float32), torch.from_numpy(grid_labels(count))


def _maps(model, setting_name, layers, methods, precision=None, count=2):
    setting = create_setting(setting_name, model, 2)
    x, labels = _batch(count)
    cells = [0, 1, 2, 3] if setting_name == "gridpg" else [0, 3]
    if precision is None:
        return engine_maps(setting, x, labels, cells, layers, methods, batch_size=4)
    with precision_context(precision, "cpu", model):
        return engine_maps(setting, x, labels, cells, layers, methods, batch_size=4)


def _agreement(reference: torch.Tensor, low: torch.Tensor) -> tuple[float, float]:
    a, b = reference.flatten().double(), low.flatten().double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    return corr, ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("setting_name", ["gridpg", "difull"])
def test_fp32_is_bit_identical_to_no_context(vgg, setting_name):
    methods = ["grad", "gradcam++", "guided-backprop", "rise:masks=20", "lrp"]
    plain = _maps(vgg, setting_name, ["input", "middle"], methods)
    exact = _maps(vgg, setting_name, ["input", "middle"], methods, "fp32")
    plain.update(_maps(vgg, setting_name, ["middle"], ["occlusion"]))
    exact.update(_maps(vgg, setting_name, ["middle"], ["occlusion"], "fp32"))
    assert plain.keys() == exact.keys() and len(plain) == 11
    for key, maps in plain.items():
        assert exact[key].dtype == maps.dtype and torch.equal(exact[key], maps), key


@pytest.mark.parametrize("setting_name", ["gridpg", "difull", "dipart"])
def test_bf16_maps_are_float32_close_to_fp32_and_differ(vgg, setting_name):
    methods = GRADIENT + MODEL
    reference = _maps(vgg, setting_name, ["middle"], methods)
    low = _maps(vgg, setting_name, ["middle"], methods, "bf16")
    if setting_name == "gridpg":  # the input layer, where gradients are noisiest, once
        reference.update(_maps(vgg, setting_name, ["input"], GRADIENT + ["lrp"]))
        low.update(_maps(vgg, setting_name, ["input"], GRADIENT + ["lrp"], "bf16"))
    assert low.keys() == reference.keys() and len(low) >= len(methods)
    for key, maps in low.items():
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), key
        assert not torch.equal(maps, reference[key]), f"{key}: bf16 did not run"
        corr, error = _agreement(reference[key], maps)
        assert corr > 0.9 and error < 0.4, (key, corr, error)


def test_bf16_on_resnet_residual_blocks_lrp_and_incremental_occlusion():
    """LRP (zennit re-runs convolutions inside residual blocks in the backward) and occlusion's
    incremental path (crops through residual blocks) on torchvision's resnet18."""
    model, methods = resnet18(), ["grad", "occlusion", "lrp"]
    reference = _maps(model, "gridpg", ["middle"], methods, count=1)
    low = _maps(model, "gridpg", ["middle"], methods, "bf16", count=1)
    assert low.keys() == reference.keys() and len(low) == 3
    for key, maps in low.items():
        assert maps.dtype == torch.float32 and not torch.equal(maps, reference[key]), key
        corr, error = _agreement(reference[key], maps)
        assert corr > 0.9 and error < 0.4, (key, corr, error)


def test_bf16_runs_modules_in_bfloat16_and_logits_in_float32(vgg):
    seen = {}

    def record(name):
        def hook(module, args, output) -> None:
            seen.setdefault(name, (args[0].dtype, torch.is_autocast_enabled("cpu")))

        return hook

    logits = logit_layer(vgg)
    assert logits is vgg.module.classifier[-1]
    conv = vgg.module.features[0]
    handles = [conv.register_forward_hook(record("conv")), logits.register_forward_hook(record("logits"))]
    try:
        with precision_context("bf16", "cpu", vgg):
            x = torch.randn(1, 3, 32, 32)
            features = vgg.run_blocks(x)
            out = vgg.head(features)
    finally:
        for handle in handles:
            handle.remove()
    assert features.dtype == torch.float32 and out.dtype == torch.float32
    assert seen["conv"][1] is True  # the convolution ran under autocast
    assert seen["logits"] == (torch.float32, False)  # the logit layer did not
    modules = bf16_modules(vgg)
    assert conv in modules and vgg.module.classifier[0] in modules and logits not in modules
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in modules)


def test_bf16_leaves_no_hooks_or_autocast_behind_even_on_error(vgg):
    x = torch.randn(1, 3, 32, 32)
    before = vgg.logits(x)
    with pytest.raises(RuntimeError, match="boom"):
        with precision_context("bf16", "cpu", vgg):
            vgg.module.features[0].register_forward_hook(_raise)  # raises inside a hooked module
            vgg.logits(x)
    vgg.module.features[0]._forward_hooks.clear()
    assert not torch.is_autocast_enabled("cpu")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vgg.module.modules())
    assert "forward" not in vgg.module.classifier[-1].__dict__
    assert torch.equal(vgg.logits(x), before)


def _raise(module, args, output):
    raise RuntimeError("boom")


@pytest.mark.parametrize("name", ["fp16", "", "bf32", "float32"])
def test_unknown_precision_is_a_one_line_user_error_naming_the_valid_ones(name):
    with pytest.raises(UserError) as info:
        validate_precision(name)
    message = str(info.value)
    assert "\n" not in message and all(p in message for p in PRECISIONS)
    with pytest.raises(UserError):
        with precision_context(name, "cpu"):
            pass


def test_names_are_normalised():
    assert validate_precision(" BF16 ") == "bf16" and validate_precision("fp32") == "fp32"


def test_tf32_is_refused_on_the_cpu_and_allowed_for_cuda():
    with pytest.raises(UserError, match="tf32 needs a CUDA device.*valid on cpu: fp32, bf16"):
        with precision_context("tf32", "cpu"):
            pass
    assert check_device("tf32", "cuda:0") == "tf32" and check_device("bf16", "cpu") == "bf16"


def test_bf16_needs_the_model():
    with pytest.raises(ValueError, match="needs the model"):
        with precision_context("bf16", "cpu"):
            pass


def test_fp32_and_tf32_switches_are_restored():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with precision_context("fp32", "cpu"):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_key_suffix_keeps_fp32_keys_and_round_trips_through_a_key():
    assert key_suffix("fp32") == "" and key_suffix("bf16") == "@bf16" and key_suffix("tf32") == "@tf32"
    for method in ("gradcam", "occlusion:k=4,s=2"):
        for precision in PRECISIONS:
            text = method + key_suffix(precision)
            key = ArtifactKey("attributions", "g", "gridpg", "vgg11", "input", text)
            assert ArtifactKey.from_path(key.path("cache")).method == text
            assert split_key_method(text) == (method, precision)
    with pytest.raises(UserError):
        split_key_method("gradcam@fp32")  # fp32 has one spelling: none
    with pytest.raises(UserError):
        split_key_method("gradcam@fp16")
    assert provenance("bf16") == {"precision": "bf16"}


def test_as_float32_casts_only_what_is_not_float32():
    kept, low = torch.ones(2), torch.ones(2, dtype=torch.bfloat16)
    out = as_float32({"a": kept, "b": low})
    assert out["a"] is kept and out["b"].dtype == torch.float32 and torch.equal(out["b"], kept)
