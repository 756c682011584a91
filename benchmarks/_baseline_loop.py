"""The straightforward loop that ``bench_baseline.py`` times attrcli against.

How researchers evaluate attributions without attrcli: for each grid image, for each evaluated
target, for each layer, one call of a Captum or pytorch-grad-cam method. The model each call
sees is the setting's forward flattened to ``(B, heads·classes)`` (:class:`GridNet`; in DiFull
the cells are stacked along the batch as attrcli does, so the work is identical) and the target
is ``head·classes + class``. Batching knobs of the libraries are set to attrcli's
``--batch-size`` so both sides batch alike; everything else is the libraries' defaults.

=================  ============================================================================
method             loop call (per grid image, target and layer)
=================  ============================================================================
grad               ``Saliency(abs=True)`` at the input; ``LayerGradientXActivation(
                   multiply_by_inputs=False)`` (the layer gradient), absolute value, deeper
ixg                ``InputXGradient`` / ``LayerGradientXActivation``
guided-backprop    ``GuidedBackprop``; Captum has no layer variant, so deeper it explains the
                   rest of the network (:class:`SuffixNet`) on the layer's activations (ML-Att)
intgrad            ``IntegratedGradients`` (same steps and rule, ``internal_batch_size`` = batch
                   size); deeper on :class:`SuffixNet`, i.e. a zero baseline at the layer as
                   attrcli defines it (``LayerIntegratedGradients`` takes its baseline at the
                   input: another method, and slower)
occlusion          ``Occlusion`` with a (C, K, K) window, stride (C, s, s), zero baseline,
                   ``perturbations_per_eval`` = batch size; deeper on :class:`SuffixNet` (Captum's
                   ``LayerFeatureAblation`` cannot express overlapping windows)
rise               no library implementation: a plain per-target loop over mask batches that
                   runs the whole network on the grid with the layer's output multiplied by the
                   masks (a forward hook); the same masks as attrcli (its ``MaskSource``)
gradcam            pytorch-grad-cam ``GradCAM``, ``GradCAMPlusPlus``, ``LayerCAM``, ``ScoreCAM``
gradcam++          (``batch_size`` = batch size), ``AblationCAM`` (``batch_size`` = batch size)
layercam           with ``target_layers=[the layer module]`` and ``ClassifierOutputTarget(head·
scorecam           classes + class)``. At ``input`` the target layer is an identity module whose
ablationcam        output is the image (gradient CAMs get ``compute_input_gradient=True``). In
                   DiFull ``reshape_transform`` stitches the cells' maps into the grid's, and
                   AblationCAM gets :class:`CellAblationLayer` (its ablation layer for stacked
                   cells); the library's own layer assumes one row per image.
=================  ============================================================================

pytorch-grad-cam returns ReLU'd maps min-max normalised and resized to the input, so those are
compared with attrcli's maps only up to that normalisation (:func:`agreement`); its Score-CAM
(softmax over the channels' target logits, whole grid masked in DiFull) and its Ablation-CAM at
the input (ablation value ``min − 1e7`` for inputs with negative values) are other definitions,
and so is Grad-CAM++ at the input (:data:`INCOMPARABLE`): reported as not comparable.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from attrcli.settings import GridSetting

GRADCAM_HINT = "pytorch-grad-cam is missing: pip install grad-cam (or pip install -e '.[bench]')"
RAW = ("grad", "guided-backprop", "ixg", "intgrad", "occlusion", "rise")  # compared value by value
NORMALISED = ("gradcam", "gradcam++", "layercam", "ablationcam")  # up to pytorch-grad-cam's scaling
NOTES = {  # known causes of a "differ"
    "gradcam++": "pytorch-grad-cam adds 1e-6 to the denominator of alpha; where gradients are "
    "small (random weights) that term dominates and its maps differ from the paper's formula",
}
INCOMPARABLE = {  # (method, layer) whose maps the two sides define differently, and why
    ("ablationcam", "input"): "pytorch-grad-cam ablates with min − 1e7 where inputs are negative",
    ("gradcam++", "input"): "the input's three channels hold normalised pixels of both signs, so "
    "2 + Σ A·g of alpha's denominator crosses zero for many terms (7 of 24 on the tests' tiny "
    "model); attrcli drops those ill-conditioned terms and counts them (docs/methods.md), "
    "pytorch-grad-cam divides by them plus 1e-6",
}
RAW_TOLERANCE = 1e-3  # max |difference| relative to the loop map's max |value|
NORMALISED_TOLERANCE = 1e-2  # max |difference| of maps scaled to [0, 1]


class MissingBaseline(RuntimeError):
    """A baseline library is not installed."""


def gradcam_module():
    """The ``pytorch_grad_cam`` package, or :class:`MissingBaseline` with the install command."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise MissingBaseline(GRADCAM_HINT) from None
    return pytorch_grad_cam


