"""A procedural ToyVOS training stream: fresh videos rendered in memory on demand, never read from disk.

A model trained on the 64 fixed ToyVOS train videos can memorise them (docs/quickstart.md); this collection has as
many videos as you ask for (``videos``, e.g. 100,000), each rendered when a clip is first taken from it by the same
scene sampler and renderer as ``voszoo-toyvos`` (:func:`voszoo.data.toy.sample_video`), including the JPEG round trip
of the stored dataset so that training frames look like evaluation frames. It is a :class:`VideoCollection`, so
:class:`~voszoo.data.clips.ClipDataset` samples clips from it exactly as from a folder:

    ClipDataset(collection=ToyVOSStream(videos=100_000, seed=0), transform=..., num_frames=3)

Determinism: video ``i`` is a pure function of ``(seed, i, frames, size, jpeg_quality)``: its generator is
``SeedSequence(entropy=seed, spawn_key=(i, STREAM_KEY))``. Generated datasets use ``spawn_key=(i,)``, so no stream
video equals a ``voszoo-toyvos`` video of any seed and index (the default val split is never trained on). With
:class:`ClipDataset`'s ``(seed, epoch, index)`` sampling, sample ``i`` of epoch ``e`` is a pure function of those,
so runs resume exactly and DataLoader workers agree.

Cost: each frame is rendered when first read (:meth:`ToyVOSStreamVideo.frame`), so a 3-frame clip renders 3 frames
whatever ``frames`` (the window clips are sampled from) is (timings in docs/toyvos.md).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from PIL import Image

from voszoo.data.toy import JPEG_QUALITY, sample_video
from voszoo.data.toy_render import Layer, RenderedVideo, render_video
from voszoo.data.video import VideoCollection, VideoSource

__all__ = ["STREAM_KEY", "StreamFirstFrames", "ToyVOSStream", "ToyVOSStreamVideo"]

STREAM_KEY = 1
"""Second element of a stream video's spawn key: keeps stream videos apart from generated datasets' (1-element keys)."""


def _stream_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index, STREAM_KEY)))


def _jpeg_round_trip(frame: np.ndarray, quality: int) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 as it reads back after the stored dataset's JPEG encoding (4:2:0, ``quality``)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


class ToyVOSStreamVideo(VideoSource):
    """One stream video: its scene is sampled at construction; each frame is rendered on its first access.

    Frames are independent given the scene (:func:`render_video` with ``start``), so a clip of frames 2, 5, 9
    renders those three frames (plus the frames its chained flows need), however long the video is.
    """

    def __init__(self, name: str, *, layers: list[Layer], frames: int, size: tuple[int, int], jpeg_quality: int | None):
        self.name = name
        self._layers = layers
        self._frames = int(frames)
        self._size = (int(size[0]), int(size[1]))
        self._jpeg_quality = jpeg_quality
        self._images: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}
        self._flows: dict[int, np.ndarray] = {}

    def _render(self, index: int, *, with_flow: bool) -> None:
        rendered: RenderedVideo = render_video(
            self._layers, size=self._size, frames=index + (2 if with_flow else 1), start=index
        )
        for offset in range(rendered.frames.shape[0]):
            raw = rendered.frames[offset]
            if self._jpeg_quality is not None:
                raw = _jpeg_round_trip(raw, self._jpeg_quality)
            self._images.setdefault(index + offset, raw)
            self._labels.setdefault(index + offset, rendered.labels[offset])
        if with_flow:
            self._flows[index] = rendered.flow[0]

    def _check_index(self, index: int) -> int:
        if not -self._frames <= index < self._frames:
            raise IndexError(f"stream video {self.name!r}: frame {index} out of range 0..{self._frames - 1}")
        return index % self._frames

    @property
    def frame_names(self) -> Sequence[str]:
        return [f"{t:05d}" for t in range(self._frames)]

    @property
    def annotated_indices(self) -> Sequence[int]:
        return range(self._frames)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def first_appearance(self) -> dict[int, int]:
        # the scene sampler guarantees every annotated object is visible in frame 0; read only when asked (training
        # clips never ask, and their frames rarely include frame 0)
        return {int(object_id): 0 for object_id in np.unique(self.labels(0)) if object_id != 0}

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (H, W, 3) uint8, after the JPEG round trip of the stored dataset (if ``jpeg_quality``)."""
        index = self._check_index(index)
        if index not in self._images:
            self._render(index, with_flow=False)
        return self._images[index].copy()

    def labels(self, index: int) -> np.ndarray:
        """Label map of frame ``index`` (H, W) uint8: 0 background and distractors, 1..K objects."""
        index = self._check_index(index)
        if index not in self._labels:
            self._render(index, with_flow=False)
        return self._labels[index].copy()

    def flow(self, index: int) -> np.ndarray:
        """Exact forward flow from frame ``index`` to ``index + 1``, (H, W, 2) float32 (dx, dy); KeyError for the
        last frame."""
        index = self._check_index(index)
        if index == self._frames - 1:
            raise KeyError(f"stream video {self.name!r}: frame {index} is the last frame and has no flow")
        if index not in self._flows:
            self._render(index, with_flow=True)
        return self._flows[index].copy()


