"""Device names, resolved one way for every command (``attribute``, ``score``, ``run``...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrcli.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA if present, else CPU), cpu, cuda or cuda:N"


def resolve_device(device: "str | torch.device") -> "torch.device":
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device that is
    not there, or not one of these, is a usage error naming what is valid."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r}; valid: auto, cpu, cuda, cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for but CUDA is not available; valid: cpu, auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(
                f"device {device!r} asked for but only {torch.cuda.device_count()} CUDA devices are there"
            )
    return resolved
