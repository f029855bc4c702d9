"""One animation per video: MP4 through imageio's ffmpeg plugin when ``imageio-ffmpeg`` is installed, else an animated
GIF (through imageio's Pillow plugin, or Pillow itself when imageio is not installed: ``pip install voszoo[viz]``)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "choose_format", "write_animation"]

logger = logging.getLogger("voszoo.viz")

FORMATS = ("auto", "mp4", "gif")
_said_gif = False


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_format(requested: str = "auto") -> str:
    """``"mp4"`` or ``"gif"``: ``auto`` is MP4 when imageio and imageio-ffmpeg are installed, else GIF (said once in
    the log); ``mp4`` without them raises a ``UserError`` naming the extra to install."""
    from voszoo.errors import UserError

    global _said_gif
    if requested not in FORMATS:
        raise UserError(f"unknown animation format {requested!r}; valid: {', '.join(FORMATS)}")
    can_mp4 = _has("imageio") and _has("imageio_ffmpeg")
    if requested == "mp4" and not can_mp4:
        raise UserError("MP4 animations need imageio and imageio-ffmpeg", hint="pip install imageio imageio-ffmpeg")
    if requested == "auto":
        if can_mp4:
            return "mp4"
        if not _said_gif:
            logger.info("imageio-ffmpeg is not installed: animations are GIFs (pip install imageio-ffmpeg for MP4)")
            _said_gif = True
        return "gif"
    return requested


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad H and W to even sizes (H.264 in yuv420p needs them) by repeating the last row / column."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frame


def write_animation(frames: Sequence[np.ndarray], stem: str | Path, *, fps: float = 10.0, fmt: str = "auto") -> Path:
    """Write ``frames`` ((H, W, 3) uint8, all one size) as ``<stem>.mp4`` or ``<stem>.gif`` (:func:`choose_format`)
    looping at ``fps``; creates the parent folder and returns the path written."""
    if not frames:
        raise ValueError(f"write_animation({stem}): no frames")
    if fps <= 0:
        raise ValueError(f"write_animation({stem}): fps must be positive, got {fps}")
    kind = choose_format(fmt)
    path = Path(stem).with_suffix(f".{kind}")
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack([np.asarray(frame, dtype=np.uint8) for frame in frames])
    if kind == "mp4":
        import imageio.v2 as imageio

        with imageio.get_writer(
            path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
        ) as writer:
            for frame in stack:
                writer.append_data(_even(frame))
        return path
    duration_ms = max(20, round(1000.0 / fps))  # browsers treat GIF delays under 20 ms as 100 ms
    if _has("imageio"):
        import imageio.v3 as iio

        iio.imwrite(path, stack, plugin="pillow", extension=".gif", duration=duration_ms, loop=0)
        return path
    from PIL import Image

    images = [Image.fromarray(frame) for frame in stack]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path
