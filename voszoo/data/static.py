"""Static-image pre-training: synthetic clips made from single images and their instance masks.

STM (Oh et al., ICCV 2019, Sec. 4 "Pre-training on images") and AOT (Yang et al., NeurIPS 2021, Sec. 4) pre-train on
COCO, ECSSD, MSRA10K, PASCAL-S and PASCAL VOC: each image becomes a short "video" whose frames are random affine
warps (rotation, scale, shear, translation) of it. AOT's official ``StaticTrain`` keeps the first frame unwarped and
warps every later frame independently (degrees 20, translate 0.1, scale 0.9..1.1, shear 10, filled with the mean
colour); these are the defaults here. The clip then goes through the same :class:`ClipTransform`, object selection and
(optional) merge trick as video clips, so a static sample is interchangeable with a :class:`ClipDataset` sample.

:class:`StaticImages` reads any folder of images plus label PNGs with the same relative stem, e.g.
``root/images/COCO/000123.jpg`` with ``root/masks/COCO/000123.png``. Instance masks hold 0 background, 1..K instances
and optionally 255 void; saliency datasets (ECSSD, MSRA10K) ship binary masks, read with ``binary_masks=True``
(values > 127 are object 1, the rest background).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from voszoo.data.clips import BaseClipDataset
from voszoo.data.io import VOSDataError, read_image, read_labels
from voszoo.data.transforms import ClipTransform

__all__ = ["StaticImages", "StaticClipDataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File suffixes (case-insensitive) taken as images."""

_FILL_COLOUR = [124.0, 116.0, 104.0]  # the ImageNet mean colour, AOT's fill for warped-in borders


class StaticImages:
    """A folder of images and instance-label PNGs paired by relative path stem.

    ``root/image_dir`` is searched recursively for files ending in :data:`IMAGE_SUFFIXES`; each needs
    ``root/mask_dir/<same relative stem>.png``, checked at construction (a missing mask raises :class:`VOSDataError`
    naming the image and the expected mask). ``names`` are the relative stems, sorted.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        image_dir: str = "images",
        mask_dir: str = "masks",
        binary_masks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.image_root = self.root / image_dir
        self.mask_root = self.root / mask_dir
        self.binary_masks = bool(binary_masks)
        if not self.image_root.is_dir():
            raise VOSDataError(f"{self.image_root}: image folder not found")
        if not self.mask_root.is_dir():
            raise VOSDataError(f"{self.mask_root}: mask folder not found")
        images: dict[str, Path] = {}
        for path in sorted(self.image_root.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            stem = path.relative_to(self.image_root).with_suffix("").as_posix()
            if stem in images:
                raise VOSDataError(f"{path}: two images share the stem {stem!r} ({images[stem].name} and {path.name})")
            images[stem] = path
        if not images:
            raise VOSDataError(f"{self.image_root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self.names: list[str] = sorted(images)
        self._images = [images[name] for name in self.names]
        self._masks = [self.mask_root / f"{name}.png" for name in self.names]
        for image, mask in zip(self._images, self._masks, strict=True):
            if not mask.is_file():
                raise VOSDataError(f"{image}: mask {mask} not found (every image needs <mask_dir>/<stem>.png)")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StaticImages(root={str(self.root)!r}, images={len(self)}, binary_masks={self.binary_masks})"

    def image_path(self, index: int) -> Path:
        return self._images[index]

    def mask_path(self, index: int) -> Path:
        return self._masks[index]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` as (H, W, 3) uint8 and its label map as (H, W) uint8 (0 bg, 1..K objects, 255 void)."""
        image = read_image(self._images[index])
        labels = read_labels(self._masks[index])
        if labels.shape != image.shape[:2]:
            raise VOSDataError(
                f"{self._masks[index]}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but image "
                f"{self._images[index]} is {image.shape[1]}x{image.shape[0]}"
            )
        if self.binary_masks:
            labels = (labels > 127).astype(np.uint8)
        return image, labels


