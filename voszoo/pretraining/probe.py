"""How well an encoder's features propagate a reference mask: the probe that compares pre-training objectives.

For each video of a collection (ToyVOS val), frame 0 and its labels form the memory and frames ``gaps`` later are
queried with the propagation of :func:`voszoo.pretraining.propagation.propagation_loss` (no training, no decoder).
A query cell takes the class with the largest propagated share; the score is the mean over (video, gap, object of
frame 0) of the grid-level IoU of that object against the cells where it holds the largest share. This measures the
matching alone, which is what a VOS method's read starts from; a random encoder scores near the share of the
background it predicts everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from voszoo.data.transforms import normalize_image
from voszoo.data.video import VideoCollection
from voszoo.pretraining.propagation import VOID, PropagationPretrainer, class_fractions

__all__ = ["propagation_probe"]


@torch.no_grad()
def propagation_probe(
    model: PropagationPretrainer,
    collection: VideoCollection,
    *,
    gaps: Sequence[int] = (1, 5, 10),
    scale: str | None = None,
    max_videos: int | None = None,
) -> dict[str, float]:
    """``{"iou": mean, "iou_gap<g>": mean at gap g}`` of mask propagation from frame 0 (see the module docstring),
    at feature ``scale`` (default: the model's first). Runs in eval mode on the model's device; restores its mode."""
    scale = scale or model.scales[0]
    if scale not in model.scales:
        raise ValueError(f"propagation_probe: scale {scale!r} is not one of the model's {list(model.scales)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_gap: dict[int, list[float]] = {g: [] for g in gaps}
    try:
        for position, name in enumerate(collection.sequences):
            if max_videos is not None and position >= max_videos:
                break
            video = collection.video(name)
            wanted = [0, *(g for g in gaps if g < video.num_frames)]
            images = torch.stack([normalize_image(video.frame(t)) for t in wanted]).to(device)
            labels = torch.from_numpy(np.stack([video.labels(t) for t in wanted]).astype(np.int64)).to(device)
            embedding = model.embed(images)[scale]  # (F, D, h, w)
            valid = labels[labels != VOID]
            classes = int(valid.max()) + 1 if valid.numel() else 1
            fractions = class_fractions(labels, num_classes=classes, size=tuple(embedding.shape[-2:]))
            memory = embedding[0].flatten(1)  # (D, N)
            memory_labels = fractions[0].flatten(1).T  # (N, C)
            for index, gap in enumerate(wanted[1:], start=1):
                query = embedding[index].flatten(1).T  # (N, D)
                propagated = torch.softmax(query @ memory / model.temperature, dim=-1) @ memory_labels
                predicted = propagated.argmax(-1)
                truth = fractions[index].flatten(1).argmax(0)
                for object_id in range(1, classes):
                    union = ((predicted == object_id) | (truth == object_id)).sum()
                    if union > 0:
                        intersection = ((predicted == object_id) & (truth == object_id)).sum()
                        per_gap[gap].append(float(intersection) / float(union))
    finally:
        model.train(was_training)
    scores = {f"iou_gap{g}": float(np.mean(v)) if v else float("nan") for g, v in per_gap.items()}
    every = [x for v in per_gap.values() for x in v]
    scores["iou"] = float(np.mean(every)) if every else float("nan")
    return scores
