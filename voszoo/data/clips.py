"""Training clips from a :class:`~voszoo.data.video.VideoCollection`, with AOT's video-merging augmentation.

A sample is T annotated frames of one video (:func:`~voszoo.data.sampling.sample_frame_indices`), augmented with one
clip-consistent :class:`~voszoo.data.transforms.ClipTransform`, reduced to at most ``max_objects`` objects that are
visible in the first frame, renumbered 1..N. Batches are made by :func:`voszoo.types.collate_clips`.

Ground-truth flow (``ClipDataset(with_flow=True)``, for collections whose videos have ``flow(t)``, i.e. ToyVOS): each
sample also holds ``flows`` (T-1, 2, H, W) float32, ``flows[t]`` the forward flow from clip frame t to clip frame t+1
(dx then dy, in pixels of the transformed clip; see :attr:`voszoo.types.Clip.flows`). Between sampled frames a < b
the per-frame flows are chained at the video's resolution by :func:`chain_flows`, then the clip's crop, resize and
flip are applied (:meth:`ClipTransform.with_flows`); a repeated frame (a == b) has zero flow. With the merge trick
the merged flow is the pasted clip's where its objects were pasted, else the first clip's (:func:`merge_flows`).

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

__all__ = [
    "BaseClipDataset",
    "ClipDataset",
    "chain_flows",
    "choose_objects",
    "compose_flows",
    "keep_objects",
    "merge_clips",
    "merge_flows",
]

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


def merge_flows(first_flows: np.ndarray, second_flows: np.ndarray, second_labels: np.ndarray) -> np.ndarray:
    """The flow of a :func:`merge_clips` clip: a flow is attached to the pixel it starts from, so pixel p of frame t
    takes the second clip's flow where the second clip's object was pasted at p in frame t, else the first clip's.

    Inputs: flows (T-1, H, W, 2) of both clips, the second clip's labels (T, H, W) (ids 1..N2 are pasted, as in
    :func:`merge_clips`). Returns (T-1, H, W, 2) float32.
    """
    if first_flows.shape != second_flows.shape or second_labels.shape[1:] != first_flows.shape[1:3]:
        raise ValueError(
            f"merge_flows: flows {first_flows.shape} and {second_flows.shape} and labels {second_labels.shape} differ"
        )
    second_labels = np.asarray(second_labels)
    pasted = (second_labels[:-1] >= 1) & (second_labels[:-1] != 255)
    return np.where(pasted[..., None], second_flows, first_flows).astype(np.float32, copy=False)


def _sample_bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H, W, C) field at (H, W) pixel positions x (columns), y (rows), clamped to the border.

    ``grid_sample`` with ``align_corners=True`` puts normalised -1 and 1 at the centres of the first and last pixels,
    so pixel position x maps to ``2 x / (W - 1) - 1``; ``padding_mode="border"`` clamps. Returns (H, W, C) float32.
    """
    height, width = field.shape[:2]
    grid = np.stack([x * (2.0 / max(width - 1, 1)) - 1.0, y * (2.0 / max(height - 1, 1)) - 1.0], axis=-1)
    values = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32)).permute(2, 0, 1)[None]
    sampled = torch.nn.functional.grid_sample(
        values,
        torch.from_numpy(grid.astype(np.float32))[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled[0].permute(1, 2, 0).numpy()


def compose_flows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Chain two forward flows: ``first`` a->b and ``second`` b->c, both (H, W, 2) (dx, dy in pixels), into a->c.

    ``f_ac(p) = f_ab(p) + f_bc(p + f_ab(p))``: the point p of frame a lands at q = p + f_ab(p) in frame b, which then
    moves by ``second`` at q, sampled bilinearly (pixel (row i, column j) at (x, y) = (j, i); positions outside the
    frame are clamped to its border). The chain is exact where ``second`` is smooth around q (ToyVOS's per-layer
    affine motions) up to interpolation; it is wrong where q falls on another layer at frame b (p's surface is hidden
    at b, or q lies across a motion boundary) or outside the frame. Returns (H, W, 2) float32.
    """
    first = np.asarray(first, dtype=np.float32)
    second = np.asarray(second, dtype=np.float32)
    if first.ndim != 3 or first.shape[-1] != 2 or first.shape != second.shape:
        raise ValueError(f"compose_flows: flows must both be (H, W, 2), got {first.shape} and {second.shape}")
    height, width = first.shape[:2]
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    moved = _sample_bilinear(second, cols + first[..., 0], rows + first[..., 1])
    return (first + moved).astype(np.float32)


def chain_flows(steps: Sequence[np.ndarray], *, size: tuple[int, int]) -> np.ndarray:
    """The flow from frame a to frame a + n given the n one-frame forward flows ``steps[k]`` (a+k -> a+k+1), each
    (H, W, 2), by repeated :func:`compose_flows` (each step's field is sampled once, at the chained position).
    No steps (a repeated frame) gives zero flow of ``size`` (H, W). Returns (H, W, 2) float32."""
    if not steps:
        return np.zeros((int(size[0]), int(size[1]), 2), dtype=np.float32)
    total = np.asarray(steps[0], dtype=np.float32)
    for step in steps[1:]:
        total = compose_flows(total, step)
    return total


@dataclass
class _Sample:
    """One clip under construction: images (T, H, W, 3) uint8, labels (T, H, W) int64 with ids 1..num_objects,
    optional flows (T-1, H, W, 2) float32."""

    item: int
    images: np.ndarray
    labels: np.ndarray
    num_objects: int
    name: str
    frame_indices: list[int]
    flows: np.ndarray | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "images": normalize_image(self.images),
            "labels": torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64)),
            "num_objects": self.num_objects,
            "name": self.name,
            "frame_indices": torch.tensor(self.frame_indices, dtype=torch.int64),
        }
        if self.flows is not None:
            out["flows"] = torch.from_numpy(np.ascontiguousarray(self.flows.transpose(0, 3, 1, 2), dtype=np.float32))
        return out


class BaseClipDataset(Dataset):
    """Shared machinery of :class:`ClipDataset` and ``StaticClipDataset``: epochs, seeding, retries, object
    selection, merging and the output dict. Subclasses implement :meth:`_sample_raw` and :meth:`_item_name`.

    ``__getitem__(i)`` returns ``{"images": (T, 3, H, W) float32 normalised, "labels": (T, H, W) int64,
    "num_objects": int, "name": str, "frame_indices": (T,) int64}``, plus ``"flows"`` (T-1, 2, H, W) float32 when
    :meth:`_sample_raw` gives flows (``ClipDataset(with_flow=True)``).
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
    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple | None:
        """Transformed (frames, labels, frame_indices) of ``item``, or None if it cannot give a clip; a fourth
        element, T-1 transformed (H, W, 2) flows (clip frame t -> t+1, dx then dy), adds ``"flows"`` to the sample."""
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

    def _item_order(self, epoch: int) -> np.ndarray:
        """A per-epoch permutation of the items: index i of the epoch starts from item order[i % num_items]."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self._num_items))
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
            frames, labels, frame_indices = raw[:3]
            flows = raw[3] if len(raw) > 3 else None
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
                    flows=None if flows is None else _stack_flow_list(flows, labels.shape),
                )
        return None

    def __getitem__(self, index: int) -> dict[str, object]:
        return self.sample(index, epoch=self._epoch)

    def sample(self, index: int, *, epoch: int) -> dict[str, object]:
        """Sample ``index`` of epoch ``epoch``: what ``__getitem__(index)`` returns after ``set_epoch(epoch)``, without
        changing the dataset's epoch (:class:`voszoo.data.mixture.ClipMixture` reads each repeat of a source as
        another epoch of it)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for length {len(self)}")
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}.sample: epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, epoch, index])
        start = int(self._item_order(epoch)[index % self._num_items])
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
                    flows = None
                    if sample.flows is not None and second.flows is not None:
                        flows = merge_flows(sample.flows, second.flows, second.labels)
                    sample = _Sample(
                        sample.item, images, labels, count, f"{sample.name}+{second.name}", sample.frame_indices, flows
                    )
        return sample.as_dict()


