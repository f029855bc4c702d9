"""Tiny real VOS models for testing the engine (session, trainer) without a backbone.

``AffinityModel`` follows the contract exactly: encode pools the image by ``pool`` and embeds it with one conv,
memorize stores (key, soft mask) per frame, segment reads the memory by softmax affinity (an STM-style read on
raw features) and decodes per-object probabilities; multi-object is ``per_object`` or ``joint`` by argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel


class AffinityModel(VOSModel):
    stride = 4
    multi_object = "per_object"

    def __init__(
        self,
        *,
        channels: int = 8,
        pool: int = 4,
        joint_capacity: int | None = None,
        criterion: nn.Module | None = None,
    ):
        super().__init__(criterion=criterion)
        self.pool = pool
        self.embed = nn.Conv2d(3, channels, 3, padding=1)
        self.temperature = nn.Parameter(torch.tensor(4.0))
        if joint_capacity is not None:
            self.multi_object = "joint"
            self.max_objects = joint_capacity
        self.encode_calls = 0

    def encode(self, image: Tensor) -> FrameFeatures:
        self.encode_calls += 1
        key = F.normalize(self.embed(F.avg_pool2d(image, self.pool)), dim=1)
        return FrameFeatures(image=image, maps={"s4": key})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        small = F.interpolate(probs, size=feats.maps["s4"].shape[-2:], mode="bilinear", align_corners=False)
        memory.write(frame_index, {"key": feats.maps["s4"], "mask": small})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        keys = memory.stack("key", dim=2).flatten(2)  # (B, C, T*h*w)
        masks = memory.stack("mask", dim=2).flatten(2)  # (B, N+1, T*h*w)
        query = feats.maps["s4"].flatten(2)  # (B, C, h*w)
        affinity = torch.softmax(self.temperature * keys.transpose(1, 2) @ query, dim=1)  # (B, T*h*w, h*w)
        read = (masks @ affinity).clamp(1e-6, 1.0)  # (B, N+1, h*w)
        h, w = feats.maps["s4"].shape[-2:]
        logits = read.log().view(read.shape[0], read.shape[1], h, w)
        return F.interpolate(logits, size=feats.size, mode="bilinear", align_corners=False)