class StaticClipDataset(BaseClipDataset):
    """Synthetic T-frame training clips from :class:`StaticImages`, output like :class:`ClipDataset`.

    Arguments (keyword-only):
        images: the image/mask folder (or any source with ``names``, ``len()`` and ``read(i)``, e.g.
            :class:`voszoo.data.toy_stream.StreamFirstFrames`).
        transform: the clip-consistent augmentation applied after the per-frame warps.
        num_frames: T.
        max_objects: at most this many objects per clip (random subset of those visible in the first frame).
        rotation: per-frame rotation drawn from [-rotation, rotation] degrees.
        affine_scale: per-frame zoom range.
        shear: per-frame horizontal shear drawn from [-shear, shear] degrees.
        translate: per-frame shift drawn from [-translate, translate] times the image width / height.
        merge_prob: probability of AOT's merge trick with another random image (AOT pre-trains with merging).
        samples_per_epoch, seed, max_tries: as in :class:`ClipDataset`.

    Frame 0 is the image itself; frames 1..T-1 are independent random affine warps of it (bilinear for the image,
    filled with the mean colour; nearest for the mask, filled with background). ``frame_indices`` are 0..T-1.
    """

    def __init__(
        self,
        *,
        images: StaticImages,
        transform: ClipTransform,
        num_frames: int = 3,
        max_objects: int = 3,
        rotation: float = 20.0,
        affine_scale: tuple[float, float] = (0.9, 1.1),
        shear: float = 10.0,
        translate: float = 0.1,
        merge_prob: float = 0.0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        max_tries: int = 20,
    ) -> None:
        super().__init__(
            num_items=len(images),
            num_frames=num_frames,
            transform=transform,
            max_objects=max_objects,
            merge_prob=merge_prob,
            samples_per_epoch=samples_per_epoch,
            seed=seed,
            max_tries=max_tries,
        )
        if not 0.0 <= rotation <= 180.0:
            raise ValueError(f"StaticClipDataset: rotation must lie in [0, 180] degrees, got {rotation}")
        if len(affine_scale) != 2 or not 0.0 < affine_scale[0] <= affine_scale[1]:
            raise ValueError(
                f"StaticClipDataset: affine_scale must be a (min, max) pair with 0 < min <= max, got {affine_scale!r}"
            )
        if not 0.0 <= shear < 90.0:
            raise ValueError(f"StaticClipDataset: shear must lie in [0, 90) degrees, got {shear}")
        if not 0.0 <= translate <= 1.0:
            raise ValueError(f"StaticClipDataset: translate must lie in [0, 1], got {translate}")
        self.images = images
        self.rotation = float(rotation)
        self.affine_scale = (float(affine_scale[0]), float(affine_scale[1]))
        self.shear = float(shear)
        self.translate = float(translate)

    def __repr__(self) -> str:
        return (
            f"StaticClipDataset(images={len(self.images)}, num_frames={self.num_frames}, rotation={self.rotation}, "
            f"affine_scale={self.affine_scale}, shear={self.shear}, translate={self.translate}, "
            f"max_objects={self.max_objects}, merge_prob={self.merge_prob}, len={len(self)}, seed={self.seed})"
        )

    def _item_name(self, item: int) -> str:
        return self.images.names[item]

    def warp(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random affine warp of an (H, W, 3) uint8 image and its (H, W) uint8 labels, same geometry for both."""
        height, width = labels.shape
        angle = float(rng.uniform(-self.rotation, self.rotation))
        shift = [
            float(rng.uniform(-self.translate, self.translate) * width),
            float(rng.uniform(-self.translate, self.translate) * height),
        ]
        zoom = float(rng.uniform(*self.affine_scale))
        shear = [float(rng.uniform(-self.shear, self.shear)), 0.0]
        image_t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy
        label_t = torch.from_numpy(np.array(labels, dtype=np.uint8))[None]
        image_t = TF.affine(
            image_t, angle, shift, zoom, shear, interpolation=InterpolationMode.BILINEAR, fill=_FILL_COLOUR
        )
        label_t = TF.affine(label_t, angle, shift, zoom, shear, interpolation=InterpolationMode.NEAREST, fill=[0.0])
        return image_t.permute(1, 2, 0).contiguous().numpy(), label_t[0].numpy()

    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple[list, list, list[int]] | None:
        image, labels = self.images.read(item)
        frames, masks = [image], [labels]
        for _ in range(1, self.num_frames):
            warped_image, warped_labels = self.warp(image, labels, rng)
            frames.append(warped_image)
            masks.append(warped_labels)
        frames, masks = self.transform(frames, masks, rng)
        return frames, masks, list(range(self.num_frames))
