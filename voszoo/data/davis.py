"""DAVIS 2016 / 2017 and ToyVOS readers (evaluation side): lazy :class:`~voszoo.data.video.VideoCollection` s.

Layout (``<res>`` is ``480p`` or ``Full-Resolution``)::

    root/JPEGImages/<res>/<seq>/00000.jpg ...
    root/Annotations/<res>/<seq>/00000.png ...     palette PNGs (2017) or 0/255 masks (2016)
    root/ImageSets/2017/{train,val,test-dev,...}.txt   one sequence name per line
    root/ImageSets/480p/{train,val}.txt                DAVIS 2016: "/JPEGImages/480p/bear/00000.jpg /Annotations/..."
    root/ImageSets/2016/{train,val}.txt                DAVIS 2016 split as shipped inside DAVIS 2017: names
    root/Flow/<seq>/00000.npy ...                      ToyVOS only: (H, W, 2) float32 flow from frame t to t+1

Semantics:

- Frames and label maps are matched by file stem; ``annotated_indices`` are the frames with a label file (all of them
  for train/val, only the first for test-dev / test-challenge).
- DAVIS 2017 labels are object ids, 0 = background, 255 = void (kept as 255). The first frame defines the objects:
  ``first_appearance`` maps every id present in the first frame's label map to 0 (in semi-supervised DAVIS every
  object is in frame 0) and a label map holding an id above the largest first-frame id (other than 255) is rejected.
- DAVIS 2016 masks are binary: any non-zero value (255 in the official files) becomes object 1; there is no void.
- Constructing a collection reads the split file and lists folders only; a video lists its two folders when built and
  decodes an image only in :meth:`~FolderVideo.frame` / :meth:`DAVISVideo.labels` (the first frame's object ids are
  remembered once read). Nothing large is cached.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from voszoo.data.folders import FolderVideo, check_choice, check_listed, list_subfolders, require_dir, unknown_name
from voszoo.data.io import VOSDataError
from voszoo.data.video import VideoCollection

__all__ = ["DAVIS", "DAVISVideo", "ToyVOS", "ToyVOSVideo", "DAVIS_YEARS", "DAVIS_SPLITS", "DAVIS_RESOLUTIONS"]

DAVIS_YEARS: tuple[str, ...] = ("2016", "2017")
DAVIS_RESOLUTIONS: tuple[str, ...] = ("480p", "Full-Resolution")
DAVIS_SPLITS: dict[str, tuple[str, ...]] = {
    "2016": ("train", "val", "trainval"),
    "2017": ("train", "val", "trainval", "test-dev", "test-challenge"),
}


def read_split_file(path: Path) -> list[str]:
    """Sequence names listed by a DAVIS split file, in file order without repeats.

    A line is either a sequence name (DAVIS 2017, ``ImageSets/2016`` of DAVIS 2017) or a frame/annotation pair
    ``/JPEGImages/<res>/<seq>/<frame>.jpg /Annotations/<res>/<seq>/<frame>.png`` (DAVIS 2016), whose ``<seq>`` is taken.
    Blank lines are skipped. Raises VOSDataError naming the file (and line) if it is unreadable, malformed or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise VOSDataError(f"{path}: unreadable split file ({error})") from error
    names: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 1 and "/" not in tokens[0]:
            name = tokens[0]
        else:
            parts = PurePosixPath(tokens[0]).parts
            at = parts.index("JPEGImages") if "JPEGImages" in parts else -1
            if at < 0 or at + 3 >= len(parts):
                raise VOSDataError(
                    f"{path}, line {number}: expected a sequence name or a '/JPEGImages/<res>/<seq>/<frame>.jpg "
                    f"/Annotations/<res>/<seq>/<frame>.png' pair, got {line.strip()!r}"
                )
            name = parts[at + 2]
        if name not in names:
            names.append(name)
    if not names:
        raise VOSDataError(f"{path}: split file lists no sequences")
    return names


