"""AOT's Long Short-Term Transformer (LSTT): block and stack.

Yang, Wei and Yang, "Associating Objects with Transformers for Video Object Segmentation", NeurIPS 2021
(shared/papers/001), Sec. 4.2 (Eq. 6-7, Fig. 2c), App. A.1.1-A.1.2; official code github.com/yoxu515/aot-benchmark
(``networks/layers/transformer.py``: ``LongShortTermTransformer``, ``LongShortTermTransformerBlock``;
``networks/layers/attention.py``: ``MultiheadAttention``; ``networks/layers/basic.py``: ``GNActDWConv2d``,
``DropPath``). Parameter names and registration order are the official ones, so official state dicts load as is.

One block, on the current frame's tokens x (B, L, C), L = h*w (official order, which the paper's Fig. 2c shows):

1. self-attention: y = norm1(x); x += DropPath(SelfAttn(q = k = y + pos, v = y)), sine position ``pos``;
2. long short-term attention: y = norm2(x); Q = linear_Q(y) (the current frame's key is the same Q: the paper's
   "siamese-like matching", W^K shared between current and memory frames);
   - long-term attention (Eq. 6): softmax(Q K_m^T / sqrt(d)) V_m over all long-term memory frames' tokens, with
     K_m = linear_Q(norm2(x_m)) and V_m = linear_V(norm2(x_m) + E_m) (E = identification embedding, Eq. 4;
     ``fuse_key_value``), then ``long_term_attn.projection``;
   - short-term attention (Eq. 7): the same on a 15x15 window of the previous frame
     (:class:`voszoo.layers.local_attention.MultiheadLocalAttention`, with relative position terms as official);
   x += lt + st (with dropout max(lt_dropout, st_dropout), 0 in AOT);
3. feed-forward: y = norm3(x); x += DropPath(linear2(DWConv5x5(GELU(GroupNorm32(linear1(y)))))), the depth-wise
   5x5 convolution between the two linears "to increase the receptive field" (App. A.1.1).

The memory of a frame is, per block, K = linear_Q(norm2(x)) and V = linear_V(norm2(x) + E). On the reference frame
there is no memory yet: both attentions read the frame itself (Sec. 4.2, last paragraph), which is what
``id_emb=...`` selects. A block returns its output and the frame's un-fused (K, norm2(x)) so that the caller can
fuse them with the identification embedding of the mask predicted afterwards.

Where the paper is silent, official choices: LayerNorm everywhere; 8 heads in all attentions; feed-forward width
1024; DropPath 0.1 on the self-attention and feed-forward residuals only, the same rate for every block; attention
dropout 0; Xavier-uniform init of every block parameter with more than one dimension (this also re-initialises the
short-term attention's relative embeddings); per-layer outputs normalised by ``decoder_norms`` for the decoder; an
unused ``mask_token`` parameter (kept frozen so official checkpoints load strictly and parameter counts match).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from voszoo.layers.local_attention import MultiheadLocalAttention

__all__ = [
    "DropPath",
    "GNActDWConv",
    "LSTT",
    "LSTTBlock",
    "MultiheadAttention",
    "map_to_tokens",
    "multihead_attention",
    "tokens_to_map",
]


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h*w, C), row-major tokens."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h*w, C) -> (B, C, h, w), the inverse of :func:`map_to_tokens`; ``size = (h, w)``."""
    b, length, c = x.shape
    h, w = size
    if length != h * w:
        raise ValueError(f"tokens_to_map: {length} tokens do not fill a {h}x{w} grid")
    return x.transpose(1, 2).reshape(b, c, h, w)


