"""Precision modes for computing maps: ``fp32`` (default, exact), ``tf32`` and ``bf16`` (GPUs).

- ``fp32``: full float32 everywhere. On CUDA, TF32 is switched off for cuDNN convolutions and
  matrix products (PyTorch allows it for convolutions by default; on an H200 it moved float32
  maps of a random VGG by up to 11 % of their maximum). Bit-identical to attrcli without a
  precision mode; its artifact keys carry no suffix.
- ``tf32``: CUDA only. cuDNN convolutions and CUDA matrix products may use TF32 tensor cores
  (10-bit mantissa, float32 range); everything else is float32. Refused on the CPU: torch 2.14
  accepts ``torch.backends.mkldnn.*.fp32_precision = "tf32"`` there, but oneDNN honours it only
  on CPUs with TF32 matrix units and silently computes float32 elsewhere (measured on this
  project's AVX-512 machines: bit-identical results), so an artifact keyed ``tf32`` would be
  ``fp32`` in disguise, or not, depending on the machine.
- ``bf16``: the network's modules run under ``torch.autocast(device, bfloat16)``, so their
  convolutions and linear layers run in bfloat16 (8-bit mantissa) in the forward and, as autograd
  replays the forward's casts, in the backward; on the CPU too (slowly, but it is how the tests
  check this path). Autocast is entered per module (:func:`bf16_modules`: every module with
  parameters of its own), not around the whole computation, and three things stay float32, each cheap
  and each where bfloat16 would change what a method means:

  * every module's output, so the attributable layers' activations, the gradients the engine
    returns at them and every method's own arithmetic are float32: RISE's sum over 1000 masks,
    integrated gradients' sum over steps, Grad-CAM++'s weights, SmoothGrad's noise (drawn in the
    activations' dtype), the CAM and occlusion einsums (under a global autocast they would
    be bfloat16 matrix products: measured, the maps of Ablation-CAM, Score-CAM and occlusion
    came back bfloat16);
  * the logit layer (the model's last ``nn.Linear`` with ``num_classes`` outputs), on its float32
    input: a bfloat16 logit has a resolution of 1/16 at a logit of 10, coarser than the drop of
    most occlusion windows, and occlusion, RISE, Score-CAM and Ablation-CAM are differences or
    softmaxes of logits;
  * maps (:func:`as_float32` for any that a method still returns otherwise).

  Rounding inside a module (a convolution's bfloat16 inputs and weights) remains: that is what
  the mode trades for speed, and the benchmark reports what it costs against ``fp32``.

The precision is part of an artifact's identity: :func:`key_suffix` is appended to the method
part of its key (``gradcam@bf16``; nothing for ``fp32``) and :func:`provenance` is recorded.
Naming and keys (:data:`PRECISIONS` to :func:`provenance`) need no torch, which is imported only
by the functions that compute: the command line's help and the key parsers of the analysis
stages import this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, TypeVar

from attrcli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from attrcli.models.adapter import ModelAdapter

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT = "fp32"
SEPARATOR = "@"  # between a method spec and its precision in an artifact key: "gradcam@bf16"

K = TypeVar("K")


def validate_precision(name: str) -> str:
    """``name`` normalised (case, spaces), or a one-line :class:`UserError` naming the valid ones."""
    value = str(name).strip().lower()
    if value not in PRECISIONS:
        raise UserError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return value


def check_device(name: str, device: torch.device | str) -> str:
    """``name`` validated for ``device``: ``tf32`` needs CUDA (module docstring)."""
    import torch

    value = validate_precision(name)
    kind = torch.device(device).type
    if value == "tf32" and kind != "cuda":
        raise UserError(
            f"precision tf32 needs a CUDA device, got {kind}; valid on {kind}: fp32, bf16"
        )
    return value


def key_suffix(name: str) -> str:
    """What the precision appends to the method part of an artifact key: ``""`` for fp32 (keys
    stay as they were), ``"@bf16"``, ``"@tf32"``."""
    value = validate_precision(name)
    return "" if value == DEFAULT else f"{SEPARATOR}{value}"


def split_key_method(method: str) -> tuple[str, str]:
    """The method spec and precision of a key's method part: ``"gradcam@bf16"`` -> ``("gradcam",
    "bf16")``, ``"occlusion:k=4,s=2"`` -> ``(..., "fp32")``. Unknown precisions are refused."""
    spec, sep, precision = method.rpartition(SEPARATOR)
    if not sep:
        return method, DEFAULT
    value = validate_precision(precision)
    if value == DEFAULT:
        raise UserError(f"method {method!r}: fp32 is written without a suffix")
    return spec, value


def provenance(name: str) -> dict[str, str]:
    """The precision as recorded in an artifact's provenance config."""
    return {"precision": validate_precision(name)}


