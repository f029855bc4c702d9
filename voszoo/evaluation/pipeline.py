"""Predict a dataset split with any predictor and score it: the code path shared by voszoo-eval, voszoo-train's
final evaluation, the periodic evaluation hook and the leaderboard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from voszoo.data.io import VOSDataError
from voszoo.data.video import VideoCollection, VideoSource
from voszoo.errors import UserError, naming_file
from voszoo.evaluation.sharding import EvalGroup, ShardedEvaluationError, balanced_shards, gather_from_ranks
from voszoo.inference.predict import PredictionStats, VideoPredictor, log_video_done, predict_collection

__all__ = [
    "OutputFolderError",
    "RESULT_FILES",
    "check_scorable",
    "claim_output_dir",
    "evaluate_predictor",
    "write_metrics",
]

RESULT_FILES: tuple[str, ...] = (
    "predictions",
    "metrics.json",
    "results.json",
    "global_results-*.csv",
    "per-sequence_results-*.csv",
    "submission.zip",
    "viz",
)
"""What an evaluation writes into its folder (names and glob patterns): an earlier run's copies are refused or
cleared (:func:`claim_output_dir`), never mixed with new ones."""


class OutputFolderError(UserError, FileExistsError):
    """The output folder holds the results of an earlier evaluation and overwriting was not asked for."""


def claim_output_dir(out_dir: str | Path, *, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a new evaluation: if it holds any of :data:`RESULT_FILES` (an earlier run's
    predictions, scores or submission), raise :class:`OutputFolderError` naming them, or with ``overwrite`` delete
    them. Other files (Hydra's ``.hydra/`` and log) are left alone."""
    out_dir = Path(out_dir)
    found = sorted({path for pattern in RESULT_FILES for path in out_dir.glob(pattern)})
    if not found:
        return
    if not overwrite:
        shown = ", ".join(path.name + ("/" if path.is_dir() else "") for path in found)
        raise OutputFolderError(
            f"{out_dir} already holds the results of an earlier evaluation ({shown}); new ones would mix with them",
            hint="pass overwrite=true to clear them first, or choose another folder (hydra.run.dir=...)",
        )
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def evaluate_predictor(
    predictor: VideoPredictor,
    collection: VideoCollection,
    out_dir: str | Path,
    *,
    sequences: list[str] | None = None,
    max_videos: int | None = None,
    workers: int = 2,
    progress: bool = True,
    group: EvalGroup | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/predictions/<seq>/<frame>.png`` and score them.

    ``out_dir`` must not hold an earlier evaluation's results (:func:`claim_output_dir`: stale PNGs and scores
    would sit beside the new ones); ``overwrite`` clears them first. A DAVIS-layout collection is checked to be
    scorable (:func:`check_scorable`) before the first video is predicted.

    DAVIS-layout collections (DAVIS, ToyVOS) are scored with the DAVIS protocol: the official CSVs and
    ``results.json`` go to ``out_dir``, and the returned dict holds ``J&F``, ``J``, ``F`` (means over objects),
    ``fps`` and ``videos``. YouTube-VOS has no public ground truth for its evaluation splits: the submission zip is
    written to ``out_dir/submission.zip`` and returned under ``submission``.

    ``group`` (from :func:`voszoo.evaluation.sharding.join_eval_group`, every rank calling this): each rank predicts
    its share of the videos into the shared ``out_dir``, then rank 0 alone scores them all, as one process would,
    and returns the above plus ``world_size`` and ``fps_aggregate``; the other ranks return only their own
    ``predictor``, ``rank``, ``videos`` and ``fps``. ``fps`` is total frames / total prediction seconds summed over
    the ranks (the speed of one process, comparable with a single-process run); ``fps_aggregate`` is total frames
    / the prediction seconds of the slowest rank (the throughput of the whole group).
    """
    out_dir = Path(out_dir)
    names = list(sequences) if sequences is not None else list(collection.sequences)
    if max_videos is not None:
        # A negative count would slice from the end (-1: all videos but one) and 0 would score nothing: refuse both.
        if isinstance(max_videos, bool) or not isinstance(max_videos, int) or max_videos < 1:
            raise ValueError(f"evaluate_predictor: max_videos must be an integer >= 1 or None (all): {max_videos!r}")
        names = names[:max_videos]
    predictions = out_dir / "predictions"
    if _scored_with_davis_protocol(collection):  # every rank checks the same files: all raise, none waits
        check_scorable(collection, names)
    check_video = getattr(predictor, "check_video", None)  # e.g. frames too small for the model's stride
    if check_video is not None:
        for name in names:
            check_video(collection.video(name))
    if group is not None and group.world_size > 1:
        return _evaluate_sharded(
            predictor, collection, out_dir, names, group, workers=workers, progress=progress, overwrite=overwrite
        )
    claim_output_dir(out_dir, overwrite=overwrite)
    stats = predict_collection(predictor, collection, predictions, sequences=names, progress=progress)
    metrics: dict[str, Any] = {"predictor": predictor.name, "videos": len(names), "fps": stats.fps}
    return _score(collection, out_dir, names, metrics, workers=workers, progress=progress)


def _scored_with_davis_protocol(collection: VideoCollection) -> bool:
    from voszoo.data.youtube_vos import YouTubeVOS

    return not isinstance(collection, YouTubeVOS)


def check_scorable(collection: VideoCollection, names: list[str]) -> None:
    """Raise VOSDataError listing the first problems (and their count) that would stop or skew DAVIS scoring of
    ``names``, found from the folder listings and image headers only, before anything is predicted: a video with
    fewer than 3 frames (first and last are not scored), a frame without its annotation file (it would be left out
    of the scores), an annotation or frame whose size differs from the video's first frame."""
    problems: list[str] = []
    for name in names:
        problems += _video_problems(collection.video(name))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise VOSDataError(
            f"{len(problems)} problem(s) in the dataset would break scoring: {shown}",
            hint="fix or remove these videos, or choose others (sequences=[...])",
        )


