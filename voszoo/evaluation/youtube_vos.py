"""YouTube-VOS submission packer: predicted label maps -> the zip the evaluation server takes.

The server scores ``Annotations/<video>/<frame>.png`` palette PNGs at the original resolution, one for every frame it
annotated: for the (sparse, every 5th frame) valid split, meta.json lists per object the frames from its first
appearance to the end of the video, and the frames required for a video are the union of its objects' lists.

``voszoo-pack-ytvos PRED_DIR --meta valid/meta.json --out submission.zip`` reads ``PRED_DIR/<video>/<frame>.png``
for every required frame, re-encodes each as a palette PNG (DAVIS palette, same label values and size) and writes the
zip atomically (temporary file, then rename; the zip gets the umask's mode). It refuses incomplete input, listing
what is missing or unreadable (first few + count), and a video whose PNGs do not all share one size. Extra files in
PRED_DIR are left out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from voszoo.data.io import VOSDataError, read_labels, write_labels
from voszoo.data.youtube_vos import read_meta
from voszoo.errors import add_verbose_flag, request_full_errors, run_command
from voszoo.fileio import atomic_write

__all__ = ["required_frames", "pack_submission", "main"]

_SHOWN = 5


def required_frames(meta_path: str | os.PathLike) -> dict[str, list[str]]:
    """{video id: sorted frame names (stems) the server scores} from a YouTube-VOS meta.json.

    The frames of a video are the union of its objects' ``frames`` lists. Raises VOSDataError naming the file and the
    video for a malformed entry.
    """
    meta_path = Path(meta_path)
    videos = read_meta(meta_path)
    required: dict[str, list[str]] = {}
    for video, entry in videos.items():
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objects, dict) or not objects:
            raise VOSDataError(f'{meta_path}: video {video!r} has no "objects" mapping')
        frames: set[str] = set()
        for key, obj in objects.items():
            names = obj.get("frames") if isinstance(obj, dict) else None
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise VOSDataError(
                    f'{meta_path}: object {key!r} of video {video!r} needs a list of frame names "frames"'
                )
            frames.update(names)
        required[video] = sorted(frames)
    return required


def _summary(what: str, items: list[str]) -> str:
    more = f" ... (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {what}: " + "; ".join(items[:_SHOWN]) + more


def pack_submission(
    pred_dir: str | os.PathLike, meta_path: str | os.PathLike, out_path: str | os.PathLike, *, progress: bool = True
) -> Path:
    """Write the YouTube-VOS submission zip ``out_path`` from ``pred_dir/<video>/<frame>.png``; returns its path.

    Every frame of :func:`required_frames` must exist and decode as a label map (palette or greyscale PNG); all PNGs
    of a video must share one size. Otherwise raises VOSDataError listing the first problems and their count, and
    ``out_path`` is left untouched. Zip entries: ``Annotations/<video>/<frame>.png``, palette PNGs, stored.
    """
    pred_dir, out_path = Path(pred_dir), Path(out_path)
    if not pred_dir.is_dir():
        raise VOSDataError(f"{pred_dir}: prediction folder not found")
    required = required_frames(meta_path)
    missing_videos = [f"{pred_dir / video}{os.sep}" for video in required if not (pred_dir / video).is_dir()]
    missing_frames = [
        str(pred_dir / video / f"{frame}.png")
        for video, frames in required.items()
        if (pred_dir / video).is_dir()
        for frame in frames
        if not (pred_dir / video / f"{frame}.png").is_file()
    ]
    if missing_videos or missing_frames:
        parts = []
        if missing_videos:
            parts.append(_summary("video folder(s) missing", missing_videos))
        if missing_frames:
            parts.append(_summary("frame file(s) missing", missing_frames))
        raise VOSDataError(f"incomplete predictions in {pred_dir} for {meta_path}: " + " | ".join(parts))

    total = sum(len(frames) for frames in required.values())

    def write_zip(handle: BinaryIO) -> None:
        problems: list[str] = []
        with (
            tempfile.TemporaryDirectory(prefix=".voszoo-pack-", dir=out_path.parent) as scratch,
            zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive,
            tqdm(total=total, desc="pack", unit="frame", disable=None if progress else True) as bar,
        ):
            png = Path(scratch) / "frame.png"
            for video, frames in required.items():
                size: tuple[int, int] | None = None
                for frame in frames:
                    source = pred_dir / video / f"{frame}.png"
                    bar.update()
                    try:
                        labels = read_labels(source)
                    except VOSDataError as error:
                        problems.append(str(error))
                        continue
                    if size is None:
                        size, first = labels.shape, source.name
                    elif labels.shape != size:
                        problems.append(
                            f"{source}: size {labels.shape[1]}x{labels.shape[0]} differs from "
                            f"{size[1]}x{size[0]} of {first} in the same video"
                        )
                        continue
                    if not problems:
                        write_labels(png, labels)
                        archive.write(png, f"Annotations/{video}/{frame}.png")
        if problems:  # atomic_write then removes the partial zip and leaves out_path untouched
            raise VOSDataError(_summary("unusable prediction file(s)", problems))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, write_zip)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``voszoo-pack-ytvos``; returns the exit code (0 ok, 1 bad input)."""
    parser = argparse.ArgumentParser(
        prog="voszoo-pack-ytvos",
        description="Pack YouTube-VOS predictions (PRED_DIR/<video>/<frame>.png) into the submission zip "
        "(Annotations/<video>/<frame>.png palette PNGs for every frame meta.json requires).",
    )
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="one folder of label PNGs per video")
    parser.add_argument("--meta", required=True, type=Path, help="the split's meta.json (e.g. valid/meta.json)")
    parser.add_argument("--out", required=True, type=Path, help="zip file to write (replaced atomically)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.verbose:
        request_full_errors()

    def pack() -> int:
        print(f"wrote {pack_submission(args.pred_dir, args.meta, args.out, progress=not args.quiet)}")
        return 0

    # Every input of this command comes from the user: a ValueError here is a bad argument, not a bug.
    return run_command(pack, prog="voszoo-pack-ytvos", also=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
