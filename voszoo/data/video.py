"""The evaluation-side view of a dataset: a collection of videos, each read lazily frame by frame.

Every reader (DAVIS, YouTube-VOS, ToyVOS, static images) exposes the same two types, so that the inference session,
the evaluator and the training clip sampler never care where frames come from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["VideoSource", "VideoCollection"]


class VideoSource(ABC):
    """One video, read lazily.

    Frames are (H, W, 3) uint8 RGB; label maps are (H, W) uint8 with 0 = background, 1..K objects, 255 = void.
    ``annotated_indices`` lists the frames with a label file (all frames for DAVIS, every 5th for YouTube-VOS train,
    the frames where objects first appear for YouTube-VOS valid). ``first_appearance`` maps each object id to the index
    of the first frame whose label map contains it (semi-supervised: that frame's mask is the object's reference).
    """

    name: str

    @property
    @abstractmethod
    def frame_names(self) -> Sequence[str]:
        """File stems of every frame, in temporal order (e.g. ``"00000"``)."""

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    @abstractmethod
    def annotated_indices(self) -> Sequence[int]:
        """Sorted indices of the frames that have a label map."""

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames (and of every label map)."""

    @abstractmethod
    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8."""

    @abstractmethod
    def labels(self, index: int) -> np.ndarray:
        """Label map of annotated frame ``index`` as (H, W) uint8; raises KeyError if the frame has none."""

    @property
    @abstractmethod
    def first_appearance(self) -> dict[int, int]:
        """{object id: index of the first annotated frame that contains it}, ids ascending."""

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.first_appearance)

    def frames(self) -> Iterator[np.ndarray]:
        for index in range(self.num_frames):
            yield self.frame(index)

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, frames={self.num_frames}, objects={self.object_ids})"


class VideoCollection(ABC):
    """A dataset split: an ordered list of sequence names and a lazily built :class:`VideoSource` for each."""

    @property
    @abstractmethod
    def sequences(self) -> Sequence[str]:
        """Sequence names in split-file order."""

    @abstractmethod
    def video(self, name: str) -> VideoSource:
        """The video called ``name``; raises KeyError listing valid names if it is not in the split."""

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[VideoSource]:
        for name in self.sequences:
            yield self.video(name)
