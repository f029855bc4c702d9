"""A tiny real VOS model and an index-deterministic in-memory clip dataset for the engine tests (trainer, DDP).

``ToyVOS`` implements the VOSModel contract with the MemoryBank: encode = avg-pool to stride 4, conv, optional
BatchNorm and dropout; memorize stores (key, soft mask); segment reads the masks by softmax affinity and rescales
the log-probabilities with a learnt per-model scale and per-channel bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel


class CrossEntropy(nn.Module):
    """Mean cross-entropy over frames and pixels (255 ignored): {"loss", "ce"}."""

    def forward(self, logits: Tensor, labels: Tensor, *, num_objects: Tensor) -> dict[str, Tensor]:
        b, t, c, h, w = logits.shape
        ce = F.cross_entropy(logits.reshape(b * t, c, h, w), labels.reshape(b * t, h, w), ignore_index=255)
        return {"loss": ce, "ce": ce}


class Encoder(nn.Module):
    def __init__(self, *, channels: int, batch_norm: bool, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, image: Tensor) -> Tensor:
        return self.dropout(self.bn(self.conv(F.avg_pool2d(image, 4))))


class ToyVOS(VOSModel):
    stride = 4
    multi_object = "per_object"

    def __init__(self, *, channels: int = 8, batch_norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__(criterion=CrossEntropy())
        self.encoder = Encoder(channels=channels, batch_norm=batch_norm, dropout=dropout)
        self.temperature = nn.Parameter(torch.tensor(3.0))
        self.head = nn.Conv2d(1, 1, 1)  # the same 1x1 conv on every class channel of the log-read

    def encode(self, image: Tensor) -> FrameFeatures:
        return FrameFeatures(image=image, maps={"s4": F.normalize(self.encoder(image), dim=1)})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        small = F.adaptive_avg_pool2d(probs, feats.maps["s4"].shape[-2:])
        memory.write(frame_index, {"key": feats.maps["s4"], "mask": small})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        keys = memory.stack("key", dim=2).flatten(2)  # (B, C, T*h*w)
        masks = memory.stack("mask", dim=2).flatten(2)  # (B, N+1, T*h*w)
        query = feats.maps["s4"].flatten(2)  # (B, C, h*w)
        affinity = torch.softmax(self.temperature * keys.transpose(1, 2) @ query, dim=1)
        read = (masks @ affinity).clamp(1e-4, 1.0).log()  # (B, N+1, h*w)
        b, n = read.shape[:2]
        h, w = feats.maps["s4"].shape[-2:]
        logits = self.head(read.reshape(b * n, 1, h, w)).reshape(b, n, h, w)
        return F.interpolate(logits, size=feats.size, mode="bilinear", align_corners=False)


class RandomClips(Dataset):
    """``length`` random clips (T frames, ``size`` x ``size``, 2 objects); sample i of epoch e depends only on
    (seed, e, i), like voszoo's ClipDataset. ``void`` marks a corner as 255."""

    def __init__(self, *, length: int = 5, frames: int = 3, size: int = 16, seed: int = 0, void: bool = True):
        self.length, self.frames, self.size, self.seed, self.void = length, frames, size, seed, void
        self.epoch = 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, object]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1_009 + index)
        coarse = torch.randint(0, 3, (self.frames, 1, self.size // 4, self.size // 4), generator=generator)
        labels = F.interpolate(coarse.float(), size=(self.size, self.size), mode="nearest").long()[:, 0]
        if self.void:
            labels[:, :2, :2] = 255
        images = torch.randn(self.frames, 3, self.size, self.size, generator=generator) * 0.3
        images[:, 0] += (labels == 1).float()
        images[:, 1] += (labels == 2).float()
        return {
            "images": images,
            "labels": labels,
            "num_objects": 2,
            "name": f"clip{index}",
            "frame_indices": torch.arange(self.frames),
        }
