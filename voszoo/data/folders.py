"""Shared helpers for the folder-based readers (DAVIS, YouTube-VOS, ToyVOS).

:class:`FolderVideo` is a :class:`~voszoo.data.video.VideoSource` over one folder of frames and one folder of label
maps, matched by file stem. It lists both folders when built (cheap) and decodes an image only when asked for it; the
readers subclass it to add their label semantics and their ``first_appearance``. The functions validate arguments and
folders so that every problem surfaces as a :class:`~voszoo.data.io.VOSDataError` (or ``ValueError`` / ``KeyError``)
that names the file, folder or argument.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from voszoo.data.io import VOSDataError, read_image, read_labels
from voszoo.data.video import VideoSource

__all__ = [
    "FRAME_SUFFIXES",
    "LABEL_SUFFIXES",
    "FolderVideo",
    "check_choice",
    "check_listed",
    "format_size",
    "frame_sort_key",
    "image_size",
    "list_files",
    "list_subfolders",
    "require_dir",
    "shorten",
    "unknown_name",
]

FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
"""File suffixes taken as frames (case-insensitive)."""

LABEL_SUFFIXES: tuple[str, ...] = (".png",)
"""File suffixes taken as label maps (case-insensitive)."""


def check_choice(argument: str, value: str, choices: Sequence[str], *, owner: str) -> str:
    """Return ``value`` if it is in ``choices``, else raise ValueError naming the argument and the choices."""
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{owner}: unknown {argument} {value!r}; valid choices: {valid}")
    return value


def shorten(names: Sequence[str], *, limit: int = 5) -> str:
    """The first ``limit`` of ``names`` joined by commas, with ``", ..."`` if there are more."""
    return ", ".join(str(name) for name in names[:limit]) + (", ..." if len(names) > limit else "")


def unknown_name(name: str, names: Sequence[str], *, collection: str) -> KeyError:
    """A KeyError for a sequence ``name`` that ``collection`` does not hold, listing a few valid names."""
    if not names:
        return KeyError(f"{collection} has no sequence {name!r}: it holds no sequences")
    return KeyError(f"{collection} has no sequence {name!r}; it holds {len(names)} sequences: {shorten(names)}")


def check_listed(names: Sequence[str], folder: Path, *, listed_in: Path) -> None:
    """Raise VOSDataError naming the sequences of ``names`` (listed in file ``listed_in``) with no sub-folder of
    ``folder``. Lists ``folder`` once."""
    present = set(list_subfolders(folder))
    missing = [name for name in names if name not in present]
    if missing:
        raise VOSDataError(
            f"{listed_in} lists {len(missing)} sequence(s) with no folder in {folder}: {shorten(missing)}"
        )


def require_dir(path: Path, *, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a folder, else raise VOSDataError ``"<what> <path> does not exist"`` (+ ``hint``)."""
    path = Path(path)
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise VOSDataError(f"{what} {path} {problem}{'; ' + hint if hint else ''}")
    return path


