"""Predict a dataset split with any predictor and score it: the code path shared by voszoo-eval, voszoo-train's
final evaluation, the periodic evaluation hook and the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voszoo.data.video import VideoCollection
from voszoo.inference.predict import VideoPredictor, predict_collection

__all__ = ["evaluate_predictor", "write_metrics"]


def evaluate_predictor(
    predictor: VideoPredictor,
    collection: VideoCollection,
    out_dir: str | Path,
    *,
    sequences: list[str] | None = None,
    max_videos: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out_dir/predictions/<seq>/<frame>.png`` and score them.

    DAVIS-layout collections (DAVIS, ToyVOS) are scored with the DAVIS protocol: the official CSVs and
    ``results.json`` go to ``out_dir``, and the returned dict holds ``J&F``, ``J``, ``F`` (means over objects),
    ``fps`` and ``videos``. YouTube-VOS has no public ground truth for its evaluation splits: the submission zip is
    written to ``out_dir/submission.zip`` and returned under ``submission``.
    """
    from voszoo.data.youtube_vos import YouTubeVOS

    out_dir = Path(out_dir)
    names = list(sequences) if sequences is not None else list(collection.sequences)
    if max_videos is not None:
        names = names[:max_videos]
    predictions = out_dir / "predictions"
    stats = predict_collection(predictor, collection, predictions, sequences=names, progress=progress)
    metrics: dict[str, Any] = {"predictor": predictor.name, "videos": len(names), "fps": stats.fps}
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
    result.write_csvs(out_dir)
    (out_dir / "results.json").write_text(result.to_json())
    table = result.global_table()
    metrics.update({"J&F": table["J&F-Mean"], "J": table["J-Mean"], "F": table["F-Mean"], "table": table})
    return metrics


def write_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``out_dir/metrics.json`` (what benchmarks and sweep collectors read) atomically."""
    from voszoo.data.io import atomic_write_bytes

    path = Path(out_dir) / "metrics.json"
    atomic_write_bytes(path, (json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path
