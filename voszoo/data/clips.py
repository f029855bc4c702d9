"""Training clips from a :class:`~voszoo.data.video.VideoCollection`, with AOT's video-merging augmentation.

A sample is T annotated frames of one video (:func:`~voszoo.data.sampling.sample_frame_indices`), augmented with one
clip-consistent :class:`~voszoo.data.transforms.ClipTransform`, reduced to at most ``max_objects`` objects that are
visible in the first frame, renumbered 1..N. Batches are made by :func:`voszoo.types.collate_clips`.

Determinism: sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (and of the dataset's arguments and
current ``max_gap``): all randomness comes from ``np.random.default_rng([seed, e, i])``, so DataLoader workers, any
number of them, produce the same batches, and resuming at (epoch, step) reproduces the interrupted run exactly. Call
``set_epoch(e)`` (and ``set_max_gap`` / ``set_step`` for a gap curriculum) *before* creating the epoch's DataLoader
iterator: workers copy the dataset when the iterator starts, so changes made later (or with
``persistent_workers=True``) do not reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from voszoo.data.io import VOSDataError
from voszoo.data.sampling import GapCurriculum, sample_frame_indices
from voszoo.data.transforms import ClipTransform, normalize_image, visible_objects
from voszoo.data.video import VideoCollection

__all__ = ["BaseClipDataset", "ClipDataset", "choose_objects", "keep_objects", "merge_clips"]

_MAX_MERGED_ID = 254  # ids above this would collide with void (255)


def choose_objects(first_labels: np.ndarray, *, min_area: int, max_objects: int, rng: np.random.Generator) -> list[int]:
    """Ids visible in the first frame's ``(H, W)`` label map (>= ``min_area`` pixels), at most ``max_objects``.

    If more are visible, a uniformly random subset of ``max_objects`` is kept (AOT does the same). Ascending order.
    """
    visible = visible_objects(first_labels, min_area=min_area)
    if len(visible) > max_objects:
        visible = sorted(int(k) for k in rng.choice(visible, size=max_objects, replace=False))
    return visible


def keep_objects(labels: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Renumber ``keep[k]`` to ``k + 1`` in a ``(..., H, W)`` label map; other objects become 0, void 255 stays 255.

    Returns int64 labels of the same shape.
    """
    table = np.zeros(256, dtype=np.int64)
    table[255] = 255
    table[np.asarray(keep, dtype=np.int64)] = np.arange(1, len(keep) + 1)
    return table[np.asarray(labels, dtype=np.int64)]


def merge_clips(
    first_images: np.ndarray,
    first_labels: np.ndarray,
    second_images: np.ndarray,
    second_labels: np.ndarray,
    *,
    min_area: int,
    max_objects: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """AOT's merge trick: paste the objects of a second clip over a first one, frame by frame.

    Inputs: images (T, H, W, 3) uint8 and labels (T, H, W) with contiguous ids (first 1..N1, second 1..N2; 0
    background, 255 void), both clips already transformed to the same size.

    The exact rule (after AOT's ``_merge_sample``):

    1. Every pixel where the second clip has an object (1..N2) takes the second clip's colour and the label
       ``N1 + id``; all other pixels (its background and its void) keep the first clip's colour and label, so the
       first clip's void stays void unless a pasted object covers it.
    2. Objects are re-selected on the merged first frame: those keeping ``min_area`` pixels (a first-clip object
       may now be hidden), and, if more than ``max_objects`` remain, a uniformly random subset of ``max_objects``.
    3. Kept objects are renumbered 1..N in their order after step 1 (the first clip's before the second's); dropped
       objects become background.

    Returns (images (T, H, W, 3) uint8, labels (T, H, W) int64, N).
    """
    if first_images.shape != second_images.shape or first_labels.shape != second_labels.shape:
        raise ValueError(
            f"merge_clips: clips differ in shape: images {first_images.shape} vs {second_images.shape}, "
            f"labels {first_labels.shape} vs {second_labels.shape}"
        )
    first_labels = np.asarray(first_labels, dtype=np.int64)
    second_labels = np.asarray(second_labels, dtype=np.int64)
    first_count = int(first_labels[first_labels != 255].max(initial=0))
    second_count = int(second_labels[second_labels != 255].max(initial=0))
    if first_count + second_count > _MAX_MERGED_ID:
        raise ValueError(f"merge_clips: {first_count} + {second_count} objects do not fit below the void label 255")
    pasted = (second_labels >= 1) & (second_labels != 255)
    images = np.where(pasted[..., None], second_images, first_images)
    labels = np.where(pasted, second_labels + first_count, first_labels)
    keep = choose_objects(labels[0], min_area=min_area, max_objects=max_objects, rng=rng)
    return images, keep_objects(labels, keep), len(keep)


@dataclass
class _Sample:
    """One clip under construction: images (T, H, W, 3) uint8, labels (T, H, W) int64 with ids 1..num_objects."""

    item: int
    images: np.ndarray
    labels: np.ndarray
    num_objects: int
    name: str
    frame_indices: list[int]

    def as_dict(self) -> dict[str, object]:
        return {
            "images": normalize_image(self.images),
            "labels": torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64)),
            "num_objects": self.num_objects,
            "name": self.name,
            "frame_indices": torch.tensor(self.frame_indices, dtype=torch.int64),
        }


