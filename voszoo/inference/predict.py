"""Predict whole videos and datasets: the copy-first-frame baseline and any model through an InferenceSession.

Both predictors yield one (H, W) label map per frame of a :class:`VideoSource`, so the evaluator, the CLI and the
leaderboard treat a trained model and the baseline alike. Semi-supervised input is taken from the video itself: the
label maps of the frames in ``video.first_appearance`` (frame 0 for DAVIS, later frames too for YouTube-VOS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from voszoo.data.io import write_labels
from voszoo.data.video import VideoCollection, VideoSource
from voszoo.errors import naming_file
from voszoo.memory import MemoryPolicy

__all__ = [
    "VideoPredictor",
    "CopyFirstFrame",
    "SessionPredictor",
    "PredictionStats",
    "log_video_done",
    "predict_collection",
]

logger = logging.getLogger(__name__)


class VideoPredictor(Protocol):
    name: str

    def predict(self, video: VideoSource) -> Iterator[np.ndarray]:
        """Yield a (H, W) integer label map for every frame of ``video``, in order."""
        ...


def _reference_masks(video: VideoSource, index: int) -> np.ndarray | None:
    """Label map of the objects that first appear on frame ``index`` (others zeroed), or None if none do."""
    new_ids = [obj for obj, first in video.first_appearance.items() if first == index]
    if not new_ids:
        return None
    labels = video.labels(index)
    return np.where(np.isin(labels, new_ids), labels, 0).astype(np.uint8)


class CopyFirstFrame:
    """Baseline: every frame's prediction is the reference mask of each object (objects appearing later are pasted
    over the running label map from their first frame on)."""

    name = "copy_first_frame"

    def predict(self, video: VideoSource) -> Iterator[np.ndarray]:
        current = np.zeros(video.size, dtype=np.uint8)
        for index in range(video.num_frames):
            given = _reference_masks(video, index)
            if given is not None:
                current = np.where(given > 0, given, current)
            yield current.copy()


class SessionPredictor:
    """A model run through a fresh :class:`InferenceSession` per video (keyword arguments go to the session)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        policy_factory: Callable[[], MemoryPolicy],
        **session_kwargs,
    ) -> None:
        self.model = model
        self.name = name
        self.policy_factory = policy_factory
        self.session_kwargs = session_kwargs

    def check_video(self, video: VideoSource) -> None:
        """Raise VOSDataError naming the first frame's file if ``video``'s frames are too small for the model's
        stride (after the session's protocol, e.g. its ``short_side`` resize): found from the frame size, before any
        forward."""
        from voszoo.data.io import VOSDataError
        from voszoo.inference.protocols import resolve_protocol

        stride = int(getattr(self.model, "stride", 1))
        short_side = self.session_kwargs.get("short_side")
        protocol = resolve_protocol(self.session_kwargs.get("protocol"), model=self.model, short_side=short_side)
        try:
            protocol.prepare(video.size, stride=stride)
        except ValueError as error:
            where = video.frame_path(0) if hasattr(video, "frame_path") else f"video {video.name!r}"
            hint = f"resize the frames with short_side={2 * stride} or more, or leave this video out"
            raise VOSDataError(f"{where}: {error}", hint=hint) from error

    def predict(self, video: VideoSource) -> Iterator[np.ndarray]:
        from voszoo.inference.session import InferenceSession

        self.check_video(video)
        session = InferenceSession(self.model, policy_factory=self.policy_factory, **self.session_kwargs)
        for index in range(video.num_frames):
            yield session.step(video.frame(index), _reference_masks(video, index)).labels


@dataclass
class PredictionStats:
    """Frames and wall-clock seconds per video (prediction only, PNG writing excluded)."""

    frames: dict[str, int]
    seconds: dict[str, float]

    @property
    def fps(self) -> float:
        total = sum(self.seconds.values())
        return sum(self.frames.values()) / total if total > 0 else float("inf")


def log_video_done(predictor: str, *, index: int, total: int, name: str, frames: int, seconds: float) -> None:
    """One INFO line per predicted video (``predict stm: video 3/30 bear: 82 frames, 13.4 FPS``): the progress that a
    log file and a batch job's output show, where no progress bar is drawn."""
    fps = frames / max(seconds, 1e-9)
    logger.info("predict %s: video %d/%d %s: %d frames, %.1f FPS", predictor, index, total, name, frames, fps)


def predict_collection(
    predictor: VideoPredictor,
    collection: VideoCollection,
    out_dir: str | Path,
    *,
    sequences: list[str] | None = None,
    progress: bool = True,
    log_videos: bool = True,
) -> PredictionStats:
    """Predict every video of ``collection`` and write ``out_dir/<seq>/<frame>.png`` palette label maps.

    ``progress`` shows a bar on a terminal; ``log_videos`` logs a line per video (:func:`log_video_done`), which
    the bar keeps above itself.
    """
    out_dir = Path(out_dir)
    names = list(sequences) if sequences is not None else list(collection.sequences)
    stats = PredictionStats(frames={}, seconds={})
    bar = tqdm(names, desc=f"predict {predictor.name}", unit="video", disable=None if progress else True)
    # on a terminal, console log lines go through tqdm.write so that they do not break the bar; files are untouched
    with logging_redirect_tqdm() if not bar.disable else nullcontext():
        for index, name in enumerate(bar, start=1):
            frames, elapsed = _predict_video(predictor, collection.video(name), out_dir / name)
            stats.frames[name], stats.seconds[name] = frames, elapsed
            bar.set_postfix(fps=f"{frames / max(elapsed, 1e-9):.1f}")
            if log_videos:
                log_video_done(predictor.name, index=index, total=len(names), name=name, frames=frames, seconds=elapsed)
    return stats


def _predict_video(predictor: VideoPredictor, video: VideoSource, out_dir: Path) -> tuple[int, float]:
    """Predict one video into ``out_dir/<frame>.png``; returns (frames, seconds of prediction, writing excluded)."""
    elapsed, outputs = 0.0, []
    iterator = predictor.predict(video)
    while True:
        start = time.perf_counter()
        labels = next(iterator, None)
        elapsed += time.perf_counter() - start
        if labels is None:
            break
        outputs.append(labels)
    for frame_name, labels in zip(video.frame_names, outputs, strict=True):
        path = out_dir / f"{frame_name}.png"
        with naming_file(path):
            write_labels(path, labels)
    return len(outputs), elapsed