def _video_problems(video: VideoSource) -> list[str]:
    """What :func:`check_scorable` finds wrong in one video (first problem per kind)."""
    from voszoo.data.folders import format_size, image_size

    name, count = video.name, video.num_frames
    if count < 3:
        return [f"sequence {name!r} has {count} frame(s); the DAVIS protocol needs at least 3"]
    annotated = set(video.annotated_indices)
    label_path, frame_path = getattr(video, "label_path", None), getattr(video, "frame_path", None)
    missing = [index for index in range(count) if index not in annotated]
    if missing:
        folder = getattr(video, "label_dir", None)
        stem = video.frame_names[missing[0]]
        where = f"{folder / (stem + '.png')}" if folder is not None else f"frame {stem!r} of {name!r}"
        return [f"{where}: annotation missing ({len(missing)} of {count} frames of {name!r} have none)"]
    if label_path is None or frame_path is None:
        return []  # not a folder video: nothing more to read from headers
    size = video.size
    for index in range(count):
        for path, what in ((frame_path(index), "frame"), (label_path(index), "annotation")):
            found = image_size(path)
            if found != size:
                first = format_size(size)
                return [f"{path}: {what} is {format_size(found)} (HxW), the first frame of {name!r} is {first}"]
    return []


def _score(
    collection: VideoCollection,
    out_dir: Path,
    names: list[str],
    metrics: dict[str, Any],
    *,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Score (or pack) the predictions of ``names`` under ``out_dir/predictions``; adds the results to ``metrics``."""
    from voszoo.data.youtube_vos import YouTubeVOS

    predictions = out_dir / "predictions"
    if isinstance(collection, YouTubeVOS):
        from voszoo.evaluation.youtube_vos import pack_submission

        metrics["submission"] = str(
            pack_submission(predictions, collection.meta_path, out_dir / "submission.zip", progress=progress)
        )
        return metrics

    from voszoo.evaluation.davis import evaluate_folders

    label_root = getattr(collection, "label_root", None)
    if label_root is None:
        raise TypeError(f"{collection!r} has no label_root: only DAVIS-layout collections can be scored here")
    result = evaluate_folders(
        label_root,
        predictions,
        sequences=names,
        workers=workers,
        davis2016=getattr(collection, "year", None) == "2016",
        progress=progress,
    )
    with naming_file(out_dir / "global_results-val.csv"):
        result.write_csvs(out_dir)
    with naming_file(out_dir / "results.json"):
        (out_dir / "results.json").write_text(result.to_json())
    table = result.global_table()
    metrics.update({"J&F": table["J&F-Mean"], "J": table["J-Mean"], "F": table["F-Mean"], "table": table})
    return metrics


def _evaluate_sharded(
    predictor: VideoPredictor,
    collection: VideoCollection,
    out_dir: Path,
    names: list[str],
    group: EvalGroup,
    *,
    workers: int,
    progress: bool,
    overwrite: bool,
) -> dict[str, Any]:
    """:func:`evaluate_predictor` for one rank of ``group`` (see there and :mod:`voszoo.evaluation.sharding`)."""
    from tqdm.auto import tqdm

    videos = [collection.video(name) for name in names]
    costs = [float(video.num_frames * video.size[0] * video.size[1]) for video in videos]
    plan = [[names[i] for i in shard] for shard in balanced_shards(costs, world_size=group.world_size)]
    refusal = None
    if group.is_main:  # one rank claims the shared folder, before any rank writes a prediction (the gather below)
        try:
            claim_output_dir(out_dir, overwrite=overwrite)
        except OutputFolderError as error:
            refusal = (str(error), error.hint)
    gathered = gather_from_ranks(group, (plan, refusal), what="to agree on the videos")
    if gathered[0][1] is not None:
        message, hint = gathered[0][1]
        raise OutputFolderError(message, hint=hint)
    plans = [other for other, _ in gathered]
    for rank, other in enumerate(plans):
        if other != plan:
            raise ShardedEvaluationError(
                f"ranks {group.rank} and {rank} disagree on the videos to evaluate ({len(names)} and "
                f"{sum(map(len, other))} videos): every rank must see the same dataset and sequence selection"
            )
    mine = plan[group.rank]
    stats = PredictionStats(frames={}, seconds={})
    report: dict[str, Any] = {}
    failure: Exception | None = None
    show = progress and group.is_main
    bar = tqdm(
        mine,
        desc=f"predict {predictor.name} (rank 0 of {group.world_size})",
        unit="video",
        disable=None if show else True,
    )
    for index, name in enumerate(bar, start=1):
        try:
            one = predict_collection(
                predictor, collection, out_dir / "predictions", sequences=[name], progress=False, log_videos=False
            )
        except Exception as error:  # noqa: BLE001 - sent to every rank, then re-raised below
            failure = error
            report["error"] = f"video {name!r}: {type(error).__name__}: {error}"
            break
        stats.frames.update(one.frames)
        stats.seconds.update(one.seconds)
        if group.is_main:  # rank 0's share stands for the progress of all, as its bar does
            log_video_done(
                f"{predictor.name} (rank 0 of {group.world_size})",
                index=index,
                total=len(mine),
                name=name,
                frames=one.frames[name],
                seconds=one.seconds[name],
            )
    report.update(frames=stats.frames, seconds=stats.seconds)
    reports = gather_from_ranks(group, report, what="to finish predicting")
    errors = [f"rank {rank}: {other['error']}" for rank, other in enumerate(reports) if "error" in other]
    if errors:
        raise ShardedEvaluationError(
            f"sharded evaluation failed on {len(errors)} rank(s): {'; '.join(errors)}"
        ) from failure
    if not group.is_main:
        return {"predictor": predictor.name, "rank": group.rank, "videos": len(mine), "fps": stats.fps}
    merged = PredictionStats(frames={}, seconds={})
    for other in reports:
        merged.frames.update(other["frames"])
        merged.seconds.update(other["seconds"])
    slowest = max(sum(other["seconds"].values()) for other in reports)
    total = sum(merged.frames.values())
    metrics: dict[str, Any] = {
        "predictor": predictor.name,
        "videos": len(names),
        "fps": merged.fps,
        "fps_aggregate": total / slowest if slowest > 0 else float("inf"),
        "world_size": group.world_size,
    }
    return _score(collection, out_dir, names, metrics, workers=workers, progress=progress)


def write_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``out_dir/metrics.json`` (what benchmarks and sweep collectors read) atomically."""
    from voszoo.data.io import atomic_write_bytes

    path = Path(out_dir) / "metrics.json"
    with naming_file(path):
        atomic_write_bytes(path, (json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path