class BaseClipDataset(Dataset):
    """Shared machinery of :class:`ClipDataset` and ``StaticClipDataset``: epochs, seeding, retries, object
    selection, merging and the output dict. Subclasses implement :meth:`_sample_raw` and :meth:`_item_name`.

    ``__getitem__(i)`` returns ``{"images": (T, 3, H, W) float32 normalised, "labels": (T, H, W) int64,
    "num_objects": int, "name": str, "frame_indices": (T,) int64}``.
    """

    def __init__(
        self,
        *,
        num_items: int,
        num_frames: int,
        transform: ClipTransform,
        max_objects: int,
        merge_prob: float,
        samples_per_epoch: int | None,
        seed: int,
        max_tries: int,
    ) -> None:
        name = type(self).__name__
        if num_frames < 1:
            raise ValueError(f"{name}: num_frames must be >= 1, got {num_frames}")
        if not isinstance(transform, ClipTransform):
            raise ValueError(f"{name}: transform must be a ClipTransform, got {type(transform).__name__}")
        if max_objects < 1:
            raise ValueError(f"{name}: max_objects must be >= 1, got {max_objects}")
        if not 0.0 <= merge_prob <= 1.0:
            raise ValueError(f"{name}: merge_prob must lie in [0, 1], got {merge_prob}")
        if merge_prob > 0 and 2 * max_objects > _MAX_MERGED_ID:
            raise ValueError(f"{name}: max_objects must be <= {_MAX_MERGED_ID // 2} when merging, got {max_objects}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"{name}: samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        if seed < 0:
            raise ValueError(f"{name}: seed must be >= 0, got {seed}")
        if max_tries < 1:
            raise ValueError(f"{name}: max_tries must be >= 1, got {max_tries}")
        self._num_items = num_items
        self.num_frames = int(num_frames)
        self.transform = transform
        self.max_objects = int(max_objects)
        self.merge_prob = float(merge_prob)
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        self._epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    # -- to implement ---------------------------------------------------------------------------------------------
    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple[list, list, list[int]] | None:
        """Transformed (frames, labels, frame_indices) of ``item``, or None if it cannot give a clip."""
        raise NotImplementedError

    def _item_name(self, item: int) -> str:
        raise NotImplementedError

    # -- epochs ---------------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (call before creating the DataLoader iterator)."""
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}.set_epoch: epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch if self.samples_per_epoch is not None else self._num_items

    def _item_order(self) -> np.ndarray:
        """A per-epoch permutation of the items: index i of the epoch starts from item order[i % num_items]."""
        if self._order is None or self._order[0] != self._epoch:
            self._order = (self._epoch, np.random.default_rng([self.seed, self._epoch]).permutation(self._num_items))
        return self._order[1]

    # -- sampling -------------------------------------------------------------------------------------------------
    def _sample_usable(self, item: int, rng: np.random.Generator) -> _Sample | None:
        """A clip with at least one object visible in its first frame, trying random other items if needed."""
        min_area = self.transform.min_object_area
        for attempt in range(self.max_tries):
            if attempt > 0:
                item = int(rng.integers(self._num_items))
            raw = self._sample_raw(item, rng)
            if raw is None:
                continue
            frames, labels, frame_indices = raw
            labels = np.stack(labels)
            keep = choose_objects(labels[0], min_area=min_area, max_objects=self.max_objects, rng=rng)
            if keep:
                return _Sample(
                    item=item,
                    images=np.stack(frames),
                    labels=keep_objects(labels, keep),
                    num_objects=len(keep),
                    name=self._item_name(item),
                    frame_indices=list(frame_indices),
                )
        return None

    def __getitem__(self, index: int) -> dict[str, object]:
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for length {len(self)}")
        rng = np.random.default_rng([self.seed, self._epoch, index])
        start = int(self._item_order()[index % self._num_items])
        sample = self._sample_usable(start, rng)
        if sample is None:
            raise VOSDataError(
                f"{type(self).__name__}: found no clip with an object visible in its first frame "
                f"(>= {self.transform.min_object_area} pixels after the transform) in {self.max_tries} tries, "
                f"starting from {self._item_name(start)!r}; are the label maps empty or the objects too small?"
            )
        if self.merge_prob > 0 and self._num_items > 1 and rng.random() < self.merge_prob:
            other = int(rng.integers(self._num_items - 1))
            other += other >= sample.item
            second = self._sample_usable(other, rng)
            if second is not None:
                images, labels, count = merge_clips(
                    sample.images,
                    sample.labels,
                    second.images,
                    second.labels,
                    min_area=self.transform.min_object_area,
                    max_objects=self.max_objects,
                    rng=rng,
                )
                if count > 0:
                    sample = _Sample(
                        sample.item, images, labels, count, f"{sample.name}+{second.name}", sample.frame_indices
                    )
        return sample.as_dict()