def list_subfolders(path: Path) -> list[str]:
    """Names of the sub-folders of ``path`` (sorted); empty if ``path`` is not a folder."""
    try:
        with os.scandir(path) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def frame_sort_key(stem: str) -> tuple[int, int, str]:
    """Temporal order of frame stems: purely numeric stems by value (``"9" < "10"``), then the rest by name."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def list_files(folder: Path, *, suffixes: Iterable[str], what: str) -> dict[str, Path]:
    """{stem: path} of the files in ``folder`` whose suffix is in ``suffixes``, in frame order (:func:`frame_sort_key`).

    Hidden files (leading dot) are ignored. Raises VOSDataError if ``folder`` is missing or two files share a stem.
    """
    folder = require_dir(folder, what=what)
    wanted = {suffix.lower() for suffix in suffixes}
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or path.suffix.lower() not in wanted or not entry.is_file():
                continue
            if path.stem in found:
                raise VOSDataError(
                    f"{what} {folder}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}"
                )
            found[path.stem] = path
    return {stem: found[stem] for stem in sorted(found, key=frame_sort_key)}


def format_size(size: tuple[int, int]) -> str:
    """``(H, W)`` as ``"HxW"``."""
    return f"{size[0]}x{size[1]}"


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels. Raises VOSDataError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise VOSDataError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise VOSDataError(f"{path}: unreadable image ({error})") from error
    return height, width


class FolderVideo(VideoSource):
    """Frames from ``frame_dir`` and label maps from ``label_dir``, matched by file stem.

    Built by listing both folders (no image is opened). Frames are every file in ``frame_dir`` with a suffix in
    :data:`FRAME_SUFFIXES`, in :func:`frame_sort_key` order; annotated frames are those with a ``<stem>.png`` in
    ``label_dir`` (a missing ``label_dir`` means no annotated frame). Raises VOSDataError if there is no frame or if a
    label file has no frame of the same stem. ``size`` is read from the first frame's header; :meth:`frame` checks every
    frame against it and :meth:`read_label_file` checks every label map against its own frame.

    Subclasses implement :meth:`labels` (with their label semantics) and ``first_appearance``.
    """

    def __init__(self, name: str, *, frame_dir: Path, label_dir: Path) -> None:
        self.name = name
        self.frame_dir = Path(frame_dir)
        self.label_dir = Path(label_dir)
        frames = list_files(self.frame_dir, suffixes=FRAME_SUFFIXES, what=f"frame folder of {name!r}")
        if not frames:
            suffixes = ", ".join(FRAME_SUFFIXES)
            raise VOSDataError(f"frame folder {self.frame_dir} of sequence {name!r} holds no frames ({suffixes})")
        labels = {}
        if self.label_dir.is_dir():
            labels = list_files(self.label_dir, suffixes=LABEL_SUFFIXES, what=f"annotation folder of {name!r}")
        orphans = [path.name for stem, path in labels.items() if stem not in frames]
        if orphans:
            raise VOSDataError(
                f"annotation folder {self.label_dir}: {len(orphans)} label file(s) have no frame of the same name "
                f"in {self.frame_dir}: {shorten(orphans)}"
            )
        self._frame_paths: list[Path] = list(frames.values())
        self._frame_names: list[str] = list(frames)
        self._index_by_stem: dict[str, int] = {stem: index for index, stem in enumerate(frames)}
        self._label_paths: dict[int, Path] = {
            index: labels[stem] for index, stem in enumerate(self._frame_names) if stem in labels
        }

    @property
    def frame_names(self) -> Sequence[str]:
        return tuple(self._frame_names)

    @property
    def annotated_indices(self) -> Sequence[int]:
        return tuple(sorted(self._label_paths))

    @cached_property
    def size(self) -> tuple[int, int]:
        return image_size(self._frame_paths[0])

    def index_of(self, stem: str) -> int:
        """Index of the frame whose file stem is ``stem``; KeyError if there is none."""
        if stem not in self._index_by_stem:
            raise KeyError(f"sequence {self.name!r} has no frame {stem!r} in {self.frame_dir}")
        return self._index_by_stem[stem]

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < len(self._frame_paths):
            raise IndexError(
                f"sequence {self.name!r}: frame index {index} out of range 0..{len(self._frame_paths) - 1}"
            )
        return index

    def frame_path(self, index: int) -> Path:
        """Path of frame ``index``."""
        return self._frame_paths[self._check_index(index)]

    def label_path(self, index: int) -> Path:
        """Path of the label file of frame ``index``; KeyError if the frame is not annotated."""
        index = self._check_index(index)
        if index not in self._label_paths:
            raise KeyError(
                f"sequence {self.name!r}: frame {index} ({self._frame_names[index]}) has no annotation in "
                f"{self.label_dir}; annotated frames: {list(self.annotated_indices)}"
            )
        return self._label_paths[index]

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB, decoded now (nothing is cached)."""
        path = self.frame_path(index)
        image = read_image(path)
        if image.shape[:2] != self.size:
            raise VOSDataError(
                f"{path}: frame is {format_size(image.shape[:2])} (HxW) but the first frame {self._frame_paths[0]} "
                f"of sequence {self.name!r} is {format_size(self.size)}"
            )
        return image

    def read_label_file(self, index: int) -> np.ndarray:
        """The raw label file of frame ``index`` as (H, W) uint8, checked to have its frame's size."""
        path = self.label_path(index)
        labels = read_labels(path)
        frame_path = self._frame_paths[index]
        frame_size = image_size(frame_path)
        if labels.shape != frame_size:
            raise VOSDataError(
                f"{path}: annotation is {format_size(labels.shape)} (HxW) but its frame {frame_path} is "
                f"{format_size(frame_size)}"
            )
        return labels
