"""What the per-object models (STM, SITVOS, MUNet, MGA: ``multi_object = "per_object"``) share: each object is
segmented on its own (the objects batched together), and their foreground probabilities are merged back by soft
aggregation (STM, Oh et al., ICCV 2019, Sec. 3.4; :func:`voszoo.layers.soft_aggregate`), skipping the objects a
memory bank has not seen yet.

A new per-object method imports these instead of another method's file.
"""

from __future__ import annotations

import torch
from torch import Tensor

from voszoo.layers.aggregation import soft_aggregate
from voszoo.memory import MemoryBank

__all__ = ["PRESENT_KEY", "aggregate_objects", "memory_num_objects", "update_presence"]

PRESENT_KEY = "objects_present"
"""``memory.state`` key of the (B, N) bool presence of each object in a bank."""


def update_presence(memory: MemoryBank, fg: Tensor, *, threshold: float) -> None:
    """Record which objects are present in ``memory.state["objects_present"]`` (B, N) bool, for soft aggregation.

    fg: (B, N, H, W) foreground probabilities being written. On the bank's first write an object is present if its
    mask is > 0 anywhere (the given masks); later, an object becomes present once its probability exceeds
    ``threshold`` somewhere (an object appearing later in the same bank). Per-object models (STM, SITVOS, MUNet, MGA)
    share this rule.
    """
    peak = fg.detach().flatten(2).amax(dim=-1)  # (B, N)
    previous = memory.state.get(PRESENT_KEY)
    if memory.reference_index is None or previous is None:  # the first write: the given masks
        memory.state[PRESENT_KEY] = peak > 0
    else:
        memory.state[PRESENT_KEY] = previous | (peak > threshold)


def memory_num_objects(memory: MemoryBank, probs: Tensor, *, where: str) -> int:
    """N of a per-object memory bank, checking that it has objects and that ``probs`` is (B, N+1, H, W); errors
    name ``where`` (e.g. ``"STM.memorize"``)."""
    num_objects = int(memory.state["num_objects"])
    if num_objects < 1:
        raise ValueError(f"{where}: the memory bank has no objects (num_objects={num_objects})")
    if probs.ndim != 4 or probs.shape[1] != num_objects + 1:
        raise ValueError(
            f"{where}: probs must be (B, N+1={num_objects + 1}, H, W) for this memory, got {tuple(probs.shape)}"
        )
    return num_objects


def aggregate_objects(logits: Tensor, memory: MemoryBank, *, num_objects: int, eps: float) -> Tensor:
    """Per-object logits (B*N, 2, H, W) (background, foreground; object-major within a sample) -> soft-aggregated
    logits (B, N+1, H, W), float32 or wider, with the objects absent from ``memory`` (``update_presence``) masked."""
    # soft aggregation in at least float32 (under autocast the decoder may run in half precision)
    fg = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=1)[:, 1]
    fg = fg.unflatten(0, (-1, num_objects))
    return soft_aggregate(fg, eps=eps, present=memory.state.get(PRESENT_KEY))
