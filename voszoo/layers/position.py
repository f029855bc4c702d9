"""Sine position embedding of a 2-D feature grid.

AOT (Yang, Wei and Yang, "Associating Objects with Transformers for Video Object Segmentation", NeurIPS 2021;
shared/papers/001) adds a position embedding to the query and key of each LSTT block's self-attention (Sec. 4.2,
Fig. 2c). The paper does not define it; voszoo follows the official code (github.com/yoxu515/aot-benchmark,
``networks/layers/position.py``, ``PositionEmbeddingSine`` built with ``normalize=True`` and half the model width):

- coordinates start at 0: row y in 0..H-1 and column x in 0..W-1 (DETR's version counts from 1);
- with ``normalize``, y / (y_max + eps) * scale and x / (x_max + eps) * scale (eps = 1e-6, scale = 2 pi), so the
  last row and column sit at 2 pi whatever the grid size;
- for feature k in 0..F-1 the frequency is temperature ** (2 * (k // 2) / F); even features take the sine, odd ones
  the cosine; the output stacks the F row features, then the F column features: (1, 2F, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinePositionEmbedding", "sine_position_embedding"]


def sine_position_embedding(
    height: int,
    width: int,
    *,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The (1, 2 * num_pos_feats, height, width) sine embedding of a height x width grid (see the module docstring)."""
    if num_pos_feats < 2 or num_pos_feats % 2:
        raise ValueError(f"sine_position_embedding: num_pos_feats must be even and >= 2, got {num_pos_feats}")
    if height < 1 or width < 1:
        raise ValueError(f"sine_position_embedding: the grid must be at least 1x1, got {height}x{width}")
    y = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(height, width)
    x = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(height, width)
    if normalize:
        eps = 1e-6
        y = y / (y[-1:, :] + eps) * scale
        x = x / (x[:, -1:] + eps) * scale
    k = torch.arange(num_pos_feats, device=device, dtype=torch.float32)
    frequency = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_pos_feats)  # (F,)

    def encode(coordinate: Tensor) -> Tensor:
        phase = coordinate[..., None] / frequency  # (H, W, F)
        return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)  # sin, cos, ...

    pos = torch.cat((encode(y), encode(x)), dim=-1)  # (H, W, 2F)
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype)


class SinePositionEmbedding(nn.Module):
    """Module form of :func:`sine_position_embedding`: ``forward(x (B, C, H, W)) -> (1, 2F, H, W)`` in x's dtype.

    Only the grid size, device and dtype of ``x`` are used. AOT builds it with ``num_pos_feats = d_model / 2`` so that
    the embedding has the model width.
    """

    def __init__(
        self,
        *,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("SinePositionEmbedding: a scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor) -> Tensor:
        return sine_position_embedding(
            int(x.shape[-2]),
            int(x.shape[-1]),
            num_pos_feats=self.num_pos_feats,
            temperature=self.temperature,
            normalize=self.normalize,
            scale=self.scale,
            device=x.device,
            dtype=x.dtype,
        )

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}"