class GridNet(nn.Module):
    """A setting's forward as one module: grid images ``(B, 3, H, W)`` to ``(B, heads·classes)``.

    The feature blocks run from a ``ModuleList`` (so AblationCAM's layer swap takes effect) after
    ``input``, an identity whose output is the image in network layout (the CAMs' target layer at
    ``input``). The whole model is registered too, so hooks reach the head's ReLUs.
    """

    def __init__(self, setting: GridSetting) -> None:
        super().__init__()
        self.setting = setting
        self.input = nn.Identity()
        self.blocks = nn.ModuleList(block for _, block in setting.model.blocks)
        self.model = setting.model.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(self.setting.split(x))
        for block in self.blocks:
            h = block(h)
        return self.setting.heads(h).flatten(1)


class SuffixNet(nn.Module):
    """The network after a layer on grid-layout activations, ``(B, heads·classes)`` (ML-Att)."""

    def __init__(self, setting: GridSetting, layer_index: int) -> None:
        super().__init__()
        self.setting = setting
        self.layer_index = layer_index
        self.model = setting.model.module

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.setting.suffix(self.setting.from_map(a), self.layer_index).flatten(1)


@dataclass
class LoopCase:
    """One (setting, layer, method) with attrcli's config for it: the loop uses the same values."""

    setting: GridSetting
    layer: str
    method: str  # attrcli method name
    config: Any  # the attrcli method's config (steps, k/s, masks, ...)
    batch_size: int
    seed: int = 0

    @property
    def layer_index(self) -> int:
        return self.setting.model.layer_index(self.layer)

    def layer_module(self, net: GridNet) -> nn.Module:
        if self.layer == "input":
            return net.input
        return dict(self.setting.model.blocks)[self.setting.model.canonical_layer(self.layer)]

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's activations in grid layout (the prefix runs once per call)."""
        with torch.no_grad():
            return self.setting.to_map(self.setting.prefix(x, self.layer_index))


@dataclass(frozen=True)
class Target:
    head: int
    cls: int
    index: int  # head·classes + class in the flattened output


