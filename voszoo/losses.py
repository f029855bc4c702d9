"""Training losses shared by the voszoo methods, and the criterion module that combines them.

- :func:`bootstrapped_cross_entropy`: cross-entropy over the hardest ``ratio`` of each frame's pixels (Wu et al.
  2016, "Bridging category-level and instance-level semantic image segmentation"). AOT (Yang et al., NeurIPS 2021,
  App. A.1) and BATMAN use 15 % (AOT: 0.5 x this + 0.5 x soft Jaccard); MUNet (shared/papers/002, Sec. 3.4, Eq. 4)
  uses 40 %; ``ratio = 1`` is the plain cross-entropy that STM trains with (Oh et al., ICCV 2019).
- :func:`soft_jaccard_loss`: 1 - soft IoU per class, as AOT's official ``SoftJaccordLoss`` (Tversky loss with
  alpha = beta = 1 over the classes present in the ground truth, ignore pixels excluded).
- :func:`mask_iou_loss`: MUNet's mask-IoU loss (Eq. 4): 1 - sum_p min(M, M^) / sum_p max(M, M^) per object.
- :func:`flow_mse`: BATMAN's flow-calibration regulariser (shared/papers/000, Sec. 3.3): MSE between two flows.

Note on MUNet's Eq. 4 as printed: its BsCE term lacks the leading minus sign of a cross-entropy; the loss it
describes (and voszoo's) is the usual negative log-likelihood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX",
    "SegmentationCriterion",
    "bootstrapped_cross_entropy",
    "flow_mse",
    "mask_iou_loss",
    "soft_jaccard_loss",
]

IGNORE_INDEX = 255


def _check(logits: Tensor, labels: Tensor, ignore_index: int, name: str) -> Tensor:
    """Validate (M, C, H, W) logits against (M, H, W) labels; return the valid-pixel mask (M, H, W)."""
    if (
        logits.ndim != 4
        or labels.ndim != 3
        or logits.shape[0] != labels.shape[0]
        or logits.shape[2:] != labels.shape[1:]
    ):
        raise ValueError(
            f"{name}: logits must be (M, C, H, W) and labels (M, H, W) with the same M, H, W; got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    valid = labels != ignore_index
    if valid.any():
        top = int(labels[valid].max())
        low = int(labels[valid].min())
        if top >= logits.shape[1] or low < 0:
            raise ValueError(
                f"{name}: labels hold ids in [{low}, {top}] but logits have only {logits.shape[1]} channels "
                f"(background + {logits.shape[1] - 1} objects); ignore id is {ignore_index}"
            )
    return valid


def bootstrapped_cross_entropy(
    logits: Tensor, labels: Tensor, *, ratio: float = 0.15, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Mean cross-entropy of the hardest pixels: per frame, the ceil(ratio * V) pixels of largest loss among its V
    non-ignored pixels; the mean is over all selected pixels of all frames (so ``ratio = 1`` is exactly
    ``F.cross_entropy(logits, labels, ignore_index=ignore_index)``).

    logits: (M, C, H, W) raw scores; labels: (M, H, W) int in [0, C) or ``ignore_index``. Returns a scalar (0 with a
    graph if no pixel is valid).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"bootstrapped_cross_entropy: ratio must be in (0, 1], got {ratio}")
    valid = _check(logits, labels, ignore_index, "bootstrapped_cross_entropy").flatten(1)  # (M, HW)
    pixel = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none").flatten(1)
    num_valid = valid.sum(dim=1)  # (M,)
    if int(num_valid.sum()) == 0:
        return logits.sum() * 0.0
    if ratio == 1.0:
        return pixel.sum() / num_valid.sum()
    k = torch.ceil(num_valid.to(torch.float64) * ratio).long()  # (M,), 0 where no pixel is valid
    # ignored pixels sort last (a cross-entropy is >= 0)
    ordered, _ = torch.sort(pixel.masked_fill(~valid, -1.0), dim=1, descending=True)
    rank = torch.arange(ordered.shape[1], device=ordered.device)
    selected = rank[None, :] < k[:, None]
    return (ordered * selected).sum() / selected.sum()


def soft_jaccard_loss(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """1 - soft IoU of the softmax probabilities with the one-hot labels, per frame and class.

    For each frame, every class c (background included) present among its valid pixels contributes
    1 - I / (sum p_c + sum g_c - I) with I = sum p_c g_c over valid pixels; the frame's loss is the mean over those
    classes (AOT's choice: classes absent from the ground truth are skipped), and the result is the mean over frames
    with at least one valid pixel.

    logits: (M, C, H, W); labels: (M, H, W). Returns a scalar.
    """
    valid = _check(logits, labels, ignore_index, "soft_jaccard_loss").flatten(1)  # (M, HW)
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).flatten(2) * valid[:, None]  # (M, C, HW)
    clean = labels.long().flatten(1).masked_fill(~valid, 0)
    target = F.one_hot(clean, num_classes).permute(0, 2, 1).to(probs.dtype) * valid[:, None]  # (M, C, HW)
    intersection = (probs * target).sum(-1)
    union = probs.sum(-1) + target.sum(-1) - intersection
    present = target.sum(-1) > 0  # (M, C)
    per_class = 1.0 - intersection / union.clamp_min(1e-12)
    per_frame = (per_class * present).sum(1) / present.sum(1).clamp_min(1)
    frames = valid.any(dim=1)
    if not bool(frames.any()):
        return logits.sum() * 0.0
    return per_frame[frames].mean()


def mask_iou_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    num_objects: Tensor,
    ignore_index: int = IGNORE_INDEX,
    eps: float = 1e-6,
) -> Tensor:
    """MUNet's mask-IoU loss (shared/papers/002, Sec. 3.4, Eq. 4), per object then averaged.

    For frame m and object i in 1..num_objects[m], with M^ the softmax probability of channel i and M = [label == i]
    over the valid pixels: 1 - (sum min(M, M^) + eps) / (sum max(M, M^) + eps). ``eps`` (not in the paper) makes an
    object absent from both prediction and label cost 0. The result is the mean over all (frame, object) pairs.

    logits: (M, C, H, W); labels: (M, H, W); num_objects: (M,) int, <= C - 1. Returns a scalar (0 with a graph if
    no frame has objects).
    """
    valid = _check(logits, labels, ignore_index, "mask_iou_loss").flatten(1)  # (M, HW)
    num_objects = torch.as_tensor(num_objects, device=logits.device).long()
    if tuple(num_objects.shape) != (logits.shape[0],):
        raise ValueError(f"mask_iou_loss: num_objects must be ({logits.shape[0]},), got {tuple(num_objects.shape)}")
    if num_objects.numel() and int(num_objects.max()) > logits.shape[1] - 1:
        raise ValueError(
            f"mask_iou_loss: num_objects up to {int(num_objects.max())} but logits hold {logits.shape[1] - 1} objects"
        )
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).flatten(2)[:, 1:] * valid[:, None]  # (M, C-1, HW)
    clean = labels.long().flatten(1).masked_fill(~valid, 0)
    target = F.one_hot(clean, num_classes).permute(0, 2, 1)[:, 1:].to(probs.dtype) * valid[:, None]
    intersection = torch.minimum(probs, target).sum(-1)
    union = torch.maximum(probs, target).sum(-1)
    per_object = 1.0 - (intersection + eps) / (union + eps)  # (M, C-1)
    counted = torch.arange(1, num_classes, device=logits.device)[None, :] <= num_objects[:, None]
    if not bool(counted.any()):
        return logits.sum() * 0.0
    return per_object[counted].mean()


def flow_mse(prediction: Tensor, target: Tensor, *, valid: Tensor | None = None) -> Tensor:
    """Mean squared error between two flow fields (B, 2, H, W), over both components and the valid pixels.

    valid: optional (B, H, W) bool. BATMAN regularises its calibrated flow towards the initial RAFT flow with it.
    """
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"flow_mse: prediction and target must both be (B, 2, H, W), got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    squared = (prediction - target).square()
    if valid is None:
        return squared.mean()
    if tuple(valid.shape) != (prediction.shape[0], *prediction.shape[2:]):
        raise ValueError(f"flow_mse: valid must be (B, H, W) = {(prediction.shape[0], *prediction.shape[2:])}")
    weight = valid[:, None].to(squared.dtype).expand_as(squared)
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)


class SegmentationCriterion(nn.Module):
    """Weighted sum of bootstrapped cross-entropy, soft Jaccard and mask-IoU losses over a clip's predicted frames.

    Args:
        bootstrap_ratio: fraction of hardest pixels kept per frame by the cross-entropy (1.0 = plain CE).
        bootstrap_warmup: fraction of the run over which the kept fraction falls linearly from 1 (plain CE) to
            ``bootstrap_ratio``; 0 = ``bootstrap_ratio`` from the first step. AOT's official training (and so
            BATMAN's, built on it) uses 0.5 (``TRAIN_HARD_MINING_RATIO``: hard-example mining reaches its 15 % at
            half of ``TRAIN_TOTAL_STEPS``); the trainer reports the progress through :meth:`set_training_progress`.
        ce_weight, jaccard_weight, iou_weight: weights of the three terms; a term of weight 0 is not computed.
        ignore_index: label of pixels that take no part in any loss.

    ``forward(logits (B, T, N+1, H, W), labels (B, T, H, W), *, num_objects (B,))`` returns ``{"loss": total,
    "loss_ce": ..., "loss_jaccard": ..., "loss_iou": ...}`` (only the terms with a non-zero weight, unweighted).
    Frames are pooled: every term treats the B*T frames as one batch.
    """

    def __init__(
        self,
        *,
        bootstrap_ratio: float = 0.15,
        bootstrap_warmup: float = 0.0,
        ce_weight: float = 1.0,
        jaccard_weight: float = 0.0,
        iou_weight: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if not 0.0 < bootstrap_ratio <= 1.0:
            raise ValueError(f"SegmentationCriterion: bootstrap_ratio must be in (0, 1], got {bootstrap_ratio}")
        weights = {"ce_weight": ce_weight, "jaccard_weight": jaccard_weight, "iou_weight": iou_weight}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"SegmentationCriterion: loss weights must be >= 0, got {negative}")
        if not any(weights.values()):
            raise ValueError(f"SegmentationCriterion: at least one loss weight must be > 0, got {weights}")
        if not 0.0 <= bootstrap_warmup <= 1.0:
            raise ValueError(f"SegmentationCriterion: bootstrap_warmup must be in [0, 1], got {bootstrap_warmup}")
        self.bootstrap_ratio = bootstrap_ratio
        self.bootstrap_warmup = bootstrap_warmup
        self.progress = 1.0  # share of the run done; outside a trainer the warm-up is over
        self.ce_weight = ce_weight
        self.jaccard_weight = jaccard_weight
        self.iou_weight = iou_weight
        self.ignore_index = ignore_index

    def set_training_progress(self, step: int, total_steps: int) -> None:
        """Called by the trainer before every step (:class:`voszoo.engine.Trainer`): ``step`` of ``total_steps``."""
        self.progress = step / max(total_steps, 1)

    @property
    def current_bootstrap_ratio(self) -> float:
        """The kept fraction at the current progress: ``q * bootstrap_ratio + (1 - q)``, q = min(1, progress /
        bootstrap_warmup) (1 without a warm-up)."""
        if self.bootstrap_warmup == 0.0:
            return self.bootstrap_ratio
        done = min(1.0, self.progress / self.bootstrap_warmup)
        return done * self.bootstrap_ratio + (1.0 - done)

    def forward(self, logits: Tensor, labels: Tensor, *, num_objects: Tensor) -> dict[str, Tensor]:
        if logits.ndim != 5 or labels.ndim != 4 or logits.shape[:2] != labels.shape[:2]:
            raise ValueError(
                "SegmentationCriterion: logits must be (B, T, N+1, H, W) and labels (B, T, H, W); got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        b, t = labels.shape[:2]
        flat_logits = logits.flatten(0, 1)
        flat_labels = labels.flatten(0, 1)
        losses: dict[str, Tensor] = {}
        total = logits.new_zeros(())
        if self.ce_weight:
            losses["loss_ce"] = bootstrapped_cross_entropy(
                flat_logits, flat_labels, ratio=self.current_bootstrap_ratio, ignore_index=self.ignore_index
            )
            total = total + self.ce_weight * losses["loss_ce"]
        if self.jaccard_weight:
            losses["loss_jaccard"] = soft_jaccard_loss(flat_logits, flat_labels, ignore_index=self.ignore_index)
            total = total + self.jaccard_weight * losses["loss_jaccard"]
        if self.iou_weight:
            per_frame_objects = torch.as_tensor(num_objects, device=logits.device).long().repeat_interleave(t)
            if per_frame_objects.shape[0] != b * t:
                raise ValueError(f"SegmentationCriterion: num_objects must be ({b},), got {tuple(num_objects.shape)}")
            losses["loss_iou"] = mask_iou_loss(
                flat_logits, flat_labels, num_objects=per_frame_objects, ignore_index=self.ignore_index
            )
            total = total + self.iou_weight * losses["loss_iou"]
        return {"loss": total, **losses}

    def extra_repr(self) -> str:
        return (
            f"bootstrap_ratio={self.bootstrap_ratio}, bootstrap_warmup={self.bootstrap_warmup}, "
            f"ce_weight={self.ce_weight}, jaccard_weight={self.jaccard_weight}, iou_weight={self.iou_weight}"
        )
