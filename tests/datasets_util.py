"""Builders of tiny synthetic VOS datasets on disk, in the real layouts, for tests (import as ``datasets_util``).

Every builder is deterministic and returns the dataset root. The content is defined by two pure functions that tests
use as the expected values:

- :func:`object_labels` ``(t, ids, size=, slots=)``: object ``k`` is a filled rectangle in the ``k``-th of ``slots``
  vertical bands, whose rows shift with ``t``; objects never overlap and each covers at least 4 pixels.
- :func:`frame_image` ``(t, labels)``: an RGB frame whose colour depends on the label and ``t`` (saved as JPEG, so it
  is compared with a tolerance or with an independent decode of the file).

Example::

    root = make_davis(tmp_path / "davis", sequences={"bear": (4, 2)})          # 4 frames, objects 1 and 2
    root = make_youtube_vos(tmp_path / "yt", split="valid", videos={"v": (16, {1: 0, 2: 10})}, all_frames=True)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from voszoo.data.io import write_labels

__all__ = [
    "object_labels",
    "frame_image",
    "toy_flow",
    "youtube_vos_labels",
    "make_davis",
    "make_toyvos",
    "make_youtube_vos",
]


def object_labels(t: int, object_ids: Iterable[int], *, size: tuple[int, int], slots: int) -> np.ndarray:
    """(H, W) uint8 label map at time ``t`` holding ``object_ids`` (each in 1..slots): id k fills rows
    ``[r, r + H // 2)`` with ``r = (t + k) % (H - H // 2 + 1)`` and columns ``[(k - 1) * b + 1, k * b - 1)``,
    ``b = W // slots``."""
    height, width = size
    band = width // slots
    if band < 3 or height < 4:
        raise ValueError(f"object_labels: size {size} is too small for {slots} objects (need W >= 3 * slots, H >= 4)")
    labels = np.zeros(size, dtype=np.uint8)
    rows = max(2, height // 2)
    for k in object_ids:
        if not 1 <= k <= slots:
            raise ValueError(f"object_labels: object id {k} outside 1..{slots}")
        top = (t + k) % (height - rows + 1)
        labels[top : top + rows, (k - 1) * band + 1 : k * band - 1] = k
    return labels


def frame_image(t: int, labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame: a horizontal grey ramp plus a per-object colour that depends on ``t``."""
    height, width = labels.shape
    ramp = np.linspace(20, 120, width, dtype=np.float64)[None, :].repeat(height, axis=0)
    image = np.stack([ramp, ramp, ramp], axis=-1)
    for k in np.unique(labels):
        if k == 0:
            continue
        colour = np.array([(70 * int(k) + 10 * t) % 256, 200 - 30 * int(k) % 200, 100 + 40 * int(k) % 156])
        image[labels == k] = colour
    return image.clip(0, 255).astype(np.uint8)


def toy_flow(t: int, *, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) float32 flow from frame t to t + 1 written by :func:`make_toyvos`: x = t + 0.5, y = -column/4."""
    height, width = size
    flow = np.empty((height, width, 2), dtype=np.float32)
    flow[..., 0] = t + 0.5
    flow[..., 1] = -np.arange(width, dtype=np.float32)[None, :] / 4
    return flow


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def make_davis(
    root: str | Path,
    *,
    sequences: Mapping[str, tuple[int, int]],
    size: tuple[int, int] = (24, 32),
    year: str = "2017",
    split: str = "val",
    resolution: str = "480p",
    first_frame_only: bool = False,
) -> Path:
    """Write a DAVIS dataset: ``sequences`` maps name -> (number of frames, number of objects K, all in every frame).

    Frames ``JPEGImages/<resolution>/<seq>/%05d.jpg``; labels ``Annotations/<resolution>/<seq>/%05d.png`` equal to
    ``object_labels(t, 1..K, size=size, slots=K)`` (2017: palette PNG of ids; 2016: greyscale 0/255 of their union);
    only frame 0 is labelled if ``first_frame_only`` (test-dev). The split file lists ``sequences`` in order:
    ``ImageSets/2017/<split>.txt`` (names) for 2017, ``ImageSets/<resolution>/<split>.txt`` (frame/annotation pairs, as
    DAVIS 2016 ships them) for 2016. Calling again with another split adds that split file to the same root.
    """
    root = Path(root)
    lines = []
    for name, (num_frames, num_objects) in sequences.items():
        for t in range(num_frames):
            stem = f"{t:05d}"
            labels = object_labels(t, range(1, num_objects + 1), size=size, slots=max(num_objects, 1))
            _save_jpeg(root / "JPEGImages" / resolution / name / f"{stem}.jpg", frame_image(t, labels))
            label_path = root / "Annotations" / resolution / name / f"{stem}.png"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            if t == 0 or not first_frame_only:
                if str(year) == "2016":
                    Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8)).save(label_path)
                else:
                    write_labels(label_path, labels)
            lines.append(f"/JPEGImages/{resolution}/{name}/{stem}.jpg /Annotations/{resolution}/{name}/{stem}.png")
    if str(year) == "2016":
        split_file = root / "ImageSets" / resolution / f"{split}.txt"
    else:
        split_file = root / "ImageSets" / "2017" / f"{split}.txt"
        lines = list(sequences)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(lines) + "\n")
    return root