class DAVISVideo(FolderVideo):
    """One DAVIS sequence: frames from ``frame_dir``, label maps from ``label_dir`` (see the module docstring).

    ``binary=True`` reads DAVIS 2016 masks (non-zero -> 1). Raises VOSDataError when built if the first frame has no
    label file (the semi-supervised reference).
    """

    def __init__(self, name: str, *, frame_dir: Path, label_dir: Path, binary: bool = False) -> None:
        super().__init__(name, frame_dir=frame_dir, label_dir=label_dir)
        self.binary = binary
        if 0 not in self._label_paths:
            raise VOSDataError(
                f"sequence {name!r}: its first frame {self._frame_paths[0].name} has no annotation "
                f"{self.label_dir / (self._frame_names[0] + '.png')}; DAVIS needs the first frame's mask"
            )
        self._first_ids: tuple[int, ...] | None = None

    def _ids_of_first_frame(self, raw: np.ndarray | None = None) -> tuple[int, ...]:
        if self._first_ids is None:
            raw = self.read_label_file(0) if raw is None else raw
            values = np.unique(raw)
            if self.binary:
                ids: tuple[int, ...] = (1,) if (values != 0).any() else ()
            else:
                ids = tuple(int(value) for value in values if value not in (0, 255))
            if not ids:
                raise VOSDataError(f"{self.label_path(0)}: the first frame of {self.name!r} holds no object")
            self._first_ids = ids
        return self._first_ids

    @property
    def first_appearance(self) -> dict[int, int]:
        """{object id: 0} for every id in the first frame's label map (reads that file once)."""
        return dict.fromkeys(self._ids_of_first_frame(), 0)

    def labels(self, index: int) -> np.ndarray:
        """Label map of annotated frame ``index``: (H, W) uint8, 0 background, 1..K objects, 255 void (2017 only).

        Raises KeyError if the frame has no label file, VOSDataError if the file is unreadable, its size differs from
        its frame's, or (2017) it holds a value above the first frame's largest object id other than 255.
        """
        raw = self.read_label_file(index)
        if self.binary:
            return (raw != 0).astype(np.uint8)
        ids = self._ids_of_first_frame(raw if index == 0 else None)
        largest = max(ids)
        values = np.unique(raw)
        bad = values[(values > largest) & (values != 255)]
        if bad.size:
            raise VOSDataError(
                f"{self.label_path(index)}: label values {bad.tolist()} are neither objects of the first frame "
                f"({self.label_path(0).name}: ids up to {largest}) nor 255 (void)"
            )
        return raw


class DAVIS(VideoCollection):
    """A DAVIS 2016 or 2017 split at ``root`` (see the module docstring for the layout and semantics).

    ``year`` is ``"2016"`` or ``"2017"`` (ints are accepted); ``split`` one of :data:`DAVIS_SPLITS`; ``resolution``
    ``"480p"`` or ``"Full-Resolution"``. Unknown values raise ValueError listing the choices. The split file is
    ``ImageSets/2017/<split>.txt`` for 2017 and, for 2016, the first of ``ImageSets/2016/<split>.txt``,
    ``ImageSets/<resolution>/<split>.txt``, ``ImageSets/480p/<split>.txt`` that exists.

    Construction reads the split file and checks that every listed sequence has a frame folder and an annotation
    folder (VOSDataError naming the missing ones); no image is opened.
    """

    def __init__(
        self, root: str | os.PathLike, *, year: str = "2017", split: str = "val", resolution: str = "480p"
    ) -> None:
        year = str(year) if isinstance(year, int) else year
        self.year = check_choice("year", year, DAVIS_YEARS, owner="DAVIS")
        self.split = check_choice("split", split, DAVIS_SPLITS[year], owner=f"DAVIS {year}")
        self.resolution = check_choice("resolution", resolution, DAVIS_RESOLUTIONS, owner="DAVIS")
        self.root = require_dir(Path(root), what=f"DAVIS root folder (year {year})")
        self.split_file = self._find_split_file()
        self._sequences = read_split_file(self.split_file)
        self._known = frozenset(self._sequences)
        hint = f"available resolutions: {', '.join(list_subfolders(self.root / 'JPEGImages')) or 'none'}"
        self.frame_root = require_dir(self.root / "JPEGImages" / resolution, what="DAVIS frame folder", hint=hint)
        self.label_root = require_dir(self.root / "Annotations" / resolution, what="DAVIS annotation folder")
        check_listed(self._sequences, self.frame_root, listed_in=self.split_file)
        check_listed(self._sequences, self.label_root, listed_in=self.split_file)

    @property
    def _title(self) -> str:
        return f"DAVIS {self.year} {self.split}"

    def _find_split_file(self) -> Path:
        folders = ["2017"] if self.year == "2017" else list(dict.fromkeys(["2016", self.resolution, "480p"]))
        candidates = [self.root / "ImageSets" / folder / f"{self.split}.txt" for folder in folders]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        available = []
        for folder in folders:
            stems = sorted(path.stem for path in (self.root / "ImageSets" / folder).glob("*.txt"))
            if stems:
                available.append(f"ImageSets/{folder}: {', '.join(stems)}")
        listed = "; ".join(available) if available else f"no split files under {self.root / 'ImageSets'}"
        tried = " or ".join(str(candidate) for candidate in candidates)
        raise VOSDataError(
            f"{self._title}: split {self.split!r} not found ({tried} does not exist); available: {listed}"
        )

    @property
    def sequences(self) -> Sequence[str]:
        return tuple(self._sequences)

    def _check_name(self, name: str) -> None:
        if name not in self._known:
            raise unknown_name(name, self._sequences, collection=self._title)

    def video(self, name: str) -> DAVISVideo:
        """The sequence ``name`` (lists its folders; opens no image). KeyError listing valid names if unknown."""
        self._check_name(name)
        return DAVISVideo(
            name, frame_dir=self.frame_root / name, label_dir=self.label_root / name, binary=self.year == "2016"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, year={self.year!r}, split={self.split!r}, "
            f"resolution={self.resolution!r}, sequences={len(self)})"
        )