def as_float32(maps: Mapping[K, torch.Tensor]) -> dict[K, torch.Tensor]:
    """Maps as float32 (unchanged tensors where they are float32 already, so fp32 is untouched)."""
    import torch

    return {key: m if m.dtype == torch.float32 else m.float() for key, m in maps.items()}


@contextmanager
def cuda_tf32(allow: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and CUDA matrix products on (``allow``) or off; restored on exit.

    PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa); on an H200 that moved
    float32 maps of a random VGG by up to 11 % of their maximum against the CPU, without it 1e-6:
    fp32 switches it off."""
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = allow
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def logit_layer(model: ModelAdapter) -> nn.Linear | None:
    """The layer that produces the logits: the last ``nn.Linear`` of the model with
    ``num_classes`` outputs (VGG's ``classifier[-1]``, ResNet's ``fc``), or None."""
    from torch import nn

    found = None
    for module in model.module.modules():
        if type(module) is nn.Linear and module.out_features == model.num_classes:
            found = module
    return found


class _Autocast:
    """Forward hooks that run a module under ``torch.autocast(bfloat16)`` and return its output
    as float32: the network's heavy operations run in bfloat16, whatever runs between modules
    (the methods' own arithmetic, the engine's gradients) in float32. Hooks rather than a patched
    ``forward``, so the guided ReLUs and zennit's hooks, which also instrument modules, compose."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.active: list[torch.autocast] = []

    def enter(self, module: nn.Module, args: tuple) -> None:
        import torch

        region = torch.autocast(self.device_type, dtype=torch.bfloat16)
        region.__enter__()
        self.active.append(region)

    def leave(self, module: nn.Module, args: tuple, output: object) -> object:
        import torch

        self.active.pop().__exit__(None, None, None)
        if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
            return output.float()
        return output

    def close(self) -> None:
        """Leave the regions a module that raised did not leave, innermost first."""
        while self.active:
            self.active.pop().__exit__(None, None, None)


@contextmanager
def _float32_forward(module: nn.Module, device_type: str) -> Iterator[None]:
    """``module`` runs without autocast on float32 inputs within the block (its own
    ``forward`` swapped on the instance, restored on exit, as :mod:`attrcli.engine.guided`)."""
    import torch

    missing = "forward" not in module.__dict__
    previous = module.forward

    def forward(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
            return previous(*args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        if missing:
            del module.forward
        else:
            module.forward = previous


def bf16_modules(model: ModelAdapter) -> list[nn.Module]:
    """The modules that run under autocast in ``bf16``: every module of the model with parameters
    of its own (convolutions, linear layers, attention projections; normalisation layers too,
    which autocast leaves in float32), except the logit layer (:func:`logit_layer`).

    Modules, not blocks: everything between them (ReLU, pooling, residual sums) then sees float32
    inputs, and so does any rule that re-runs a module on its stored input outside the forward
    (zennit's LRP rules do, in the backward, where autocast is off: a residual block under one
    autocast region hands its inner convolutions bfloat16 inputs, and re-running them against
    float32 biases fails). A head taken apart (GridPG's sliding linear head) sees the same
    modules as the whole head."""
    logits = logit_layer(model)
    return [
        m for m in model.module.modules()
        if m is not logits and any(True for _ in m.parameters(recurse=False))
    ]


@contextmanager
def precision_context(name: str, device: torch.device | str, model: ModelAdapter | None = None) -> Iterator[str]:
    """Compute maps in precision ``name`` on ``device`` within the block (module docstring);
    yields the validated name. Refuses (``UserError``) an unknown name and ``tf32`` off CUDA.

    ``bf16`` needs ``model``, whose modules it instruments (hooks removed, settings restored on
    exit, whatever happens); ``fp32`` and ``tf32`` only set global switches.
    """
    import torch

    value = check_device(name, device)
    if value == "bf16" and model is None:
        raise ValueError("precision bf16 needs the model whose modules run in bfloat16")
    device_type = torch.device(device).type
    with ExitStack() as stack:
        stack.enter_context(cuda_tf32(value == "tf32"))
        if value == "bf16":
            hooks = _Autocast(device_type)
            stack.callback(hooks.close)
            for module in bf16_modules(model):
                stack.callback(module.register_forward_pre_hook(hooks.enter).remove)
                stack.callback(module.register_forward_hook(hooks.leave).remove)
            logits = logit_layer(model)
            if logits is not None:
                stack.enter_context(_float32_forward(logits, device_type))
        yield value