class _StreamNames(Sequence):
    """``stream_0000000``, ``stream_0000001``, ...: the names of a stream, without a list of them in memory."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(f"stream index {index} out of range for {self._count} videos")
        return f"stream_{index % self._count:07d}"


class ToyVOSStream(VideoCollection):
    """``videos`` fresh ToyVOS videos, rendered in memory when used (see the module docstring).

    Arguments (keyword-only):
        videos: how many distinct videos the stream holds (its length; ClipDataset takes one clip per video and
            epoch by default). Names are ``stream_0000000`` ...
        frames: frames per video: the window clips are sampled from (ToyVOS's 24 by default).
        size: (H, W) of the frames, ToyVOS's 192x192 by default.
        seed: the stream's seed; video ``i`` depends only on (seed, i) and the arguments above.
        jpeg_quality: JPEG-encode and decode each frame as ``voszoo-toyvos`` stores it (None: the raw rendering).
        cache_videos: rendered videos kept per process (a clip reads its frames in a burst, so 2 is enough).
    """

    def __init__(
        self,
        *,
        videos: int = 100_000,
        frames: int = 24,
        size: Sequence[int] = (192, 192),
        seed: int = 0,
        jpeg_quality: int | None = JPEG_QUALITY,
        cache_videos: int = 2,
    ) -> None:
        if videos < 1:
            raise ValueError(f"ToyVOSStream: videos must be >= 1, got {videos}")
        if frames < 2:
            raise ValueError(f"ToyVOSStream: frames must be >= 2, got {frames}")
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"ToyVOSStream: size must be (H, W) with both >= 32, got {list(size)}")
        if seed < 0:
            raise ValueError(f"ToyVOSStream: seed must be >= 0, got {seed}")
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
            raise ValueError(f"ToyVOSStream: jpeg_quality must be in 1..100 or None, got {jpeg_quality}")
        if cache_videos < 1:
            raise ValueError(f"ToyVOSStream: cache_videos must be >= 1, got {cache_videos}")
        self.num_videos = int(videos)
        self.frames = int(frames)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.jpeg_quality = jpeg_quality
        self._names = _StreamNames(self.num_videos)
        self._cache: OrderedDict[str, ToyVOSStreamVideo] = OrderedDict()
        self._cache_videos = int(cache_videos)

    @property
    def sequences(self) -> Sequence[str]:
        return self._names

    def _index_of(self, name: str) -> int:
        prefix = "stream_"
        digits = name[len(prefix) :] if name.startswith(prefix) else ""
        if not digits.isdigit() or int(digits) >= self.num_videos:
            raise KeyError(f"ToyVOSStream: no video {name!r}; names are stream_0000000 .. {self._names[-1]}")
        return int(digits)

    def video(self, name: str) -> ToyVOSStreamVideo:
        """Video ``name`` (``stream_<index>``), its scene sampled now and its frames rendered when read."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        index = self._index_of(name)
        layers, _ = sample_video(_stream_rng(self.seed, index), frames=self.frames, size=self.size)
        video = ToyVOSStreamVideo(
            name, layers=layers, frames=self.frames, size=self.size, jpeg_quality=self.jpeg_quality
        )
        self._cache[name] = video
        while len(self._cache) > self._cache_videos:
            self._cache.popitem(last=False)
        return video

    def __len__(self) -> int:
        return self.num_videos

    def __repr__(self) -> str:
        return (
            f"ToyVOSStream(videos={self.num_videos}, frames={self.frames}, size={list(self.size)}, seed={self.seed}, "
            f"jpeg_quality={self.jpeg_quality})"
        )


class StreamFirstFrames:
    """The first frame and labels of every video of a :class:`ToyVOSStream`, as the image source of
    :class:`voszoo.data.static.StaticClipDataset` (the static-image pre-training stage on ToyVOS frames).

    Offers what that dataset reads: ``names``, ``len()`` and ``read(i) -> (image (H, W, 3) uint8, labels (H, W)
    uint8)``.
    """

    def __init__(self, *, stream: ToyVOSStream) -> None:
        self.stream = stream

    @property
    def names(self) -> Sequence[str]:
        return self.stream.sequences

    def __len__(self) -> int:
        return len(self.stream)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        video = self.stream.video(self.stream.sequences[index])
        return video.frame(0), video.labels(0)

    def __repr__(self) -> str:
        return f"StreamFirstFrames({self.stream!r})"
