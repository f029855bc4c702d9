"""SITVOS's interactive transformer: single-head attention blocks and the feature interaction module (FIM).

Lan, Zhang, He and Zhang, "Siamese Network with Interactive Transformer for Video Object Segmentation", AAAI 2022
(shared/papers/003), Sec. 3.3, Eq. 1-4; official code github.com/LANMNG/SITVOS (``model/transformer.py``:
``MultiHeadAttention``, ``CrossAttention``; ``model/model.py``: ``Memory``).

Every block is one single-head scaled dot-product attention with a residual connection and a LayerNorm after it,
and no feed-forward network (Sec. 3.3, "Third, ..."):

    Attention(Q, K, V) = softmax(Q K^T / temperature) V                   (Eq. 1, temperature = sqrt(d_k))
    block(x, y, z)     = LN(Attention(x W^Q, y W^K, z W^V) + x)

With the memory embedding M_ori (T*H*W tokens of the past frames), the query embedding Q_ori (H*W tokens of the
current frame) and the mask embedding M_E (same tokens as M_ori):

    M_SA  = block_enc(M_ori, M_ori, M_ori)                               encoder self-attention
    Q_SA  = block_dec(Q_ori, Q_ori, Q_ori)                               decoder self-attention
    M_x   = M_E * M_ori                                                  (element-wise)
    M_out = LN(Attention(M_SA W^Q, Q_SA W^K, Q_SA W^V) + M_SA)           FIM, encoder branch (Eq. 3)
    Q_out = LN(Attention(Q_SA W^Q, M_SA W^K, M_x W^V) + Q_SA)            FIM, decoder branch (Eq. 4)
    T_out = LN(Attention(Q_out W^Q, M_out W^K, M_out W^V) + Q_out)       decoder cross-attention (Eq. 2)

Paper vs official code (the defaults here are the paper's, and the official code's where the paper is silent;
each difference is an argument):

- C = 256 and d_k = 64 in the paper; the official code embeds into C = 128 (``D_e``) with d_k = 64 and a fixed
  temperature of 8 (= sqrt(64)): ``channels``, ``key_channels``, ``temperature``;
- the paper projects every value with W^V (C x C); the official cross-attention blocks (``CrossAttention``) have
  no value projection (only the two self-attention blocks do): ``cross_value_projection``;
- the official code applies one LayerNorm module to all three cross-attention blocks (``Memory.layer_norm``):
  ``shared_cross_norm``; its self-attention LayerNorms use eps 1e-6, the cross-attention one 1e-5 (followed here);
- the official code drops attention weights with p = 0.01 during training: ``dropout``;
- projections have no bias (official ``nn.Linear(..., bias=False)``; the paper writes plain matrices W).

Without FIM (``fim=False``, Table 3 "SITVOS w/o FIM"): the paper does not spell this variant out. voszoo keeps the
two self-attention blocks and one decoder cross-attention in which the query attends to the encoder output and
reads the mask-filtered memory, T_out = LN(Attention(Q_SA W^Q, M_SA W^K, M_x W^V) + Q_SA) (the mask embedding
must enter somewhere; this is Eq. 4 used as the output).

Objects: everything except the M_x value is object-independent. :class:`InteractiveTransformer` takes the mask
embeddings of K objects at once, computes M_SA, Q_SA and M_out once per sample and only the object-dependent
attention per object (the official code recomputes all of it per object; the results are the same).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionBlock", "InteractiveTransformer"]


class AttentionBlock(nn.Module):
    """One single-head attention block with residual and LayerNorm (SITVOS Sec. 3.3, Eq. 1-4).

    ``forward(query (B, L_q, C), key (B, L_k, C), value (B, L_k, C)) -> (B, L_q, C)``:
    ``LN(softmax((query W^Q)(key W^K)^T / temperature) (value W^V) + query)``.

    Args:
        channels: C, the token width of query, key and value (paper 256, official code 128).
        key_channels: d_k, the width of the projected query and key (64 in both).
        value_projection: apply W^V (C x C); False uses the value tokens as they are (official cross-attention).
        temperature: divisor of the logits; None = sqrt(key_channels) (Eq. 1; the official code's 8 for d_k = 64).
        dropout: dropout on the attention weights during training (official: 0.01; the paper is silent).
        norm_eps: eps of the block's own LayerNorm (official: 1e-6 for self-attention, 1e-5 for cross-attention).
        norm: an existing LayerNorm to use instead of a new one (shared by several blocks, as the official
            cross-attention blocks share one).
    """

    def __init__(
        self,
        *,
        channels: int,
        key_channels: int = 64,
        value_projection: bool = True,
        temperature: float | None = None,
        dropout: float = 0.01,
        norm_eps: float = 1e-5,
        norm: nn.LayerNorm | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or key_channels < 1:
            raise ValueError(f"AttentionBlock: channels and key_channels must be >= 1, got {channels}, {key_channels}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"AttentionBlock: temperature must be > 0 or None, got {temperature}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AttentionBlock: dropout must be in [0, 1), got {dropout}")
        if norm is not None and tuple(norm.normalized_shape) != (channels,):
            raise ValueError(
                f"AttentionBlock: the shared norm normalises {tuple(norm.normalized_shape)}, expected ({channels},)"
            )
        self.channels = channels
        self.key_channels = key_channels
        self.temperature = float(temperature) if temperature is not None else math.sqrt(key_channels)
        self.dropout = dropout
        self.to_query = nn.Linear(channels, key_channels, bias=False)
        self.to_key = nn.Linear(channels, key_channels, bias=False)
        self.to_value = nn.Linear(channels, channels, bias=False) if value_projection else None
        self.norm = norm if norm is not None else nn.LayerNorm(channels, eps=norm_eps)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.ndim != 3 or x.shape[-1] != self.channels:
                raise ValueError(f"AttentionBlock: {name} must be (B, L, C={self.channels}), got {tuple(x.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"AttentionBlock: query {tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)} "
                "must share B, and key and value their length"
            )
        q = self.to_query(query)
        k = self.to_key(key)
        v = self.to_value(value) if self.to_value is not None else value
        read = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=1.0 / self.temperature
        )
        return self.norm(read + query)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, temperature={self.temperature:g}, "
            f"value_projection={self.to_value is not None}, dropout={self.dropout}"
        )


class InteractiveTransformer(nn.Module):
    """SITVOS's interactive transformer (see the module docstring for the equations).

    Args:
        channels: C, the width of the memory, query and mask embeddings (paper 256, official code 128).
        key_channels: d_k (64).
        temperature: None = sqrt(key_channels) (official: 8).
        fim: use the feature interaction module (Eq. 3-4 then Eq. 2); False: the plain variant of Table 3.
        cross_value_projection: W^V in the cross-attention blocks (paper: yes; official code: no).
        shared_cross_norm: one LayerNorm for all cross-attention blocks (official code: yes).
        dropout: dropout on the attention weights during training (official: 0.01; the paper is silent).

    ``forward(memory (B, L_m, C), query (B, L_q, C), mask_embedding)`` with ``memory`` = M_ori (L_m = T*H*W,
    frame-major), ``query`` = Q_ori (L_q = H*W) and ``mask_embedding`` = M_E, either (B, L_m, C) for one object or
    (B, K, L_m, C) for K objects. Returns T_out, (B, L_q, C) or (B, K, L_q, C).
    """

    def __init__(
        self,
        *,
        channels: int = 256,
        key_channels: int = 64,
        temperature: float | None = None,
        fim: bool = True,
        cross_value_projection: bool = True,
        shared_cross_norm: bool = False,
        dropout: float = 0.01,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.fim = fim

        def self_block() -> AttentionBlock:
            return AttentionBlock(
                channels=channels, key_channels=key_channels, temperature=temperature, dropout=dropout, norm_eps=1e-6
            )

        cross_norm = nn.LayerNorm(channels) if shared_cross_norm else None

        def cross_block() -> AttentionBlock:
            return AttentionBlock(
                channels=channels,
                key_channels=key_channels,
                value_projection=cross_value_projection,
                temperature=temperature,
                dropout=dropout,
                norm=cross_norm,
            )

        self.memory_self = self_block()  # encoder SA: M_ori -> M_SA
        self.query_self = self_block()  # decoder SA: Q_ori -> Q_SA
        self.memory_cross = cross_block() if fim else None  # FIM, Eq. 3: M_out
        self.query_cross = cross_block() if fim else None  # FIM, Eq. 4: Q_out
        self.output_cross = cross_block()  # Eq. 2: T_out (without FIM: Q_SA reads M_x)

    def forward(self, memory: Tensor, query: Tensor, mask_embedding: Tensor) -> Tensor:
        single = mask_embedding.ndim == 3
        m_e = mask_embedding[:, None] if single else mask_embedding
        if memory.ndim != 3 or query.ndim != 3 or memory.shape[-1] != self.channels:
            raise ValueError(
                f"InteractiveTransformer: memory and query must be (B, L, C={self.channels}), "
                f"got {tuple(memory.shape)} and {tuple(query.shape)}"
            )
        if m_e.ndim != 4 or m_e.shape[0] != memory.shape[0] or m_e.shape[2:] != memory.shape[1:]:
            raise ValueError(
                f"InteractiveTransformer: mask_embedding must be (B, L_m, C) or (B, K, L_m, C) matching memory "
                f"{tuple(memory.shape)}, got {tuple(mask_embedding.shape)}"
            )
        batch, objects = m_e.shape[:2]

        def per_object(x: Tensor) -> Tensor:  # (B, L, C) -> (B*K, L, C)
            return x[:, None].expand(-1, objects, -1, -1).flatten(0, 1)

        m_sa = self.memory_self(memory, memory, memory)
        q_sa = self.query_self(query, query, query)
        m_x = (m_e * memory[:, None]).flatten(0, 1)  # (B*K, L_m, C)
        if self.memory_cross is not None and self.query_cross is not None:
            m_out = self.memory_cross(m_sa, q_sa, q_sa)
            q_out = self.query_cross(per_object(q_sa), per_object(m_sa), m_x)
            # every query token attends on its own: the K objects' queries share one call as a longer sequence
            q_out = q_out.unflatten(0, (batch, objects)).flatten(1, 2)  # (B, K*L_q, C)
            t_out = self.output_cross(q_out, m_out, m_out).unflatten(1, (objects, -1))
        else:
            t_out = self.output_cross(per_object(q_sa), per_object(m_sa), m_x).unflatten(0, (batch, objects))
        return t_out[:, 0] if single else t_out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fim={self.fim}"