Runner = Callable[[LoopCase, GridNet, torch.Tensor, Target], np.ndarray]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _grad(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from captum.attr import LayerGradientXActivation, Saliency

    if case.layer == "input":
        g = Saliency(net).attribute(x, target=target.index, abs=True)
    else:
        layer = LayerGradientXActivation(net, case.layer_module(net), multiply_by_inputs=False)
        g = case.setting.to_map(layer.attribute(x, target=target.index)).abs()
    return _numpy(g.sum(1)[0])


def _ixg(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from captum.attr import InputXGradient, LayerGradientXActivation

    if case.layer == "input":
        m = InputXGradient(net).attribute(x, target=target.index)
    else:
        m = case.setting.to_map(LayerGradientXActivation(net, case.layer_module(net)).attribute(x, target=target.index))
    return _numpy(m.sum(1)[0])


def _on_layer(case: LoopCase, net: GridNet, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The function Captum explains and its input: the grid net on the image, or the rest of the
    network on the layer's activations."""
    if case.layer == "input":
        return net, x
    return SuffixNet(case.setting, case.layer_index), case.activations(x)


def _guided(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from captum.attr import GuidedBackprop

    model, inputs = _on_layer(case, net, x)
    return _numpy(GuidedBackprop(model).attribute(inputs, target=target.index).abs().sum(1)[0])


def _intgrad(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from captum.attr import IntegratedGradients

    model, inputs = _on_layer(case, net, x)
    m = IntegratedGradients(model).attribute(
        inputs, baselines=0.0, target=target.index, n_steps=case.config.steps,
        method=case.config.rule, internal_batch_size=case.batch_size,
    )
    return _numpy(m.sum(1)[0])


def _occlusion(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from captum.attr import Occlusion

    model, inputs = _on_layer(case, net, x)
    channels, height, width = inputs.shape[1:]
    ky, kx, s = min(case.config.k, height), min(case.config.k, width), case.config.s
    m = Occlusion(model).attribute(
        inputs, sliding_window_shapes=(channels, ky, kx), strides=(channels, s, s), baselines=0.0,
        target=target.index, perturbations_per_eval=case.batch_size,
    )
    return _numpy(m.mean(1)[0])  # every channel of a position holds the same value


def _rise(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
    from attrcli.methods.rise import MaskSource

    setting, config = case.setting, case.config
    size = tuple(case.activations(x).shape[-2:])
    masks = MaskSource(config, size, case.seed, x.device)
    current: list[torch.Tensor] = []

    def multiply(module, inputs, output):
        return output * setting.from_map(current[0][:, None])

    saliency = torch.zeros(size, device=x.device)
    handle = case.layer_module(net).register_forward_hook(multiply)
    try:
        with torch.no_grad():
            for start in range(0, config.masks, case.batch_size):
                item = torch.arange(start, min(start + case.batch_size, config.masks), device=x.device)
                current[:] = [masks(item, x.dtype)]
                logits = net(x.expand(len(item), -1, -1, -1)).view(len(item), setting.num_heads, -1)
                probs = logits.softmax(-1)[:, target.head, target.cls]
                saliency += torch.einsum("m,mhw->hw", probs, current[0])
    finally:
        handle.remove()
    return _numpy(saliency / (config.masks * config.p))


def cell_ablation_layer(cells: int):
    """pytorch-grad-cam's ablation layer for stacked cells (DiFull): a grid image is ``cells``
    network rows, so ablating a channel of the grid's map ablates it in each of its cell rows.
    The ablation value follows the library's rule (zero when the activations' minimum is zero)."""
    from pytorch_grad_cam.ablation_layer import AblationLayer

    class CellAblationLayer(AblationLayer):
        def set_next_batch(self, input_batch_index, activations, num_channels_to_ablate):
            rows = activations[input_batch_index * cells : (input_batch_index + 1) * cells]
            self.activations = rows.clone().repeat(num_channels_to_ablate, 1, 1, 1)

        def __call__(self, x):
            output = self.activations
            for i in range(output.size(0) // cells):
                rows = slice(i * cells, (i + 1) * cells)
                low = torch.min(output)
                output[rows, self.indices[i]] = 0 if low == 0 else low - 1e7
            return output

    return CellAblationLayer()


def _cam(name: str) -> Runner:
    def run(case: LoopCase, net: GridNet, x: torch.Tensor, target: Target) -> np.ndarray:
        cams = gradcam_module()
        from pytorch_grad_cam.ablation_layer import AblationLayer
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        setting = case.setting
        kwargs: dict[str, Any] = {"reshape_transform": setting.to_map if setting.disconnected else None}
        if name == "AblationCAM":
            cells = setting.n**2 if setting.disconnected else 1
            kwargs["batch_size"] = case.batch_size
            kwargs["ablation_layer"] = cell_ablation_layer(cells) if setting.disconnected else AblationLayer()
        cam = getattr(cams, name)(model=net, target_layers=[case.layer_module(net)], **kwargs)
        try:
            cam.batch_size = case.batch_size  # ScoreCAM's masked images per forward
            # frozen weights (attrcli's channels-last kernels, for the recheck): the input is the leaf
            cam.compute_input_gradient = case.layer == "input" or not any(p.requires_grad for p in net.parameters())
            with contextlib.redirect_stderr(io.StringIO()):  # its per-batch progress bars
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(target.index)])[0]
        finally:
            cam.activations_and_grads.release()

    return run


RUNNERS: dict[str, Runner] = {
    "grad": _grad,
    "guided-backprop": _guided,
    "ixg": _ixg,
    "intgrad": _intgrad,
    "occlusion": _occlusion,
    "rise": _rise,
    "gradcam": _cam("GradCAM"),
    "gradcam++": _cam("GradCAMPlusPlus"),
    "layercam": _cam("LayerCAM"),
    "scorecam": _cam("ScoreCAM"),
    "ablationcam": _cam("AblationCAM"),
}


def loop_maps(
    case: LoopCase, images: torch.Tensor, labels: np.ndarray, cells: list[int], *, targets: int | None = None
) -> np.ndarray:
    """The loop's maps ``(N, T, ...)`` for grid images ``images`` (on the device) and their labels.

    ``targets`` limits the loop to the first evaluated targets (each costs the same: the caller
    scales the time). Captum maps are channel-summed at the layer in grid layout; pytorch-grad-cam
    maps are its normalised maps at the input size.
    """
    if case.method not in RUNNERS:
        raise KeyError(f"no loop baseline for method {case.method!r}; valid: {', '.join(RUNNERS)}")
    run = RUNNERS[case.method]
    net = GridNet(case.setting).eval()
    classes = case.setting.model.num_classes
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Captum's notes on requires_grad and hooks
        for i in range(images.shape[0]):
            x = images[i : i + 1]
            row = []
            for cell in cells[:targets]:
                head, cls = case.setting.head_of_cell(cell), int(labels[i, cell])
                row.append(run(case, net, x, Target(head, cls, head * classes + cls)))
            out.append(np.stack(row))
    return np.stack(out)


def comparison(method: str, layer: str) -> str:
    """How the two sides' maps are compared: ``raw``, ``normalised`` or ``not comparable``."""
    if method in RAW:
        return "raw"
    if method in NORMALISED and (method, layer) not in INCOMPARABLE:
        return "normalised"
    return "not comparable"


def occlusion_region(size: int, k: int, s: int) -> slice:
    """Positions along one axis where Captum's windows and attrcli's are the same: attrcli adds a
    last window flush with the border when the stride does not reach it, Captum does not."""
    k = min(k, size)
    return slice(0, size) if (size - k) % s == 0 else slice(0, size - k)


def agreement(
    method: str, layer: str, ours: np.ndarray, theirs: np.ndarray, *, region: tuple[slice, slice] | None = None
) -> dict[str, Any]:
    """Compare attrcli's maps ``(N, T, h, w)`` with the loop's (first ``T'`` targets).

    ``raw``: max |difference| over the loop map's max |value| (``region`` limits the positions).
    ``normalised``: attrcli's maps are ReLU'd, min-max scaled and resized as pytorch-grad-cam does
    with its own (``scale_cam_image``), then the max |difference| on that [0, 1] scale.
    """
    how = comparison(method, layer)
    if how == "not comparable":
        return {"status": "not comparable", "how": how}
    ours = ours[:, : theirs.shape[1]].astype(np.float64)
    if how == "raw":
        if region is not None:
            ours, theirs = ours[..., region[0], region[1]], theirs[..., region[0], region[1]]
        scale = float(np.abs(theirs).max())
        diff = float(np.abs(ours - theirs).max()) / (scale if scale > 0 else 1.0)
        tolerance = RAW_TOLERANCE
    else:
        from pytorch_grad_cam.utils.image import scale_cam_image

        size = (theirs.shape[-1], theirs.shape[-2])
        flat = np.maximum(ours, 0).reshape(-1, *ours.shape[-2:])
        # as BaseCAM: scaled and resized per layer, then scaled again after the layer mean
        scaled = scale_cam_image(scale_cam_image(flat.astype(np.float32), size)).reshape(theirs.shape)
        diff = float(np.abs(scaled - theirs).max())
        tolerance = NORMALISED_TOLERANCE
    ok = bool(np.isfinite(diff) and diff <= tolerance)
    result = {"status": "agree" if ok else "differ", "how": how, "max_diff": diff, "tolerance": tolerance}
    if not ok and method in NOTES:
        result["note"] = NOTES[method]
    return result
