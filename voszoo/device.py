"""The one reading of a ``device`` setting, shared by the trainer, the entry points, profiling and the benchmarks."""

from __future__ import annotations

import torch

from voszoo.errors import UserError

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(UserError, ValueError):
    """A ``device`` setting names no usable device; the message names the setting and the valid spellings."""


def resolve_device(device: str | torch.device, *, key: str = "device") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"`` as a ``torch.device``.

    Raises :class:`DeviceError` naming ``key`` (the config key or argument that gave it) for another spelling, a
    device type other than CPU and CUDA, or CUDA on a machine without it.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise DeviceError(f"{key} must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"{key} must be a CPU or CUDA device, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key}={device!r} requested but CUDA is not available; use {key}=cpu or {key}=auto")
    return resolved
