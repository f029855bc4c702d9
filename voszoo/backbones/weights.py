"""Pretrained torchvision weights for the backbones: read them from a local file or a weight enum name, and check
that a load filled the model.

A weight file is loaded on the CPU with ``weights_only=True``; an enum name (e.g. ``"IMAGENET1K_V1"`` of
``ResNet50_Weights``) goes through torchvision's own download cache and so needs internet on first use (never in
tests, DESIGN.md section 7).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor

__all__ = ["TOYVOS_WEIGHTS", "check_torchvision_load", "read_torchvision_weights"]

logger = logging.getLogger(__name__)

TOYVOS_WEIGHTS = "toyvos"
"""``weights:`` value naming the cached ToyVOS pre-training (``voszoo-pretrain``, docs/pretraining.md)."""


def read_torchvision_weights(
    weights: str, *, enum_name: str, owner: str, architecture: str | None = None
) -> tuple[dict[str, Tensor], str]:
    """``(state dict, source)`` of ``weights``: ``"toyvos"`` (the cached ToyVOS pre-training of ``architecture``,
    e.g. ``"resnet18"``: :func:`voszoo.pretrain.load_toyvos_weights`), an existing file path, else a member name of
    the torchvision weight enum ``enum_name`` (e.g. ``"MobileNet_V2_Weights"``). ``source`` names where it came from
    for messages, and is logged.

    Raises ValueError, prefixed by ``owner``, for a name that is neither a file nor an enum member (listing the
    valid names) and for a file that does not hold a dict.
    """
    if weights == TOYVOS_WEIGHTS:
        from voszoo.pretrain import load_toyvos_weights  # local: the cache needs Hydra and the engine

        if architecture is None:
            raise ValueError(f"{owner}: weights='toyvos' is not available for this backbone")
        state, source = load_toyvos_weights(architecture)
        logger.info("%s: loading %s", owner, source)
        return state, source
    path = Path(weights).expanduser()
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        enum = getattr(torchvision.models, enum_name)
        valid = [member.name for member in enum]
        if weights not in valid:
            raise ValueError(
                f"{owner}: weights={weights!r} is neither an existing file nor a member of {enum_name}; "
                f"valid names: {valid}"
            )
        state = enum[weights].get_state_dict(progress=True)
        source = f"{enum_name}.{weights}"
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: {source} does not hold a state dict (got {type(state).__name__})")
    return state, source


def check_torchvision_load(
    *, owner: str, source: str, architecture: str, missing: Sequence[str], unexpected: Sequence[str]
) -> None:
    """Raise ValueError (``owner``: ``source`` is not a torchvision ``architecture`` state dict, with the first 8
    missing and unexpected keys) if a non-strict load left model keys unfilled or checkpoint keys unused."""
    if missing or unexpected:
        raise ValueError(
            f"{owner}: {source} is not a torchvision {architecture} state dict: "
            f"missing {list(missing[:8])}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {list(unexpected[:8])}{'...' if len(unexpected) > 8 else ''}"
        )