class ClipDataset(BaseClipDataset):
    """Random T-frame training clips of the videos of a :class:`VideoCollection`.

    Arguments (keyword-only):
        collection: the videos (DAVIS, YouTube-VOS, ToyVOS, ...).
        num_frames: T, frames per clip (the first is the reference frame whose mask the model is given).
        max_gap: maximum gap between consecutive clip frames, or a :class:`GapCurriculum` (then the gap starts at
            ``curriculum(0)`` and :meth:`set_step` moves it).
        gap_unit: ``"frame"`` (gaps in frame indices) or ``"annotation"`` (gaps in annotated frames, as AOT counts
            them: on YouTube-VOS train, a gap of 1 is 5 frames).
        transform: the clip-consistent augmentation; its ``min_object_area`` also decides which objects are visible.
        max_objects: at most this many objects per clip (a random subset of the visible ones if more).
        merge_prob: probability of AOT's merge trick (:func:`merge_clips`) with a clip of another random video.
        samples_per_epoch: ``len(dataset)``; default one sample per video. Sample i of epoch e starts from video
            ``permutation_e[i % num_videos]``, a fresh permutation per epoch.
        seed: base seed; see the module docstring for the determinism contract.
        max_tries: clips drawn (first from the chosen video, then from random videos) before giving up when no object
            is visible in the first frame; then a :class:`VOSDataError` is raised.

    Frames and labels are read through ``collection.video(name).frame(i)`` / ``.labels(i)`` for the sampled indices
    only. Objects that are not visible in the first (transformed) frame become background in every frame; void
    (255) stays 255 and is ignored by the losses.
    """

    def __init__(
        self,
        *,
        collection: VideoCollection,
        transform: ClipTransform,
        num_frames: int = 3,
        max_gap: int | GapCurriculum = 5,
        gap_unit: Literal["frame", "annotation"] = "frame",
        max_objects: int = 3,
        merge_prob: float = 0.0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        max_tries: int = 20,
    ) -> None:
        self.collection = collection
        self._names = list(collection.sequences)
        if not self._names:
            raise VOSDataError(f"ClipDataset: the collection {type(collection).__name__} has no videos")
        super().__init__(
            num_items=len(self._names),
            num_frames=num_frames,
            transform=transform,
            max_objects=max_objects,
            merge_prob=merge_prob,
            samples_per_epoch=samples_per_epoch,
            seed=seed,
            max_tries=max_tries,
        )
        if gap_unit not in ("frame", "annotation"):
            raise ValueError(f"ClipDataset: gap_unit must be 'frame' or 'annotation', got {gap_unit!r}")
        self.gap_unit = gap_unit
        self.curriculum = max_gap if isinstance(max_gap, GapCurriculum) else None
        self.set_max_gap(max_gap(0) if isinstance(max_gap, GapCurriculum) else max_gap)

    def __repr__(self) -> str:
        return (
            f"ClipDataset(videos={len(self._names)}, num_frames={self.num_frames}, max_gap={self.max_gap}, "
            f"gap_unit={self.gap_unit!r}, max_objects={self.max_objects}, merge_prob={self.merge_prob}, "
            f"len={len(self)}, seed={self.seed}, epoch={self.epoch})"
        )

    @property
    def max_gap(self) -> int:
        return self._max_gap

    def set_max_gap(self, max_gap: int) -> None:
        """Set the maximum gap used from now on (call before creating the DataLoader iterator)."""
        if not isinstance(max_gap, (int, np.integer)) or max_gap < 1:
            raise ValueError(f"ClipDataset: max_gap must be an integer >= 1, got {max_gap!r}")
        self._max_gap = int(max_gap)

    def set_step(self, step: int) -> None:
        """Set the maximum gap to ``curriculum(step)``; needs ``max_gap=GapCurriculum(...)``."""
        if self.curriculum is None:
            raise ValueError("ClipDataset.set_step: the dataset has a fixed max_gap; pass max_gap=GapCurriculum(...)")
        self.set_max_gap(self.curriculum(step))

    def _item_name(self, item: int) -> str:
        return self._names[item]

    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple[list, list, list[int]] | None:
        video = self.collection.video(self._names[item])
        annotated = list(video.annotated_indices)
        if not annotated:
            return None
        if self.gap_unit == "frame":
            indices = sample_frame_indices(annotated, num_frames=self.num_frames, max_gap=self._max_gap, rng=rng)
        else:
            positions = sample_frame_indices(
                range(len(annotated)), num_frames=self.num_frames, max_gap=self._max_gap, rng=rng
            )
            indices = [annotated[p] for p in positions]
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for index in indices:
            if index not in cache:
                cache[index] = (video.frame(index), video.labels(index))
        try:
            frames, labels = self.transform([cache[i][0] for i in indices], [cache[i][1] for i in indices], rng)
        except ValueError as error:  # frames and label maps of different sizes, bad dtypes
            raise VOSDataError(f"video {video.name!r}, frames {indices}: {error}") from error
        return frames, labels, indices
