"""Soft aggregation of per-object foreground probabilities into one multi-object distribution.

Oh et al., "Video Object Segmentation using Space-Time Memory Networks", ICCV 2019, Sec. 3.4 "Multi-object
Segmentation" (the soft aggregation of RGMP, Oh et al. CVPR 2018); official code github.com/seoungwugoh/STM
``model.py``, ``Soft_aggregation``. Each object i was segmented independently into a foreground probability p_i.
The background probability is the chance that no object claims the pixel, p_0 = prod_i (1 - p_i); every
probability is clamped to [eps, 1 - eps] (official eps = 1e-7) and turned into a logit l_k = log(p_k / (1 - p_k)).
A softmax over the N+1 logits gives the merged distribution: softmax(l)_k is proportional to the odds
p_k / (1 - p_k).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_aggregate"]


def soft_aggregate(probs: Tensor, *, eps: float = 1e-7, present: Tensor | None = None) -> Tensor:
    """Per-object foreground probabilities -> multi-object logits, background first.

    Args:
        probs: (B, N, H, W) foreground probability of each object, in [0, 1].
        eps: clamp bound; logits lie in [logit(eps), logit(1 - eps)] (about +-16.1 for 1e-7).
        present: optional (B, N) bool; objects marked False (padding slots of samples with fewer objects) get
            probability 0 before aggregation, exactly like the zero padding of the official code.

    Returns:
        logits (B, N+1, H, W), channel 0 the background.
    """
    if probs.ndim != 4:
        raise ValueError(f"soft_aggregate: probs must be (B, N, H, W), got {tuple(probs.shape)}")
    if present is not None:
        if tuple(present.shape) != tuple(probs.shape[:2]):
            raise ValueError(
                f"soft_aggregate: present must be {tuple(probs.shape[:2])} (B, N) to match probs, "
                f"got {tuple(present.shape)}"
            )
        probs = probs * present.to(probs.dtype)[:, :, None, None]
    background = torch.prod(1.0 - probs, dim=1, keepdim=True)
    merged = torch.cat([background, probs], dim=1).clamp(eps, 1.0 - eps)
    return torch.log(merged / (1.0 - merged))
