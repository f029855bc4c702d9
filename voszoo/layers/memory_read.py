"""STM's key/value embedding and space-time memory read.

Oh et al., "Video Object Segmentation using Space-Time Memory Networks", ICCV 2019, Sec. 3.1 "Key and Value Embedding",
Sec. 3.2 "Space-time Memory Read" (Eq. 1-2);
official implementation github.com/seoungwugoh/STM (``model.py``: ``KeyValue``, ``Memory``). The read is also
summarised in Zhou et al. (shared/papers/004, Sec. 2.1, "Space-Time Memory Reader").

Every memory position i (over T frames, H x W) is compared with every query position j by a dot product of keys;
the affinity is normalised over all memory positions (softmax over THW) and the memory values are summed with it:

    f(k^M_i, k^Q_j) = exp(k^M_i . k^Q_j / sqrt(C_k)),   read_j = sum_i f(k^M_i, k^Q_j) v^M_i / sum_i f(k^M_i, k^Q_j)

and the read is concatenated with the query value. Two details follow the official code where the paper differs:
the 1/sqrt(C_k) temperature (``p / math.sqrt(D_e)``; Eq. 2 has none), and the concatenation order [read, query
value] (``torch.cat([mem, q_out])``; Eq. 1 writes [query value, read]), which official checkpoints depend on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["KeyValueProjection", "SpaceTimeMemoryRead", "space_time_memory_read", "memory_affinity"]


class KeyValueProjection(nn.Module):
    """Two parallel 3x3 convolutions embedding a feature map into a key and a value (STM Sec. 3.1).

    ``features`` (B, C_in, H, W) -> key (B, C_k, H, W), value (B, C_v, H, W). STM uses C_in = 1024 (ResNet-50
    ``res4``), C_k = 128, C_v = 512, one projection for the memory and a separate one for the query.
    """

    def __init__(self, *, in_channels: int = 1024, key_channels: int = 128, value_channels: int = 512) -> None:
        super().__init__()
        self.key = nn.Conv2d(in_channels, key_channels, kernel_size=3, padding=1)
        self.value = nn.Conv2d(in_channels, value_channels, kernel_size=3, padding=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.key(features), self.value(features)


def _check_shapes(memory_key: Tensor, memory_value: Tensor, query_key: Tensor, query_value: Tensor | None) -> None:
    if memory_key.ndim != 5 or memory_value.ndim != 5:
        raise ValueError(
            "space-time memory read: memory_key and memory_value must be (B, C, T, H, W), got "
            f"{tuple(memory_key.shape)} and {tuple(memory_value.shape)}"
        )
    b, ck, t, h, w = memory_key.shape
    if memory_value.shape[0] != b or memory_value.shape[2:] != memory_key.shape[2:]:
        raise ValueError(
            f"space-time memory read: memory_value {tuple(memory_value.shape)} does not match memory_key "
            f"{tuple(memory_key.shape)} in B, T, H, W"
        )
    if query_key.ndim != 4 or query_key.shape[:2] != (b, ck):
        raise ValueError(
            f"space-time memory read: query_key must be (B={b}, C_k={ck}, H, W), got {tuple(query_key.shape)}"
        )
    if query_value is not None and (
        query_value.ndim != 4 or query_value.shape[0] != b or query_value.shape[2:] != query_key.shape[2:]
    ):
        raise ValueError(
            f"space-time memory read: query_value must be (B={b}, C, {query_key.shape[2]}, {query_key.shape[3]}), "
            f"got {tuple(query_value.shape)}"
        )


def memory_affinity(memory_key: Tensor, query_key: Tensor, *, attn_bias: Tensor | None = None) -> Tensor:
    """The explicit affinity of the read: (B, HW_q, THW) rows summing to 1 over memory positions.

    memory_key: (B, C_k, T, H, W); query_key: (B, C_k, H_q, W_q); attn_bias: added to the logits before the
    softmax, broadcastable to (B, HW_q, THW) (see :func:`space_time_memory_read`). For inspection and tests; the
    read itself never materialises it outside ``scaled_dot_product_attention``.
    """
    k = memory_key.flatten(2).transpose(1, 2)  # (B, THW, C_k)
    q = query_key.flatten(2).transpose(1, 2)  # (B, HW, C_k)
    logits = q @ k.transpose(1, 2) / memory_key.shape[1] ** 0.5  # (B, HW, THW)
    if attn_bias is not None:
        logits = logits.masked_fill(~attn_bias, float("-inf")) if attn_bias.dtype == torch.bool else logits + attn_bias
    return logits.softmax(dim=-1)


def space_time_memory_read(
    memory_key: Tensor,
    memory_value: Tensor,
    query_key: Tensor,
    query_value: Tensor | None = None,
    *,
    attn_bias: Tensor | None = None,
) -> Tensor:
    """Read the memory for every query position (STM Eq. 1-2) and concatenate the query value.

    Args:
        memory_key: (B, C_k, T, H, W); memory_value: (B, C_v, T, H, W).
        query_key: (B, C_k, H_q, W_q); query_value: (B, C_q, H_q, W_q) or None (return the read alone).
        attn_bias: optional prior on the affinity, in the query-major layout of
            :func:`torch.nn.functional.scaled_dot_product_attention`: broadcastable to (B, H_q*W_q, T*H*W), query
            positions j on dim 1, memory positions i (flattened t, y, x) on dim 2. A float bias is added to the logits
            before the softmax over memory positions, so a multiplicative prior ``w_ij`` on the affinity is
            ``attn_bias = log(w)`` (renormalised by the softmax; a prior constant over memory positions, such as
            MGA's per-query prior, therefore cancels: see :mod:`voszoo.layers.motion_guided`); a bool mask keeps
            positions where True.

    Returns:
        (B, C_v + C_q, H_q, W_q): the read then the query value, channel-concatenated (B, C_v, H_q, W_q if
        ``query_value`` is None).
    """
    _check_shapes(memory_key, memory_value, query_key, query_value)
    k = rearrange(memory_key, "b c t h w -> b (t h w) c")
    v = rearrange(memory_value, "b c t h w -> b (t h w) c")
    q = rearrange(query_key, "b c h w -> b (h w) c")
    if attn_bias is not None and attn_bias.dtype != torch.bool:
        attn_bias = attn_bias.to(q.dtype)
    read = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # (B, HW, C_v), scale 1/sqrt(C_k)
    read = rearrange(read, "b (h w) c -> b c h w", h=query_key.shape[2])
    if query_value is None:
        return read
    return torch.cat([read, query_value], dim=1)


class SpaceTimeMemoryRead(nn.Module):
    """Module form of :func:`space_time_memory_read` (no parameters), so that a model's reader is a swappable slot.

    ``forward(memory_key (B, C_k, T, H, W), memory_value (B, C_v, T, H, W), query_key (B, C_k, H, W),
    query_value (B, C_q, H, W) | None, *, attn_bias=None) -> (B, C_v + C_q, H, W)``.
    """

    def forward(
        self,
        memory_key: Tensor,
        memory_value: Tensor,
        query_key: Tensor,
        query_value: Tensor | None = None,
        *,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        return space_time_memory_read(memory_key, memory_value, query_key, query_value, attn_bias=attn_bias)
