"""Masks drawn on frames: every labelled pixel blended with its object's DAVIS palette colour."""

from __future__ import annotations

import numpy as np

from voszoo.data.io import DAVIS_PALETTE

__all__ = ["DEFAULT_ALPHA", "overlay_labels", "side_by_side"]

DEFAULT_ALPHA = 0.5
"""Weight of the palette colour in a labelled pixel (the frame keeps ``1 - alpha``)."""


def overlay_labels(
    frame: np.ndarray, labels: np.ndarray | None, *, alpha: float = DEFAULT_ALPHA, palette: np.ndarray = DAVIS_PALETTE
) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 with every pixel of label k > 0 (255, void, included) replaced by
    ``(1 - alpha) * frame + alpha * palette[k]`` rounded half up; background (0) pixels are left as they are. ``labels``
    (H, W) integer, or None (the frame unchanged: e.g. a frame without ground truth). Returns (H, W, 3) uint8."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"overlay_labels: frame must be (H, W, 3), got shape {frame.shape}")
    if labels is None:
        return frame.astype(np.uint8, copy=True)
    labels = np.asarray(labels)
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"overlay_labels: labels shape {labels.shape} does not match frame shape {frame.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_labels: alpha must lie in [0, 1], got {alpha}")
    colours = np.asarray(palette, dtype=np.float64)[labels.astype(np.int64)]
    blended = np.floor((1.0 - alpha) * frame.astype(np.float64) + alpha * colours + 0.5)
    return np.where((labels > 0)[..., None], blended, frame).astype(np.uint8)


def side_by_side(panels: list[np.ndarray], *, gap: int = 4, fill: int = 255) -> np.ndarray:
    """(H, W, 3) panels of one height placed left to right with ``gap`` columns of ``fill`` between them."""
    if not panels:
        raise ValueError("side_by_side: no panels")
    height = panels[0].shape[0]
    pieces: list[np.ndarray] = []
    for index, panel in enumerate(panels):
        if panel.shape[0] != height:
            raise ValueError(f"side_by_side: panel {index} has height {panel.shape[0]}, panel 0 has {height}")
        if index:
            pieces.append(np.full((height, gap, 3), fill, dtype=np.uint8))
        pieces.append(panel.astype(np.uint8, copy=False))
    return np.concatenate(pieces, axis=1)
