"""A run's overlays on disk: per video, PNG frames (prediction left, ground truth right) and one animation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from voszoo.data.io import read_labels
from voszoo.errors import UserError
from voszoo.viz.animation import write_animation
from voszoo.viz.overlay import DEFAULT_ALPHA, overlay_labels, side_by_side
from voszoo.viz.runs import EvalRun

__all__ = ["render_run", "render_video"]


def _fit(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels resized (nearest) to (H, W) ``size`` if they differ (a run evaluated with ``short_side``)."""
    if labels.shape == size:
        return labels
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def render_video(
    run: EvalRun,
    name: str,
    out_dir: Path,
    *,
    fps: float = 10.0,
    fmt: str = "auto",
    alpha: float = DEFAULT_ALPHA,
    ground_truth: bool = True,
) -> Path:
    """Write ``out_dir/<name>/<frame>.png`` for every predicted frame of video ``name`` of ``run`` (the prediction
    overlaid on the frame; with ``ground_truth``, the ground truth beside it where the frame has one, else the bare
    frame) and ``out_dir/<name>.mp4|gif``; returns the animation's path."""
    collection = run.collection()
    try:
        video = collection.video(name)
    except KeyError as error:
        raise UserError(
            f"{run.predictions / name}: video {name!r} is not in the dataset the run records",
            hint="pass --data-root if the dataset has moved, or a run of this dataset",
        ) from error
    index_of = {frame: index for index, frame in enumerate(video.frame_names)}
    annotated = set(video.annotated_indices)
    predicted = sorted(path for path in (run.predictions / name).glob("*.png") if path.stem in index_of)
    if not predicted:
        raise UserError(f"{run.predictions / name}: no predicted PNG named after a frame of video {name!r}")
    frames_dir = out_dir / name
    frames_dir.mkdir(parents=True, exist_ok=True)
    composed = []
    for path in predicted:
        index = index_of[path.stem]
        frame = video.frame(index)
        size = frame.shape[:2]
        panels = [overlay_labels(frame, _fit(read_labels(path), size), alpha=alpha)]
        if ground_truth:
            truth = _fit(video.labels(index), size) if index in annotated else None
            panels.append(overlay_labels(frame, truth, alpha=alpha))
        image = side_by_side(panels)
        Image.fromarray(image).save(frames_dir / f"{path.stem}.png")
        composed.append(image)
    return write_animation(composed, out_dir / name, fps=fps, fmt=fmt)


def render_run(
    run: EvalRun,
    out_dir: str | Path,
    *,
    sequences: list[str] | None = None,
    fps: float = 10.0,
    fmt: str = "auto",
    alpha: float = DEFAULT_ALPHA,
    ground_truth: bool = True,
    progress: bool = True,
    desc: str = "overlays",
) -> dict[str, Path]:
    """:func:`render_video` for ``sequences`` (default: every predicted one) into ``out_dir``, with a progress bar;
    returns {sequence: animation path}."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    names = run.sequences if sequences is None else sequences
    animations = {}
    for name in tqdm(names, desc=desc, unit="video", disable=None if progress else True):
        animations[name] = render_video(run, name, out_dir, fps=fps, fmt=fmt, alpha=alpha, ground_truth=ground_truth)
    return animations
