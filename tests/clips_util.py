"""A tiny random training clip shared by the model tests: 2 samples, 3 frames, 64x64, 2 and 1 objects."""

from __future__ import annotations

import torch

from voszoo.types import Clip


def tiny_clip(*, seed: int = 0, void_corner: bool = True) -> Clip:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2, 3, 64, 64), generator=g)
    labels[1][labels[1] == 2] = 0  # sample 1 has a single object
    if void_corner:
        labels[0, :, :4, :4] = 255
    return Clip(
        images=torch.randn(2, 3, 3, 64, 64, generator=g),
        labels=labels,
        num_objects=torch.tensor([2, 1]),
        names=["a", "b"],
        frame_indices=torch.arange(3).repeat(2, 1),
    )
