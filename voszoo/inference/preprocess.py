"""Frame preparation for inference: normalise, optionally resize, pad to the model stride, and undo it all."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from voszoo.data.transforms import normalize_image

__all__ = ["FrameGeometry", "image_to_tensor"]


def image_to_tensor(image: np.ndarray, *, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 on ``device``, ImageNet mean/std normalised."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return normalize_image(image).unsqueeze(0).to(device)


@dataclass(frozen=True)
class FrameGeometry:
    """How a video's frames map to the model input: resize (H, W) -> (h, w), then zero-pad right/bottom to (hp, wp).

    ``short_side``: resize so the shorter side has this length (None keeps the original size). ``stride``: padded
    sizes are multiples of it. Padding goes to the right and bottom so that the top-left pixel grid is unchanged.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]

    @classmethod
    def create(cls, original: tuple[int, int], *, stride: int, short_side: int | None = None) -> FrameGeometry:
        height, width = original
        if short_side is not None:
            scale = short_side / min(height, width)
            height, width = max(1, round(height * scale)), max(1, round(width * scale))
        padded = (math.ceil(height / stride) * stride, math.ceil(width / stride) * stride)
        if min(padded) < 2 * stride:
            raise ValueError(
                f"a frame of {original[0]}x{original[1]} (model input {height}x{width}) is too small for a model of "
                f"stride {stride}: each side must reach at least {2 * stride} pixels after resizing"
            )
        return cls(original=tuple(original), resized=(height, width), padded=padded)

    def to_model(self, image: Tensor, *, mode: str = "bilinear") -> Tensor:
        """(B, C, H, W) at original size -> (B, C, hp, wp) model input."""
        if tuple(image.shape[-2:]) != self.resized:
            kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            image = F.interpolate(image, size=self.resized, mode=mode, **kwargs)
        pad_h, pad_w = self.padded[0] - self.resized[0], self.padded[1] - self.resized[1]
        return F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image

    def from_model(self, maps: Tensor) -> Tensor:
        """(B, C, hp, wp) model-resolution maps (e.g. probabilities) -> (B, C, H, W) at the original size."""
        maps = maps[..., : self.resized[0], : self.resized[1]]
        if tuple(maps.shape[-2:]) != self.original:
            maps = F.interpolate(maps, size=self.original, mode="bilinear", align_corners=False)
        return maps
