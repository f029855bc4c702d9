"""Which frames of a video make a training clip, and how far apart they may be.

STM (Oh et al., ICCV 2019, Sec. 4 "Training on videos") and AOT (Yang et al., NeurIPS 2021, Sec. 4; official
``dataloaders/train_datasets.py``) both train on short clips of T frames taken in temporal order with a random start
and random skips between consecutive frames; STM grows the maximum skip during training (from 0 to 25 skipped
frames) as a curriculum. :func:`sample_frame_indices` draws such a clip and :class:`GapCurriculum` is the schedule.

Gaps are measured in *frame-index units* (frame 10 to frame 15 is a gap of 5), whatever the annotation density:
with YouTube-VOS train, annotated every 5th frame, ``max_gap`` must be at least 5 to move at all. A caller that wants
gaps counted in annotated frames (as AOT's ``rand_gap`` on the label list does) passes ``range(len(annotated))``
and maps the result back (``ClipDataset(gap_unit="annotation")`` does this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["sample_frame_indices", "GapCurriculum"]


def _chain_lengths(positions: np.ndarray, *, max_gap: int, cap: int) -> np.ndarray:
    """lengths[k] = min(cap, number of frames of the longest chain starting at annotated position k)."""
    lengths = np.ones(len(positions), dtype=np.int64)
    for k in range(len(positions) - 2, -1, -1):
        stop = np.searchsorted(positions, positions[k] + max_gap, side="right")
        if stop > k + 1:
            lengths[k] = min(cap, 1 + int(lengths[k + 1 : stop].max()))
    return lengths


def sample_frame_indices(
    annotated: Sequence[int], *, num_frames: int, max_gap: int, rng: np.random.Generator
) -> list[int]:
    """Draw ``num_frames`` annotated frame indices in temporal order with consecutive gaps of at most ``max_gap``.

    ``annotated``: strictly increasing indices of the frames that have a label map.
    Returns T indices, each taken from ``annotated``, with ``1 <= idx[t+1] - idx[t] <= max_gap``.

    The start is drawn uniformly among the annotated frames from which T frames can still be reached; each next
    frame uniformly among the annotated frames within ``max_gap`` of the current one that keep the remaining frames
    reachable. With every frame annotated this is a random start followed by random increments in [1, max_gap],
    restricted so that the clip never runs off the end of the video.

    Too short a video (no chain of T distinct frames exists, e.g. fewer than T annotated frames or annotations
    sparser than ``max_gap``): the longest possible chain is drawn the same way and its last frame is *repeated* up to
    T frames (gaps of 0), so the indices stay non-decreasing. The official AOT instead reflects indices at the end of
    the video, which can run time backwards inside a clip; repeating keeps the temporal order of the clip.
    """
    if num_frames < 1:
        raise ValueError(f"sample_frame_indices: num_frames must be >= 1, got {num_frames}")
    if max_gap < 1:
        raise ValueError(f"sample_frame_indices: max_gap must be >= 1, got {max_gap}")
    positions = np.asarray(annotated, dtype=np.int64)
    if positions.ndim != 1 or positions.size == 0:
        raise ValueError("sample_frame_indices: annotated must be a non-empty sequence of frame indices")
    if np.any(np.diff(positions) <= 0):
        raise ValueError(f"sample_frame_indices: annotated must be strictly increasing, got {list(annotated)[:20]}")

    lengths = _chain_lengths(positions, max_gap=max_gap, cap=num_frames)
    reachable = int(lengths.max())  # num_frames unless the video is too short
    starts = np.flatnonzero(lengths >= reachable)
    current = int(starts[rng.integers(len(starts))])
    chosen = [current]
    for remaining in range(reachable - 1, 0, -1):
        stop = np.searchsorted(positions, positions[current] + max_gap, side="right")
        candidates = current + 1 + np.flatnonzero(lengths[current + 1 : stop] >= remaining)
        current = int(candidates[rng.integers(len(candidates))])
        chosen.append(current)
    chosen += [chosen[-1]] * (num_frames - reachable)
    return [int(positions[k]) for k in chosen]


@dataclass(frozen=True, kw_only=True)
class GapCurriculum:
    """The maximum gap grows linearly from ``start`` at step 0 to ``end`` at ``steps`` and stays there.

    STM's curriculum (Sec. 4): the number of skipped frames grows from 0 to 25 during main training, i.e.
    ``GapCurriculum(start=1, end=26, steps=...)`` in gap units (a gap of g skips g - 1 frames). ``curriculum(step)``
    returns ``round(start + (end - start) * min(step, steps) / steps)``. Feed it to a
    :class:`~voszoo.data.clips.ClipDataset` as ``max_gap=`` and call ``dataset.set_step(step)``, or call
    ``dataset.set_max_gap(curriculum(step))`` yourself.
    """

    start: int
    end: int
    steps: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < 1:
            raise ValueError(f"GapCurriculum: start and end must be >= 1, got start={self.start}, end={self.end}")
        if self.steps < 1:
            raise ValueError(f"GapCurriculum: steps must be >= 1, got {self.steps}")

    def __call__(self, step: int) -> int:
        if step < 0:
            raise ValueError(f"GapCurriculum: step must be >= 0, got {step}")
        fraction = min(step, self.steps) / self.steps
        return int(round(self.start + (self.end - self.start) * fraction))