def multihead_attention(query: Tensor, key: Tensor, value: Tensor, *, num_heads: int, dropout: float = 0.0) -> Tensor:
    """softmax(Q K^T / sqrt(C / heads)) V per head (Eq. 2), without projections.

    query: (B, L_q, C); key, value: (B, L_k, C). Returns (B, L_q, C), heads concatenated in channel order.
    """
    b, _, c = query.shape
    if c % num_heads:
        raise ValueError(f"multihead_attention: {c} channels do not split into {num_heads} heads")
    if key.shape[:2] != value.shape[:2] or key.shape[0] != b or key.shape[2] != c or value.shape[2] != c:
        raise ValueError(
            f"multihead_attention: query (B, L_q, C), key and value (B, L_k, C) expected, got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    q, k, v = (rearrange(x, "b l (heads d) -> b heads l d", heads=num_heads) for x in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return rearrange(out, "b heads l d -> b l (heads d)")


class MultiheadAttention(nn.Module):
    """Multi-head attention with optional Q/K/V projections and an output projection (official names
    ``linear_Q``, ``linear_K``, ``linear_V``, ``projection``).

    ``use_linear=False`` is AOT's long-term attention: its inputs are already projected by the LSTT block.
    ``forward(query (B, L_q, C), key (B, L_k, C), value (B, L_k, C)) -> (B, L_q, C)``.
    """

    def __init__(self, *, d_model: int = 256, num_heads: int = 8, dropout: float = 0.0, use_linear: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"MultiheadAttention: d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.dropout = dropout
        self.use_linear = use_linear
        if use_linear:
            self.linear_Q = nn.Linear(d_model, d_model)
            self.linear_K = nn.Linear(d_model, d_model)
            self.linear_V = nn.Linear(d_model, d_model)
        self.projection = nn.Linear(d_model, d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        if self.use_linear:
            query, key, value = self.linear_Q(query), self.linear_K(key), self.linear_V(value)
        dropout = self.dropout if self.training else 0.0
        return self.projection(multihead_attention(query, key, value, num_heads=self.num_heads, dropout=dropout))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, use_linear={self.use_linear}"


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a sample's residual branch with probability ``p`` and
    scale the kept ones by 1 / (1 - p). ``forward(x (B, ...))``; identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).add_(keep).floor_()
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GNActDWConv(nn.Module):
    """GroupNorm -> GELU -> 5x5 depth-wise convolution (no bias) on tokens (official ``GNActDWConv2d``: the
    ``activation`` between LSTT's two feed-forward linears). ``forward(x (B, h*w, C), size=(h, w)) -> (B, h*w, C)``."""

    def __init__(self, *, channels: int = 1024, groups: int = 32, kernel_size: int = 5) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return map_to_tokens(self.conv(F.gelu(self.gn(tokens_to_map(x, size)))))


class LSTTBlock(nn.Module):
    """One LSTT block (see the module docstring for the order of operations and the paper references).

    Args:
        d_model: token width C (256).
        self_heads, att_heads: heads of the self-attention and of the long/short-term attentions (8, 8).
        dim_feedforward: hidden width of the feed-forward (1024).
        window_size, dilation: short-term window (lambda = 15, Sec. 5) and its dilation.
        droppath: stochastic depth rate of the self-attention and feed-forward residuals (0.1 in training).
        lt_dropout, st_dropout: attention dropout of the long- and short-term attentions (0).
        gn_groups: groups of the feed-forward GroupNorm (32).
        local_backend: implementation of the short-term attention (see ``MultiheadLocalAttention``).
        short_term_attention: builds another short-term matcher, called as ``short_term_attention(d_model=C,
            num_heads=att_heads)``; it must map ``(query, key, value (B, C, h, w)) -> (B, h*w, C)`` (e.g.
            :class:`voszoo.layers.bilateral_matcher.BilateralShortTermAttention`). None: AOT's local attention with
            relative position embeddings (``window_size``, ``dilation``, ``st_dropout``, ``local_backend``).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        self_heads: int = 8,
        att_heads: int = 8,
        dim_feedforward: int = 1024,
        window_size: int = 15,
        dilation: int = 1,
        droppath: float = 0.1,
        lt_dropout: float = 0.0,
        st_dropout: float = 0.0,
        gn_groups: int = 32,
        local_backend: str = "auto",
        short_term_attention: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        # registration order = official state-dict order
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_Q = nn.Linear(d_model, d_model)
        self.linear_V = nn.Linear(d_model, d_model)
        self.long_term_attn = MultiheadAttention(
            d_model=d_model, num_heads=att_heads, dropout=lt_dropout, use_linear=False
        )
        if short_term_attention is None:
            self.short_term_attn: nn.Module = MultiheadLocalAttention(
                d_model=d_model,
                num_heads=att_heads,
                window_size=window_size,
                dilation=dilation,
                dropout=st_dropout,
                backend=local_backend,
            )
        else:
            self.short_term_attn = short_term_attention(d_model=d_model, num_heads=att_heads)
        self.lst_dropout = nn.Dropout(max(lt_dropout, st_dropout))
        self.norm2 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model=d_model, num_heads=self_heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = GNActDWConv(channels=dim_feedforward, groups=gn_groups)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.droppath = DropPath(droppath)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def fuse_key_value(self, key: Tensor, value: Tensor, id_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Memory key and value of a frame (Eq. 4, 6): (K, linear_V(norm2(x) + E)), all (B, L, C)."""
        return key, self.linear_V(value + id_emb)

    def forward(
        self,
        x: Tensor,
        *,
        size: tuple[int, int],
        pos: Tensor | None = None,
        long_term: tuple[Tensor, Tensor] | None = None,
        short_term: tuple[Tensor, Tensor] | None = None,
        id_emb: Tensor | None = None,
        long_term_gate: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Propagate memory into the current frame.

        Args:
            x: (B, L, C) tokens of the current frame, L = h*w with ``size = (h, w)``.
            pos: (1 or B, L, C) position embedding of the self-attention, or None.
            long_term: memory (K (B, T*L, C), V (B, T*L, C)) of the T long-term frames.
            short_term: memory (K (B, C, h, w), V (B, C, h, w)) of the previous frame.
            id_emb: (B, L, C) identification embedding of this frame's own mask: reference mode, both attentions
                read this frame (``long_term`` / ``short_term`` must then be None).
            long_term_gate: (B, L, 1) per-query scale of the long-term attention's output before the residual sum
                (MGA's motion-guided prior, ``model/prior=motion_guided``); None: 1.

        Returns:
            (output (B, L, C), key K = linear_Q(norm2(x)) (B, L, C), un-fused value norm2(x) (B, L, C)).
        """
        y = self.norm1(x)
        qk = y if pos is None else y + pos
        x = x + self.droppath(self.self_attn(qk, qk, y))

        y = self.norm2(x)
        query = self.linear_Q(y)
        if id_emb is not None:
            if long_term is not None or short_term is not None:
                raise ValueError("LSTTBlock: pass either id_emb (reference mode) or the memories, not both")
            key, value = self.fuse_key_value(query, y, id_emb)
            long_term = (key, value)
            short_term = (tokens_to_map(key, size), tokens_to_map(value, size))
        elif long_term is None or short_term is None:
            raise ValueError("LSTTBlock: without id_emb both long_term and short_term memories are required")
        lt = self.long_term_attn(query, *long_term)
        if long_term_gate is not None:
            lt = lt * long_term_gate
        st = self.short_term_attn(tokens_to_map(query, size), *short_term)
        x = x + self.lst_dropout(lt + st)

        ff = self.linear2(self.activation(self.linear1(self.norm3(x)), size))
        x = x + self.droppath(ff)
        return x, query, y


class LSTT(nn.Module):
    """A stack of ``num_layers`` :class:`LSTTBlock` (AOT-T: 1, AOT-S: 2, AOT-B/L: 3; Sec. 5 "Architecture Variants")
    with LayerNorms on the outputs passed to the decoder (``decoder_norms``).

    Block arguments are as :class:`LSTTBlock`; ``droppath_scaling`` grows the rate linearly from 0 (first block) to
    ``droppath`` (last), off in AOT. ``emb_dropout`` drops input tokens (0 in AOT). ``intermediate_norm``: normalise
    every block's output for the decoder (official ``MODEL_DECODER_INTERMEDIATE_LSTT``), ``final_norm``: the last.
    ``short_term_attention`` swaps every block's short-term matcher (``conf/model/matcher/``; see :class:`LSTTBlock`).

    ``forward(x (B, L, C), *, size, pos, long_term, short_term, id_emb, long_term_gate)`` takes per-layer memories
    (lists of the block arguments) and returns ``(outputs, frame_memories)``: the L per-layer outputs (B, L, C)
    (normalised as above) and per layer the frame's un-fused (K, norm2(x)).
    """

    def __init__(
        self,
        *,
        num_layers: int = 1,
        d_model: int = 256,
        self_heads: int = 8,
        att_heads: int = 8,
        dim_feedforward: int = 1024,
        window_size: int = 15,
        dilation: int = 1,
        droppath: float = 0.1,
        droppath_scaling: bool = False,
        lt_dropout: float = 0.0,
        st_dropout: float = 0.0,
        emb_dropout: float = 0.0,
        gn_groups: int = 32,
        intermediate_norm: bool = True,
        final_norm: bool = True,
        local_backend: str = "auto",
        short_term_attention: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LSTT: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.d_model = d_model
        self.intermediate_norm = intermediate_norm
        self.final_norm = final_norm
        self.emb_dropout = nn.Dropout(emb_dropout)
        # unused by the forward pass (an official leftover); frozen, kept for strict loading and parameter counts
        self.mask_token = nn.Parameter(torch.randn(1, 1, d_model), requires_grad=False)
        rates = [
            (droppath * i / (num_layers - 1) if num_layers > 1 else 0.0) if droppath_scaling else droppath
            for i in range(num_layers)
        ]
        self.layers = nn.ModuleList(
            LSTTBlock(
                d_model=d_model,
                self_heads=self_heads,
                att_heads=att_heads,
                dim_feedforward=dim_feedforward,
                window_size=window_size,
                dilation=dilation,
                droppath=rate,
                lt_dropout=lt_dropout,
                st_dropout=st_dropout,
                gn_groups=gn_groups,
                local_backend=local_backend,
                short_term_attention=short_term_attention,
            )
            for rate in rates
        )
        num_norms = (num_layers - 1 if intermediate_norm else 0) + (1 if final_norm else 0)
        self.decoder_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_norms)) if num_norms else None

    def fuse(self, memories: list[tuple[Tensor, Tensor]], id_emb: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer memory (K, V) of a frame from its un-fused (K, norm2(x)) and identification embedding (B, L, C)."""
        if len(memories) != self.num_layers:
            raise ValueError(f"LSTT.fuse: got {len(memories)} layer memories for {self.num_layers} layers")
        return [layer.fuse_key_value(k, v, id_emb) for layer, (k, v) in zip(self.layers, memories, strict=True)]

    def forward(
        self,
        x: Tensor,
        *,
        size: tuple[int, int],
        pos: Tensor | None = None,
        long_term: list[tuple[Tensor, Tensor]] | None = None,
        short_term: list[tuple[Tensor, Tensor]] | None = None,
        id_emb: Tensor | None = None,
        long_term_gate: Tensor | None = None,
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        for name, memory in (("long_term", long_term), ("short_term", short_term)):
            if memory is not None and len(memory) != self.num_layers:
                raise ValueError(f"LSTT: {name} holds {len(memory)} layer memories for {self.num_layers} layers")
        x = self.emb_dropout(x)
        outputs, memories = [], []
        for index, layer in enumerate(self.layers):
            x, key, value = layer(
                x,
                size=size,
                pos=pos,
                long_term=None if long_term is None else long_term[index],
                short_term=None if short_term is None else short_term[index],
                id_emb=id_emb,
                long_term_gate=long_term_gate,
            )
            outputs.append(x)
            memories.append((key, value))
        if self.decoder_norms is not None:
            if self.final_norm:
                outputs[-1] = self.decoder_norms[-1](outputs[-1])
            if self.intermediate_norm:
                for index in range(self.num_layers - 1):
                    outputs[index] = self.decoder_norms[index](outputs[index])
        return outputs, memories

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, d_model={self.d_model}"
