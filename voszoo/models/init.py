"""Weight initialisation shared by model presets."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["copy_matching_weights"]


@torch.no_grad()
def copy_matching_weights(*, source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter and buffer of ``source`` into ``target`` where both have the same name and shape.

    Returns the copied names (sorted). Raises ``ValueError`` if nothing matches, since then the two modules are
    not the same architecture and tying them would silently do nothing.
    """
    source_state = source.state_dict()
    copied = []
    for name, tensor in target.state_dict().items():
        if name in source_state and source_state[name].shape == tensor.shape:
            tensor.copy_(source_state[name])
            copied.append(name)
    if not copied:
        raise ValueError(
            f"copy_matching_weights: no parameter of {type(source).__name__} matches {type(target).__name__} "
            "by name and shape"
        )
    return sorted(copied)