def make_toyvos(
    root: str | Path, *, sequences: Mapping[str, tuple[int, int]], size: tuple[int, int] = (24, 32), split: str = "val"
) -> Path:
    """:func:`make_davis` (2017, 480p) plus ``Flow/<seq>/%05d.npy`` = :func:`toy_flow` for every frame but the last."""
    root = make_davis(root, sequences=sequences, size=size, split=split)
    for name, (num_frames, _) in sequences.items():
        folder = root / "Flow" / name
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames - 1):
            np.save(folder / f"{t:05d}.npy", toy_flow(t, size=size))
    return root


def youtube_vos_labels(t: int, first: Mapping[int, int], *, size: tuple[int, int], only_new: bool) -> np.ndarray:
    """The label map :func:`make_youtube_vos` writes at original frame ``t`` of a video whose object k first appears
    at original frame ``first[k]``: the objects present at ``t`` (``first[k] <= t``), or with ``only_new`` (valid/test)
    only those with ``first[k] == t``; drawn by :func:`object_labels` with ``slots = max id``."""
    ids = [k for k, start in first.items() if (start == t if only_new else start <= t)]
    return object_labels(t, sorted(ids), size=size, slots=max(first, default=1))


def make_youtube_vos(
    root: str | Path,
    *,
    split: str = "valid",
    videos: Mapping[str, tuple[int, Mapping[int, int]]],
    size: tuple[int, int] = (24, 32),
    step: int = 5,
    all_frames: bool = False,
) -> Path:
    """Write one YouTube-VOS split: ``videos`` maps name -> (original frame count N, {object id: first frame}).

    ``<split>/JPEGImages/<video>/%05d.jpg`` holds original frames 0, step, 2 * step, ... < N (stems are the original
    frame numbers); with ``all_frames`` ``<split>_all_frames/JPEGImages/<video>`` holds all N. First appearances must be
    multiples of ``step``. Annotations (``youtube_vos_labels``): ``train`` labels every sub-sampled frame with the
    objects present; ``valid`` / ``test`` label only first-appearance frames, with only the new objects.
    ``<split>/meta.json`` lists, per object, category ``"thing<k>"`` and the sub-sampled frames from its first one on.
    """
    root = Path(root)
    meta: dict[str, dict] = {"videos": {}}
    for name, (num_frames, first) in videos.items():
        bad = {k: start for k, start in first.items() if start % step or not 0 <= start < num_frames}
        if bad:
            raise ValueError(f"make_youtube_vos: first appearances {bad} of {name!r} are not sub-sampled frames")
        sampled = list(range(0, num_frames, step))
        for t in range(num_frames):
            image = frame_image(t, youtube_vos_labels(t, first, size=size, only_new=False))
            if t in sampled:
                _save_jpeg(root / split / "JPEGImages" / name / f"{t:05d}.jpg", image)
            if all_frames:
                _save_jpeg(root / f"{split}_all_frames" / "JPEGImages" / name / f"{t:05d}.jpg", image)
        label_dir = root / split / "Annotations" / name
        label_dir.mkdir(parents=True, exist_ok=True)
        for t in sampled:
            if split == "train" or t in first.values():
                labels = youtube_vos_labels(t, first, size=size, only_new=split != "train")
                write_labels(label_dir / f"{t:05d}.png", labels)
        meta["videos"][name] = {
            "objects": {
                str(k): {"category": f"thing{k}", "frames": [f"{t:05d}" for t in sampled if t >= start]}
                for k, start in first.items()
            }
        }
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / "meta.json").write_text(json.dumps(meta, indent=1))
    return root