class ToyVOSVideo(DAVISVideo):
    """A ToyVOS sequence: a DAVIS 2017 sequence plus ground-truth forward flow in ``flow_dir/<frame stem>.npy``."""

    def __init__(self, name: str, *, frame_dir: Path, label_dir: Path, flow_dir: Path) -> None:
        super().__init__(name, frame_dir=frame_dir, label_dir=label_dir, binary=False)
        self.flow_dir = Path(flow_dir)

    def flow_path(self, index: int) -> Path:
        """Path of the flow from frame ``index`` to ``index + 1``; KeyError for the last frame (it has no next)."""
        index = self._check_index(index)
        if index == self.num_frames - 1:
            raise KeyError(
                f"sequence {self.name!r}: frame {index} is the last frame and has no flow; flow(t) maps frame t to "
                f"t + 1, for t in 0..{self.num_frames - 2}"
            )
        return self.flow_dir / f"{self._frame_names[index]}.npy"

    def flow(self, index: int) -> np.ndarray:
        """Forward flow from frame ``index`` to ``index + 1`` as (H, W, 2) float32 (x then y displacement, pixels).

        Raises KeyError for the last frame, VOSDataError if the file is missing, unreadable, or not (H, W, 2) float.
        """
        path = self.flow_path(index)
        if not path.is_file():
            raise VOSDataError(f"{path}: flow file not found (flow of frame {index} of {self.name!r})")
        try:
            flow = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise VOSDataError(f"{path}: unreadable flow file ({error})") from error
        expected = (*self.size, 2)
        if not isinstance(flow, np.ndarray) or flow.shape != expected or not np.issubdtype(flow.dtype, np.floating):
            got = f"shape {flow.shape} dtype {flow.dtype}" if isinstance(flow, np.ndarray) else type(flow).__name__
            raise VOSDataError(f"{path}: expected float flow of shape (H, W, 2) = {expected}, got {got}")
        return flow.astype(np.float32, copy=False)


class ToyVOS(DAVIS):
    """A ToyVOS split at ``root``: :class:`DAVIS` 2017 at 480p whose videos also offer :meth:`ToyVOSVideo.flow`.

    Construction also checks that every listed sequence has a ``Flow/<seq>`` folder. ToyVOS itself (the generator and
    its layout) is described in docs/toyvos.md.
    """

    def __init__(self, root: str | os.PathLike, *, split: str = "val") -> None:
        super().__init__(root, year="2017", split=split, resolution="480p")
        self.flow_root = require_dir(
            self.root / "Flow", what="ToyVOS flow folder", hint="use DAVIS(root) to read a dataset without flow"
        )
        check_listed(self._sequences, self.flow_root, listed_in=self.split_file)

    @property
    def _title(self) -> str:
        return f"ToyVOS {self.split}"

    def video(self, name: str) -> ToyVOSVideo:
        """The sequence ``name`` with its flow (lists its folders; opens no file). KeyError if unknown."""
        self._check_name(name)
        return ToyVOSVideo(
            name, frame_dir=self.frame_root / name, label_dir=self.label_root / name, flow_dir=self.flow_root / name
        )

    def __repr__(self) -> str:
        return f"ToyVOS(root={str(self.root)!r}, split={self.split!r}, sequences={len(self)})"