def _stack_flow_list(flows: Sequence[np.ndarray], label_shape: tuple[int, ...]) -> np.ndarray:
    """T-1 (H, W, 2) flows of a (T, H, W) clip as one (T-1, H, W, 2) float32 array."""
    t, h, w = label_shape
    if len(flows) == 0:
        return np.zeros((0, h, w, 2), dtype=np.float32)
    stacked = np.stack(flows).astype(np.float32, copy=False)
    if stacked.shape != (t - 1, h, w, 2):
        raise ValueError(f"clip flows must be (T-1, H, W, 2) = {(t - 1, h, w, 2)}, got {stacked.shape}")
    return stacked


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
        with_flow: also give each sample its ground-truth ``flows`` (T-1, 2, H, W) float32 (see the module
            docstring); needs a collection whose videos have ``flow(t)`` (ToyVOS), else a :class:`VOSDataError`.

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
        with_flow: bool = False,
    ) -> None:
        self.collection = collection
        self._names = list(collection.sequences)
        if not self._names:
            raise VOSDataError(f"ClipDataset: the collection {type(collection).__name__} has no videos")
        self.with_flow = bool(with_flow)
        if self.with_flow and not callable(getattr(collection.video(self._names[0]), "flow", None)):
            raise VOSDataError(
                f"ClipDataset: with_flow=True needs ground-truth optical flow, but the collection {collection!r} "
                f"({type(collection).__name__}) has none: its videos have no flow(t). Only ToyVOS stores flow; use "
                "with_flow=False (and a model flow source such as flow=raft_small) for this dataset"
            )
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
            f"len={len(self)}, seed={self.seed}, epoch={self.epoch}, with_flow={self.with_flow})"
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

    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple | None:
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
        frames = [cache[i][0] for i in indices]
        labels = [cache[i][1] for i in indices]
        try:
            if not self.with_flow:
                frames, labels = self.transform(frames, labels, rng)
                return frames, labels, indices
            size = frames[0].shape[:2]
            flows = [
                chain_flows([video.flow(k) for k in range(a, b)], size=size)
                for a, b in zip(indices[:-1], indices[1:], strict=True)
            ]
            frames, labels, flows = self.transform.with_flows(frames, labels, flows, rng)
        except ValueError as error:  # frames, label maps and flows of different sizes, bad dtypes
            if isinstance(error, VOSDataError):
                raise
            raise VOSDataError(f"video {video.name!r}, frames {indices}: {error}") from error
        return frames, labels, indices, flows
