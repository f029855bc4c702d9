"""Small dataclasses shared across voszoo's packages.

Only torch is imported here, so that every package can depend on this module without cycles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Clip", "collate_clips"]


@dataclass
class Clip:
    """A batch of training clips: what ``VOSModel.forward`` receives.

    Fields:
        images: (B, T, 3, H, W) float32, ImageNet mean/std normalised.
        labels: (B, T, H, W) int64; 0 background, 1..N_b objects, 255 ignore (void).
        num_objects: (B,) int64; N_b, the objects of sample b (ids 1..N_b, contiguous).
        names: B sequence names (``"a+b"`` for AOT-style merged clips).
        frame_indices: (B, T) int64; the frame index of each clip frame in its video.
        flows: optional (B, T-1, 2, H, W) float32 ground-truth forward flow: ``flows[:, t]`` maps clip frame ``t``
            to clip frame ``t + 1`` (channel 0 = dx along columns, channel 1 = dy along rows, in pixels of the
            clip's resolution; pixel (row i, column j) is at (x, y) = (j, i)); None when the data has no flow
            (``ClipDataset(with_flow=True)`` produces it).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_objects: torch.Tensor
    names: list[str]
    frame_indices: torch.Tensor
    flows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 5 or self.images.shape[2] != 3:
            raise ValueError(f"Clip: images must be (B, T, 3, H, W), got {tuple(self.images.shape)}")
        b, t, _, h, w = self.images.shape
        if tuple(self.labels.shape) != (b, t, h, w):
            raise ValueError(f"Clip: labels must be {(b, t, h, w)} to match images, got {tuple(self.labels.shape)}")
        if tuple(self.num_objects.shape) != (b,):
            raise ValueError(f"Clip: num_objects must be ({b},), got {tuple(self.num_objects.shape)}")
        if tuple(self.frame_indices.shape) != (b, t):
            raise ValueError(f"Clip: frame_indices must be {(b, t)}, got {tuple(self.frame_indices.shape)}")
        if len(self.names) != b:
            raise ValueError(f"Clip: names must hold {b} names, got {len(self.names)}")
        if self.flows is not None and tuple(self.flows.shape) != (b, t - 1, 2, h, w):
            raise ValueError(
                f"Clip: flows must be (B, T-1, 2, H, W) = {(b, t - 1, 2, h, w)} to match images, "
                f"got {tuple(self.flows.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[1])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Clip:
        """A copy with every tensor on ``device`` (names are shared)."""
        return Clip(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            num_objects=self.num_objects.to(device, non_blocking=non_blocking),
            names=list(self.names),
            frame_indices=self.frame_indices.to(device, non_blocking=non_blocking),
            flows=None if self.flows is None else self.flows.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Clip:
        """Page-locked copy; called by ``DataLoader(pin_memory=True)``."""
        return Clip(
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            num_objects=self.num_objects.pin_memory(),
            names=list(self.names),
            frame_indices=self.frame_indices.pin_memory(),
            flows=None if self.flows is None else self.flows.pin_memory(),
        )


_CLIP_KEYS = ("images", "labels", "num_objects", "name", "frame_indices")


def collate_clips(samples: Sequence[Mapping[str, object]]) -> Clip:
    """Stack per-sample dicts into a :class:`Clip`; use as ``DataLoader(collate_fn=collate_clips)``.

    Each sample (as returned by ``ClipDataset`` / ``StaticClipDataset``) holds ``images`` (T, 3, H, W) float32,
    ``labels`` (T, H, W) int64, ``num_objects`` int, ``name`` str and ``frame_indices`` (T,) int64; every sample of a
    batch must have the same T, H and W. Samples may also hold ``flows`` (T-1, 2, H, W) float32 (see
    :attr:`Clip.flows`): then every sample of the batch must hold it (a mix raises ValueError) and they are stacked.
    """
    if len(samples) == 0:
        raise ValueError("collate_clips: got an empty list of samples")
    for i, sample in enumerate(samples):
        missing = [key for key in _CLIP_KEYS if key not in sample]
        if missing:
            raise ValueError(f"collate_clips: sample {i} lacks {missing}; expected keys {list(_CLIP_KEYS)}")
    reference = tuple(samples[0]["images"].shape)  # type: ignore[union-attr]
    for i, sample in enumerate(samples):
        shape = tuple(sample["images"].shape)  # type: ignore[union-attr]
        if shape != reference:
            raise ValueError(f"collate_clips: sample {i} images have shape {shape}, sample 0 has {reference}")
    with_flow = [i for i, sample in enumerate(samples) if sample.get("flows") is not None]
    flows = None
    if with_flow:
        if len(with_flow) != len(samples):
            without = [i for i in range(len(samples)) if i not in set(with_flow)]
            raise ValueError(
                f"collate_clips: samples {with_flow} carry 'flows' but samples {without} do not; a batch needs flow "
                "in all samples or in none (mixing datasets with and without with_flow?)"
            )
        flows = torch.stack([torch.as_tensor(s["flows"], dtype=torch.float32) for s in samples])
    return Clip(
        images=torch.stack([torch.as_tensor(s["images"], dtype=torch.float32) for s in samples]),
        labels=torch.stack([torch.as_tensor(s["labels"], dtype=torch.int64) for s in samples]),
        num_objects=torch.tensor([int(s["num_objects"]) for s in samples], dtype=torch.int64),  # type: ignore[call-overload]
        names=[str(s["name"]) for s in samples],
        frame_indices=torch.stack([torch.as_tensor(s["frame_indices"], dtype=torch.int64) for s in samples]),
        flows=flows,
    )
