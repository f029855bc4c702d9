"""YouTube-VOS 2018 / 2019 reader (evaluation side): a lazy :class:`~voszoo.data.video.VideoCollection`.

Layout (``<split>`` is ``train``, ``valid`` or ``test``)::

    root/<split>/JPEGImages/<video>/00000.jpg 00005.jpg ...   every 5th frame of the original video
    root/<split>/Annotations/<video>/00000.png ...            palette PNGs, value = object id
    root/<split>/meta.json        {"videos": {video: {"objects": {"1": {"category": "cat", "frames": ["00000", ...]}}}}}
    root/<split>_all_frames/JPEGImages/<video>/00000.jpg 00001.jpg ...   every frame (``all_frames=True``)

Semantics:

- Annotations are sparse. ``annotated_indices`` are the frames with a label file: every frame of ``train`` (so every
  5th original frame, and every 5th index with ``all_frames``), and in ``valid`` / ``test`` only the frames where an
  object first appears. A ``valid`` label map holds the objects that first appear in it (later objects are 0 there).
- ``first_appearance`` comes from meta.json: the first frame of each object's ``frames`` list, mapped to its index in
  the frame list (which differs with ``all_frames``). Objects may first appear mid-video; the inference session must
  add them at that frame. When built, a video checks that each such frame exists and has a label file; when a label
  map is read, it checks that its values are objects of meta.json (or 0, or 255 = void), that the objects meta.json
  says first appear there are in it, and that no object is in it before its first appearance.
- Constructing the collection reads meta.json and lists folders only; images are decoded on demand, nothing is cached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voszoo.data.folders import (
    FolderVideo,
    check_choice,
    check_listed,
    frame_sort_key,
    list_subfolders,
    require_dir,
    shorten,
    unknown_name,
)
from voszoo.data.io import VOSDataError
from voszoo.data.video import VideoCollection

__all__ = ["YouTubeVOS", "YouTubeVOSVideo", "YTVOS_YEARS", "YTVOS_SPLITS", "read_meta"]

YTVOS_YEARS: tuple[str, ...] = ("2018", "2019")
YTVOS_SPLITS: tuple[str, ...] = ("train", "valid", "test")


def read_meta(path: Path) -> dict[str, Any]:
    """The ``videos`` mapping of a YouTube-VOS meta.json ({video id: {"objects": {...}}}), in file order.

    Raises VOSDataError naming the file if it is unreadable, not JSON, has no ``videos`` mapping, or lists no video.
    """
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VOSDataError(f"{path}: unreadable meta file ({error})") from error
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise VOSDataError(
            f'{path}: expected {{"videos": {{<video id>: {{"objects": ...}}}}}}, found no "videos" mapping'
        )
    if not videos:
        raise VOSDataError(f"{path}: lists no videos")
    return videos


def _parse_objects(entry: Any, *, video: str, meta_path: Path) -> tuple[dict[int, str], dict[int, str | None]]:
    """({object id: first frame stem}, {object id: category}) of one meta.json video entry."""
    objects = entry.get("objects") if isinstance(entry, dict) else None
    if not isinstance(objects, dict):
        raise VOSDataError(f'{meta_path}: video {video!r} has no "objects" mapping')
    first: dict[int, str] = {}
    categories: dict[int, str | None] = {}
    for key, obj in objects.items():
        try:
            object_id = int(key)
        except ValueError:
            object_id = -1
        if not 1 <= object_id <= 254:
            raise VOSDataError(f"{meta_path}: video {video!r} has object id {key!r}; ids must be integers in 1..254")
        frames = obj.get("frames") if isinstance(obj, dict) else None
        if not isinstance(frames, list) or not frames or not all(isinstance(frame, str) for frame in frames):
            raise VOSDataError(
                f'{meta_path}: object {key} of video {video!r} needs a non-empty list of frame names under "frames"'
            )
        first[object_id] = min(frames, key=frame_sort_key)
        category = obj.get("category")
        categories[object_id] = category if isinstance(category, str) else None
    return dict(sorted(first.items())), dict(sorted(categories.items()))


class YouTubeVOSVideo(FolderVideo):
    """One YouTube-VOS video (see the module docstring).

    ``objects`` maps each object id to the stem of the frame where meta.json says it first appears; ``meta_path`` is
    named in errors. Raises VOSDataError when built if such a frame is not in ``frame_dir`` or has no label file.
    ``categories`` is {object id: category name or None}.
    """

    def __init__(
        self,
        name: str,
        *,
        frame_dir: Path,
        label_dir: Path,
        objects: Mapping[int, str],
        meta_path: Path,
        categories: Mapping[int, str | None] | None = None,
    ) -> None:
        super().__init__(name, frame_dir=frame_dir, label_dir=label_dir)
        self.meta_path = Path(meta_path)
        self.categories: dict[int, str | None] = dict(categories or {})
        first: dict[int, int] = {}
        for object_id, stem in sorted(objects.items()):
            where = f"{self.meta_path}: object {object_id} of video {name!r} first appears in frame {stem!r}"
            if stem not in self._index_by_stem:
                raise VOSDataError(f"{where}, which is not a frame in {self.frame_dir}")
            index = self._index_by_stem[stem]
            if index not in self._label_paths:
                raise VOSDataError(f"{where}, but its annotation {self.label_dir / (stem + '.png')} does not exist")
            first[object_id] = index
        self._first = first

    @property
    def first_appearance(self) -> dict[int, int]:
        """{object id: index of the frame where meta.json says it first appears} (no file is read)."""
        return dict(self._first)

    def labels(self, index: int) -> np.ndarray:
        """Label map of annotated frame ``index``: (H, W) uint8, 0 background, object ids of meta.json, 255 void.

        Raises KeyError if the frame has no label file; VOSDataError if the file is unreadable, its size differs from
        its frame's, or it disagrees with meta.json (unknown id, object before its first appearance, or an object
        missing from the frame where it first appears).
        """
        raw = self.read_label_file(index)
        path = self.label_path(index)
        present = [int(value) for value in np.unique(raw) if value not in (0, 255)]
        unknown = [value for value in present if value not in self._first]
        if unknown:
            raise VOSDataError(
                f"{path}: label values {unknown} are not objects of video {self.name!r} in {self.meta_path} "
                f"(objects: {shorten(list(self._first), limit=10) or 'none'})"
            )
        early = [value for value in present if self._first[value] > index]
        if early:
            later = ", ".join(f"{value} at frame {self._frame_names[self._first[value]]}" for value in early)
            raise VOSDataError(
                f"{path}: holds object(s) {early} before {self.meta_path} says they first appear ({later})"
            )
        absent = [value for value, first in self._first.items() if first == index and value not in present]
        if absent:
            raise VOSDataError(
                f"{path}: {self.meta_path} says object(s) {absent} of video {self.name!r} first appear in this frame, "
                "but the label map does not hold them"
            )
        return raw


class YouTubeVOS(VideoCollection):
    """A YouTube-VOS 2018/2019 split at ``root`` (see the module docstring for the layout and semantics).

    ``year`` is ``"2018"`` or ``"2019"`` (ints accepted; the layout is the same); ``split`` ``"train"``, ``"valid"``
    or ``"test"``. Unknown values raise ValueError listing the choices. With ``all_frames=True`` frames come from
    ``root/<split>_all_frames/JPEGImages`` and annotations still from ``root/<split>/Annotations``.

    Construction reads ``root/<split>/meta.json`` and checks that every video it lists has a frame folder and an
    annotation folder (VOSDataError naming the missing ones); no image is opened. Sequences are in meta.json order.
    """

    def __init__(
        self, root: str | os.PathLike, *, year: str = "2019", split: str = "valid", all_frames: bool = False
    ) -> None:
        year = str(year) if isinstance(year, int) else year
        self.year = check_choice("year", year, YTVOS_YEARS, owner="YouTubeVOS")
        self.split = check_choice("split", split, YTVOS_SPLITS, owner="YouTubeVOS")
        self.all_frames = all_frames
        self.root = require_dir(Path(root), what=f"YouTube-VOS root folder (year {year})")
        self.meta_path = self.root / split / "meta.json"
        if not self.meta_path.is_file():
            available = [name for name in list_subfolders(self.root) if (self.root / name / "meta.json").is_file()]
            raise VOSDataError(
                f"{self._title}: split {split!r} not found ({self.meta_path} does not exist); available splits in "
                f"{self.root}: {', '.join(available) or 'none (no <split>/meta.json)'}"
            )
        self._videos = read_meta(self.meta_path)
        self._sequences = list(self._videos)
        frame_split = f"{split}_all_frames" if all_frames else split
        hint = f"all_frames=True reads frames from {frame_split}/JPEGImages (the {frame_split} download)"
        self.frame_root = require_dir(
            self.root / frame_split / "JPEGImages", what="YouTube-VOS frame folder", hint=hint if all_frames else ""
        )
        self.label_root = require_dir(self.root / split / "Annotations", what="YouTube-VOS annotation folder")
        check_listed(self._sequences, self.frame_root, listed_in=self.meta_path)
        check_listed(self._sequences, self.label_root, listed_in=self.meta_path)

    @property
    def _title(self) -> str:
        return f"YouTube-VOS {self.year} {self.split}{' (all frames)' if self.all_frames else ''}"

    @property
    def sequences(self) -> Sequence[str]:
        return tuple(self._sequences)

    def video(self, name: str) -> YouTubeVOSVideo:
        """The video ``name`` (parses its meta.json entry, lists its folders; opens no image). KeyError if unknown."""
        if name not in self._videos:
            raise unknown_name(name, self._sequences, collection=self._title)
        objects, categories = _parse_objects(self._videos[name], video=name, meta_path=self.meta_path)
        return YouTubeVOSVideo(
            name,
            frame_dir=self.frame_root / name,
            label_dir=self.label_root / name,
            objects=objects,
            meta_path=self.meta_path,
            categories=categories,
        )

    def __repr__(self) -> str:
        return (
            f"YouTubeVOS(root={str(self.root)!r}, year={self.year!r}, split={self.split!r}, "
            f"all_frames={self.all_frames}, sequences={len(self)})"
        )
