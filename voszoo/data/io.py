"""Image and label-map file I/O shared by the datasets, ToyVOS, the evaluator and the packers.

Every reader raises :class:`VOSDataError` naming the file and what is wrong, so that a bad file never
surfaces as a crash deep inside numpy or PIL.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from voszoo.errors import UserError
from voszoo.fileio import atomic_write_bytes

__all__ = [
    "VOSDataError",
    "DAVIS_PALETTE",
    "open_image",
    "read_image",
    "read_labels",
    "write_labels",
    "atomic_write_bytes",
]


class VOSDataError(UserError, ValueError):
    """A dataset file, folder or value is missing or malformed; the message names it and says what is wrong."""


def _davis_palette() -> np.ndarray:
    """The 256-colour PASCAL VOC / DAVIS palette (bit-interleaved RGB of the label index), shape (256, 3) uint8."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (r, g, b)
    return palette


DAVIS_PALETTE: np.ndarray = _davis_palette()
"""(256, 3) uint8: colour of label k is DAVIS_PALETTE[k]; label 0 is black, 255 (void) is (224, 224, 192)."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file (PIL), raising VOSDataError naming the file if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise VOSDataError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()  # decode now so that truncated files fail here, with the file named
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise VOSDataError(f"{path}: unreadable or truncated image ({error})") from error
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB frame. Returns (H, W, 3) uint8."""
    return np.asarray(open_image(path).convert("RGB"))


def read_labels(path: str | os.PathLike, *, max_label: int | None = None) -> np.ndarray:
    """Read a label map (palette PNG: pixel value = object id; 0 background, 255 void). Returns (H, W) uint8.

    Greyscale ("L") files are taken as label indices too. RGB files are rejected: their colours would have to be
    matched to a palette, which is ambiguous. ``max_label`` rejects values above it other than 255 (void).
    """
    path = Path(path)
    image = open_image(path)
    if image.mode in ("P", "L"):
        labels = np.asarray(image, dtype=np.uint8)
    elif image.mode in ("1", "I", "I;16"):
        labels = np.asarray(image).astype(np.int64)
        if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
            raise VOSDataError(f"{path}: label values must lie in 0..255, found {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    else:
        raise VOSDataError(f"{path}: expected a palette (P) or greyscale (L) label PNG, got mode {image.mode!r}")
    if max_label is not None:
        bad = np.setdiff1d(np.unique(labels), np.r_[np.arange(max_label + 1), 255])
        if bad.size:
            raise VOSDataError(f"{path}: label values {bad.tolist()} exceed the {max_label} objects this file may hold")
    return labels


def write_labels(path: str | os.PathLike, labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> None:
    """Write a (H, W) integer label map as a palette PNG (values 0..255), creating parent folders.

    The file is written atomically, so an interrupted evaluation never leaves a truncated PNG that a resumed run
    would then trust."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"write_labels({path}): labels must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"write_labels({path}): label values must lie in 0..255, got {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
