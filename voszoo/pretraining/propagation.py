"""Label-propagation pre-training: teach an image encoder the feature matching that a space-time memory read needs.

Every VOS method here segments a frame by reading a memory of earlier frames and their masks through feature
affinities: STM's read (Oh et al., ICCV 2019, Sec. 3.2, Eq. 1), AOT's long-term attention (Yang et al., NeurIPS 2021,
Sec. 4.2, Eq. 3), SITVOS's and BATMAN's variants. That works only if features of the same object point in two frames
are similar and features of other objects and of look-alike distractors are not; the papers get this from ImageNet
pre-training, which cannot be downloaded here. This objective trains it directly, with the read itself as the
predictor (as the label-propagation evaluations of self-supervised correspondence do, e.g. Jabri et al., NeurIPS
2020, but supervised here by ToyVOS's exact instance ids):

    p_i = sum_j softmax_j(<q_i, m_j> / tau) y_j                        (q_i, m_j: L2-normalised embeddings)
    L   = mean over (sample, class c present in the query) of  sum_i y_ic (-log p_ic) / sum_i y_ic

for every query frame t >= 1 of a clip, whose memory is frames 0..t-1 with their labels. ``y`` are the class
fractions of each feature cell (the label map area-pooled to the grid; void counts for no class); classes are
background (which holds the unannotated distractors) and the clip's objects. The class-balanced mean keeps the
background, most of every grid, from swamping the objects. Each feature scale gets its own 1x1 projection head (as
the methods' key projections), dropped after pre-training: only the encoder is kept.

Choices (no paper prescribes this stage; exposed as arguments): scales s16 (where every method matches) and s8 (the
skip features decoders read), embedding width 64, temperature 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.types import Clip

__all__ = ["PropagationPretrainer", "class_fractions", "propagation_loss"]

VOID = 255


def class_fractions(labels: Tensor, *, num_classes: int, size: tuple[int, int]) -> Tensor:
    """(..., H, W) int64 label maps (0..num_classes-1, 255 void) -> (..., num_classes, h, w) float fractions of each
    class per cell of an (h, w) grid (area pooling; a cell's fractions sum to 1 minus its void share)."""
    lead = labels.shape[:-2]
    flat = labels.reshape(-1, *labels.shape[-2:])
    void = flat == VOID
    if bool(((flat >= num_classes) & ~void).any()):
        raise ValueError(f"class_fractions: labels hold ids >= num_classes={num_classes} that are not void ({VOID})")
    onehot = F.one_hot(torch.where(void, num_classes, flat), num_classes + 1)[..., :num_classes]
    pooled = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), size)
    return pooled.reshape(*lead, num_classes, *size)


def propagation_loss(
    query: Tensor, memory: Tensor, query_labels: Tensor, memory_labels: Tensor, *, temperature: float
) -> Tensor:
    """The class-balanced label-propagation loss of the module docstring.

    query: (B, D, h, w) and memory: (B, M, D, h', w') L2-normalised embeddings; query_labels: (B, C, h, w) and
    memory_labels: (B, M, C, h', w') class fractions (:func:`class_fractions`). Returns a 0-dim tensor: the mean over
    (sample, class present in the query) of the fraction-weighted cross-entropy of the propagated label distribution.
    """
    q = query.flatten(2).transpose(1, 2)  # (B, N, D)
    m = memory.transpose(1, 2).flatten(2)  # (B, D, M h' w')
    attention = torch.softmax(torch.bmm(q, m) / temperature, dim=-1)  # (B, N, M h' w')
    y_memory = memory_labels.transpose(1, 2).flatten(2).transpose(1, 2)  # (B, M h' w', C)
    propagated = torch.bmm(attention, y_memory)  # (B, N, C)
    y_query = query_labels.flatten(2).transpose(1, 2)  # (B, N, C)
    nll = -torch.log(propagated.clamp_min(1e-6))
    per_class_mass = y_query.sum(1)  # (B, C)
    per_class_loss = (y_query * nll).sum(1) / per_class_mass.clamp_min(1e-6)
    present = per_class_mass > 1e-3
    if not bool(present.any()):
        return query.sum() * 0.0
    return per_class_loss[present].mean()


class PropagationPretrainer(nn.Module):
    """An encoder plus per-scale projection heads, trained by :func:`propagation_loss` on clips.

    Arguments (keyword-only):
        encoder: built image encoder, ``image (B, 3, H, W) -> {scale: (B, C_s, H/s, W/s)}`` with a ``channels``
            dict (e.g. :class:`voszoo.backbones.ResNetBackbone`); the part that is kept.
        scales: feature scales the loss is applied at (each its own head and an equal share of the loss).
        embed_dim: width D of the projection heads (1x1 convolutions).
        temperature: tau of the affinity softmax.

    ``forward(clip)`` takes a :class:`voszoo.types.Clip` (B, T >= 2 frames) and returns ``{"loss", "loss_<scale>"}``.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        scales: Sequence[str] = ("s16", "s8"),
        embed_dim: int = 64,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        channels = getattr(encoder, "channels", None)
        if not isinstance(channels, dict):
            raise ValueError("PropagationPretrainer: encoder must have a `channels` dict {scale: channels}")
        unknown = [s for s in scales if s not in channels]
        if not scales or unknown:
            raise ValueError(
                f"PropagationPretrainer: scales {list(scales)} must be a non-empty subset of {list(channels)}"
            )
        if embed_dim < 1:
            raise ValueError(f"PropagationPretrainer: embed_dim must be >= 1, got {embed_dim}")
        if temperature <= 0:
            raise ValueError(f"PropagationPretrainer: temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.scales = tuple(scales)
        self.temperature = float(temperature)
        self.heads = nn.ModuleDict({s: nn.Conv2d(channels[s], embed_dim, kernel_size=1) for s in self.scales})

    def embed(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised images -> {scale: (B, D, h, w) L2-normalised embeddings}."""
        maps = self.encoder(images)
        return {s: F.normalize(self.heads[s](maps[s]), dim=1) for s in self.scales}

    def forward(self, clip: Clip) -> dict[str, Tensor]:
        batch, frames = clip.images.shape[:2]
        if frames < 2:
            raise ValueError(f"PropagationPretrainer: clips need >= 2 frames, got {frames}")
        valid = clip.labels[clip.labels != VOID]
        num_classes = int(valid.max()) + 1 if valid.numel() else 1
        embeddings = self.embed(clip.images.flatten(0, 1))
        out: dict[str, Tensor] = {}
        for scale, embedding in embeddings.items():
            embedding = embedding.unflatten(0, (batch, frames))
            fractions = class_fractions(clip.labels, num_classes=num_classes, size=tuple(embedding.shape[-2:]))
            terms = [
                propagation_loss(
                    embedding[:, t], embedding[:, :t], fractions[:, t], fractions[:, :t], temperature=self.temperature
                )
                for t in range(1, frames)
            ]
            out[f"loss_{scale}"] = torch.stack(terms).mean()
        out["loss"] = torch.stack(list(out.values())).mean()
        return out
