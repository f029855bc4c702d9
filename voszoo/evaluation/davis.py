"""The DAVIS 2017 semi-supervised evaluation protocol: score sequences, aggregate, write the official CSV files.

Reproduces the official evaluation (github davisvideochallenge/davis2017-evaluation, ``evaluation_method.py
--task semi-supervised``): same frames, objects, per-object statistics, averages and CSV bytes. Where the official code
misbehaves (labels above the object count, 257+ frame sequences, missing files) this module raises a named error or
computes the right value instead; ``docs/evaluation.md`` lists every difference.

Protocol, per sequence: the frames are the ground-truth PNGs sorted by name, the first and the last excluded. Ground
truth 255 (void) counts as background. K = the largest label of the first ground-truth frame; object k (1..K) is
``labels == k`` in both ground truth and prediction, a predicted object that is absent is an empty mask, and a predicted
label above K is an error. Each object gets per-frame J and F, then mean, recall and decay
(:func:`~voszoo.evaluation.metrics.mean_recall_decay`). Global numbers average over objects, not sequences.

``davis2016=True`` scores DAVIS 2016 style binary data: any non-zero ground truth (0/255 files) and any non-zero
prediction is object 1.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np
from PIL import Image

from voszoo.data.io import VOSDataError, atomic_write_bytes, read_labels

# The shared reader's open-and-decode step (same errors, naming the file); the evaluator crops before converting.
from voszoo.data.io import open_image as _open_image
from voszoo.evaluation.metrics import BOUNDARY_THRESHOLD, _scores_2d, boundary_radius, mean_recall_decay

__all__ = [
    "SequenceResult",
    "EvaluationResult",
    "evaluate_sequence",
    "evaluate_folders",
    "GLOBAL_COLUMNS",
    "SEQUENCE_COLUMNS",
]

GLOBAL_COLUMNS: tuple[str, ...] = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
"""Columns of ``global_results-<split>.csv``, in the official order."""
SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean")
"""Columns of ``per-sequence_results-<split>.csv`` (one row per object, named ``<sequence>_<k>``)."""
_STATS = ("Mean", "Recall", "Decay")


@dataclass(frozen=True)
class SequenceResult:
    """Per-frame scores of one sequence.

    ``frames``: names (file stems) of the N evaluated frames; ``j`` and ``f``: (K, N) float64, row k - 1 is object k.
    """

    name: str
    frames: tuple[str, ...]
    j: np.ndarray
    f: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.j.shape[0])

    @property
    def object_names(self) -> list[str]:
        """``<sequence>_<k>`` for k = 1..K, the official row names."""
        return [f"{self.name}_{k}" for k in range(1, self.num_objects + 1)]

    def statistics(self) -> list[dict[str, float]]:
        """Per object: {"J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}."""
        rows = []
        for j_row, f_row in zip(self.j, self.f, strict=True):
            row: dict[str, float] = {}
            for measure, values in (("J", j_row), ("F", f_row)):
                row.update(zip((f"{measure}-{stat}" for stat in _STATS), mean_recall_decay(values), strict=True))
            rows.append(row)
        return rows


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of a set of sequences, in the order they were requested."""

    sequences: tuple[SequenceResult, ...]
    davis2016: bool = False
    threshold: float = field(default=BOUNDARY_THRESHOLD)

    def per_object_table(self) -> list[dict[str, float | str]]:
        """One row per object: {"Sequence": "<seq>_<k>", "J-Mean", "F-Mean", "J-Recall", "J-Decay", ...}."""
        rows: list[dict[str, float | str]] = []
        for sequence in self.sequences:
            for name, stats in zip(sequence.object_names, sequence.statistics(), strict=True):
                rows.append({"Sequence": name, **stats})
        return rows

    def global_table(self) -> dict[str, float]:
        """The official global numbers, averaged over objects: {"J&F-Mean", "J-Mean", ..., "F-Decay"}."""
        rows = self.per_object_table()
        if not rows:
            raise ValueError("EvaluationResult.global_table: no object was evaluated")
        # np.mean over the per-object list, as the official code, so that every bit matches.
        table = {column: float(np.mean([row[column] for row in rows])) for column in GLOBAL_COLUMNS[1:]}
        return {"J&F-Mean": (table["J-Mean"] + table["F-Mean"]) / 2.0, **table}

    def write_csvs(self, out_dir: str | os.PathLike, *, split: str = "val") -> tuple[Path, Path]:
        """Write ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` byte for byte as the official
        evaluator does (pandas ``to_csv(index=False, float_format="%.3f")``). Returns the two paths."""
        out_dir = Path(out_dir)
        global_path = out_dir / f"global_results-{split}.csv"
        sequence_path = out_dir / f"per-sequence_results-{split}.csv"
        table = self.global_table()
        atomic_write_bytes(global_path, _csv_bytes([GLOBAL_COLUMNS, [table[c] for c in GLOBAL_COLUMNS]]))
        rows = [[row[c] for c in SEQUENCE_COLUMNS] for row in self.per_object_table()]
        atomic_write_bytes(sequence_path, _csv_bytes([SEQUENCE_COLUMNS, *rows]))
        return global_path, sequence_path

    def to_json(self) -> str:
        """Everything at full precision: protocol, global numbers, per object statistics and per-frame J and F."""
        sequences = []
        for sequence in self.sequences:
            objects = []
            for k, (name, stats) in enumerate(zip(sequence.object_names, sequence.statistics(), strict=True), start=1):
                objects.append(
                    {"id": k, "name": name, **stats, "J": sequence.j[k - 1].tolist(), "F": sequence.f[k - 1].tolist()}
                )
            sequences.append({"name": sequence.name, "frames": list(sequence.frames), "objects": objects})
        document = {
            "protocol": "DAVIS 2016 (binary)" if self.davis2016 else "DAVIS 2017 semi-supervised",
            "boundary_threshold": self.threshold,
            "global": self.global_table(),
            "sequences": sequences,
        }
        return json.dumps(document, indent=1)

    def format_table(self) -> str:
        """A readable text table: the global numbers, then one line per object."""
        table = self.global_table()
        lines = ["  ".join(f"{c:>8}" for c in GLOBAL_COLUMNS), "  ".join(f"{table[c]:8.3f}" for c in GLOBAL_COLUMNS)]
        rows = self.per_object_table()
        width = max(len("Sequence"), *(len(str(row["Sequence"])) for row in rows))
        columns = ("J-Mean", "F-Mean", "J-Recall", "J-Decay", "F-Recall", "F-Decay")
        lines += ["", f"{'Sequence':<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
        lines += [f"{row['Sequence']:<{width}}  " + "  ".join(f"{row[c]:8.3f}" for c in columns) for row in rows]
        return "\n".join(lines)


def _csv_bytes(rows: Sequence[Sequence[object]]) -> bytes:
    """CSV as pandas writes it: minimal quoting, ``\\n`` line ends, floats as ``%.3f``, NaN as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(
            ["" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" if isinstance(v, float) else v for v in row]
        )
    return buffer.getvalue().encode()


def _num_objects(first_gt: np.ndarray, *, davis2016: bool, where: str) -> int:
    if davis2016:
        return 1
    labels = first_gt[first_gt != 255]
    count = int(labels.max(initial=0))
    if count == 0:
        raise VOSDataError(f"{where}: the first ground-truth frame has no object (labels 1..254), nothing to evaluate")
    return count


def _score_frame(
    gt: np.ndarray, pred: np.ndarray, num_objects: int, radius: int, *, davis2016: bool, where: str
) -> tuple[list[float], list[float]]:
    """J and F of objects 1..K on one frame.

    ``gt``, ``pred``: (H, W) integer label maps of equal shape: the whole frame, or a crop whose every edge is an
    image edge or has only zeros next to it (see ``metrics._scores_2d``). ``radius`` comes from the frame's size.
    """
    if davis2016:
        gt_masks, pred_masks = [gt != 0], [pred != 0]
    else:
        high = int(pred.max(initial=0))
        low = 0 if pred.dtype.kind in "ub" else int(pred.min(initial=0))
        if low < 0 or high > num_objects:
            bad = high if high > num_objects else low
            raise VOSDataError(
                f"{where}: predicted label {bad}, but the first ground-truth frame has {num_objects} object(s) "
                f"(labels 1..{num_objects}; 0 = background)"
            )
        gt_masks = [gt == k for k in range(1, num_objects + 1)]
        pred_masks = [pred == k for k in range(1, num_objects + 1)]
    j_values, f_values = [], []
    for pred_mask, gt_mask in zip(pred_masks, gt_masks, strict=True):
        j, f = _scores_2d(pred_mask, gt_mask, radius)
        j_values.append(j)
        f_values.append(f)
    return j_values, f_values


def evaluate_sequence(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    name: str = "sequence",
    frame_names: Sequence[str] | None = None,
    davis2016: bool = False,
    threshold: float = BOUNDARY_THRESHOLD,
) -> SequenceResult:
    """Score one sequence held in memory, with the DAVIS protocol (first and last frame are not scored).

    ``gt``: (T, H, W) uint8 ground-truth label maps of every frame, T >= 3 (0 background, 1..K objects, 255 void);
    ``pred``: (T, H, W) integer predicted label maps (frames 0 and T - 1 are ignored; values must lie in 0..K).
    ``frame_names`` (T names, default ``"00000"``, ...) only label the result and the errors.
    Returns per-frame J and F of shape (K, T - 2).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(
            f"evaluate_sequence({name!r}): gt and pred must both be (T, H, W), got {gt.shape} and {pred.shape}"
        )
    if gt.shape[0] < 3:
        raise ValueError(
            f"evaluate_sequence({name!r}): needs at least 3 frames (first and last are not scored), got {gt.shape[0]}"
        )
    names = [f"{i:05d}" for i in range(gt.shape[0])] if frame_names is None else list(frame_names)
    if len(names) != gt.shape[0]:
        raise ValueError(f"evaluate_sequence({name!r}): {len(names)} frame_names for {gt.shape[0]} frames")
    num_objects = _num_objects(gt[0], davis2016=davis2016, where=f"sequence {name!r}")
    radius = boundary_radius(*gt.shape[1:], threshold=threshold)
    scores = [
        _score_frame(
            gt[t], pred[t], num_objects, radius, davis2016=davis2016, where=f"sequence {name!r}, frame {names[t]!r}"
        )
        for t in range(1, gt.shape[0] - 1)
    ]
    j = np.array([s[0] for s in scores], dtype=np.float64).T.copy()
    f = np.array([s[1] for s in scores], dtype=np.float64).T.copy()
    return SequenceResult(name=name, frames=tuple(names[1:-1]), j=j, f=f)


def _png_names(folder: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_file() and e.name.endswith(".png") and not e.name.startswith(".")
    )


def _sequence_plan(gt_dir: Path, pred_dir: Path, name: str) -> tuple[list[str], list[str]]:
    """GT frame file names of a sequence and the predicted files it needs that are missing."""
    gt_seq = gt_dir / name
    frames = _png_names(gt_seq)
    if len(frames) < 3:
        raise VOSDataError(
            f"{gt_seq}: needs at least 3 ground-truth PNGs (first and last are not scored), found {len(frames)}"
        )
    pred_seq = pred_dir / name
    if not pred_seq.is_dir():
        return frames, [str(pred_seq) + os.sep]
    present = set(_png_names(pred_seq))
    return frames, [str(pred_seq / f) for f in frames[1:-1] if f not in present]


def _label_image(path: Path) -> Image.Image:
    """A decoded label PNG as an 8-bit PIL image (palette or greyscale; other modes go through ``read_labels``)."""
    image = _open_image(path)
    if image.mode in ("P", "L"):
        return image
    return Image.fromarray(read_labels(path))  # (H, W) uint8 -> mode "L"


def _evaluate_sequence_folder(
    gt_dir: str, pred_dir: str, name: str, frames: list[str], davis2016: bool, threshold: float
) -> SequenceResult:
    """Score one sequence from its folders, decoding each PNG once and keeping one frame in memory.

    Each frame pair is cropped by PIL to the bounding box of its non-zero pixels (plus one empty pixel where the
    image goes on) before it becomes a numpy array: the scores are those of the whole frame, for less work.
    """
    gt_seq, pred_seq = Path(gt_dir) / name, Path(pred_dir) / name
    first = read_labels(gt_seq / frames[0])
    num_objects = _num_objects(first, davis2016=davis2016, where=str(gt_seq / frames[0]))
    height, width = first.shape
    radius = boundary_radius(height, width, threshold=threshold)
    j = np.ones((num_objects, len(frames) - 2))
    f = np.ones((num_objects, len(frames) - 2))
    for index, frame in enumerate(frames[1:-1]):
        gt_image = _label_image(gt_seq / frame)
        if gt_image.size != (width, height):
            raise VOSDataError(
                f"{gt_seq / frame}: ground truth is {gt_image.size[0]}x{gt_image.size[1]} (WxH), "
                f"the first frame {width}x{height}"
            )
        pred_image = _label_image(pred_seq / frame)
        if pred_image.size != (width, height):
            raise VOSDataError(
                f"{pred_seq / frame} (sequence {name!r}, frame {Path(frame).stem!r}): prediction is "
                f"{pred_image.size[0]}x{pred_image.size[1]} (WxH) but the ground truth is {width}x{height}"
            )
        boxes = [box for box in (gt_image.getbbox(), pred_image.getbbox()) if box is not None]
        if not boxes:
            continue  # both frames empty: every object has J = F = 1
        box = (
            max(min(b[0] for b in boxes) - 1, 0),
            max(min(b[1] for b in boxes) - 1, 0),
            min(max(b[2] for b in boxes) + 1, width),
            min(max(b[3] for b in boxes) + 1, height),
        )
        gt, pred = np.asarray(gt_image.crop(box)), np.asarray(pred_image.crop(box))
        where = f"{pred_seq / frame} (sequence {name!r}, frame {Path(frame).stem!r})"
        j[:, index], f[:, index] = _score_frame(gt, pred, num_objects, radius, davis2016=davis2016, where=where)
    return SequenceResult(name=name, frames=tuple(Path(f).stem for f in frames[1:-1]), j=j, f=f)


def _missing_message(what: str, missing: list[str]) -> str:
    shown = ", ".join(missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return f"{len(missing)} {what} missing: {shown}{more}"


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    *,
    sequences: Sequence[str] | None = None,
    workers: int | None = None,
    davis2016: bool = False,
    threshold: float = BOUNDARY_THRESHOLD,
    progress: bool = True,
) -> EvaluationResult:
    """Score a folder of predictions against a folder of ground truth, both ``<sequence>/<frame>.png``.

    ``gt_dir`` is the annotations folder (e.g. ``DAVIS/Annotations/480p``), ``pred_dir`` holds one folder of palette
    (or greyscale) PNGs per sequence, named as the ground truth. ``sequences`` defaults to every sub-folder of
    ``gt_dir``, sorted. Every needed file is checked before any scoring: a missing folder or frame raises
    :class:`VOSDataError` listing the first few and the count. ``workers`` (default: the usable CPU cores) processes
    score sequences in parallel; 1 scores in this process.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for label, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise VOSDataError(f"{folder}: {label} folder not found")
    if sequences is None:
        names = sorted(e.name for e in os.scandir(gt_dir) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise VOSDataError(f"{gt_dir}: no sequence folders in the ground-truth folder")
    else:
        names = list(sequences)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"evaluate_folders: sequences listed twice: {duplicates}")
        if not names:
            raise ValueError("evaluate_folders: sequences is empty")
        absent = [str(gt_dir / n) for n in names if not (gt_dir / n).is_dir()]
        if absent:
            raise VOSDataError(_missing_message("ground-truth sequence folder(s)", absent))
    plans: dict[str, list[str]] = {}
    missing: list[str] = []
    for name in names:
        plans[name], lost = _sequence_plan(gt_dir, pred_dir, name)
        missing += lost
    if missing:
        raise VOSDataError(_missing_message("prediction folder(s)/file(s)", missing))

    workers = min(_default_workers() if workers is None else workers, len(names))
    if workers < 1:
        raise ValueError(f"evaluate_folders: workers must be >= 1, got {workers}")
    arguments = {name: (str(gt_dir), str(pred_dir), name, plans[name], davis2016, threshold) for name in names}
    results: dict[str, SequenceResult] = {}
    if workers == 1:
        with _progress(len(names), progress) as bar:
            for name in names:
                results[name] = _evaluate_sequence_folder(*arguments[name])
                bar.update()
    else:
        # The pool's processes start on the first submit, before the progress bar's monitor thread exists.
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            order = sorted(names, key=lambda n: -len(plans[n]))  # longest first: the two cores finish together
            futures = {pool.submit(_evaluate_sequence_folder, *arguments[name]): name for name in order}
            try:
                with _progress(len(names), progress) as bar:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return EvaluationResult(sequences=tuple(results[name] for name in names), davis2016=davis2016, threshold=threshold)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm  # imported here: the pool's worker processes never need it

    return tqdm(total=total, desc="J&F", unit="seq", disable=None if enabled else True)


def _pool_context() -> BaseContext:
    """The start method of the worker processes.

    ``fork`` when this process runs no other Python thread and has not imported torch (the ``voszoo-score`` CLI):
    the workers then need no re-import, which saves about 0.3 s each. Otherwise ``spawn``, because forking a process
    whose other threads may hold locks (a training loop: torch, data loaders, loggers) can deadlock the child.
    (numpy's idle BLAS threads are fork-safe: OpenBLAS re-initialises through ``pthread_atfork``.)
    """
    if threading.active_count() == 1 and "torch" not in sys.modules and "fork" in get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")
