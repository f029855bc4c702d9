"""BATMAN's bilateral space encoding, bilateral attention and bilateral transformer block.

Yu et al., "BATMAN: Bilateral Attention Transformer in Motion-Appearance Neighboring Space for Video Object
Segmentation", ECCV 2022 (shared/papers/000), Sec. 3.2 (Eq. 1-3) and Sec. 4.1. No official code is public; the
paper is the specification and every choice it leaves open is named below and exposed as an argument.

**Bilateral space encoding E** (Sec. 3.2): the flow encoding and the query image encoding are concatenated along
channels and a 1x1 convolution maps them to ONE scalar per query token (:class:`BilateralSpaceEncoder`).

**Bilateral space binary mask M** (Eq. 2): key token (i, j) is kept for query token (h, w) iff |i - h| <= W_d,
|j - w| <= W_d and |rank_{h,w}(E_{h,w}) - rank_{h,w}(E_{i,j})| <= W_b, where rank_{h,w}(.) is the position of a value
in the ascending sort of the E values of the (2 W_d + 1)^2 spatial window centred on (h, w). Choices:

- ranks come from ONE stable ``argsort`` per window plus an inverse-permutation scatter (rank[perm[k]] = k), not two
  argsorts; ties are broken by the window slot order (row-major, the order of ``F.unfold``);
- window slots outside the image take no part in the sort (they are ranked after every in-image slot and always
  dropped), so a border query ranks only among the in-image tokens of its window;
- the centre slot always has rank difference 0, so no query has an empty window.

**Bilateral attention** (Eq. 1): for the kept slots the logit is q.k / sqrt(d) + E_{i,j} (the paper's device to
train E by SGD: "we compute QK^T + E if M = 1, QK^T - L if M = 0"); here the scale 1/sqrt(d) applies to q.k only
(d = C / heads, as Eq. 3's per-head attention) and the dropped slots get weight exactly 0 (the limit L -> inf)
rather than a finite -L. E_{i,j} is the query frame's encoding at the key position (the key tokens live on the same
grid). The dense HW x HW mask of Eq. 1 is never formed: the (window^2, H, W) keep mask and bias go to
:func:`voszoo.layers.local_attention.local_window_attention` (exact tiled windowed attention). The ranks are not
differentiable; the gradient reaches E through the bias.

**Multi-head** (Eq. 3): 8 heads of d = C / 8 channels, concatenated, output projection W^O. The per-head input
projections W^Q, W^K, W^V are the block's ``linear_Q`` / ``linear_K`` / ``linear_V`` (the memory keys and values are
stored projected, as in AOT); ``use_linear=True`` adds the attention's own projections. By default W^K IS W^Q
(``separate_key=False``: AOT's tying, memory keys = linear_Q(LN(x)) of the memorised frame); ``separate_key=True``
gives the block its own W^K (``linear_K``), Eq. 3's separate W_i^K. Cross-attention and bilateral attention read the
same stored memory keys, so one W^K serves both, as W^Q and W^V already do.

**Multi-reference** (Sec. 3.2: "K and V are aggregated from multiple reference frames"): with
``multi_reference=True`` the bilateral attention takes the keys and values of T reference frames, (B, C, T, H, W),
and every query attends to its Eq. 2 window in each of them under ONE softmax over the T x (2 W_d + 1)^2 slots. The
paper defines E and M on the query frame's grid only (E holds one scalar per query-frame token), so the same mask
and the same bias E_{i,j} apply to the key at (i, j) of every reference frame. ``multi_reference=False`` (default)
reads one frame, (B, C, H, W), and a T-frame memory given to it is an error.

**Bilateral transformer block** (Sec. 3.2, Fig. 2; :class:`BilateralBlock`): self-attention over the query frame
with a sine position embedding added to its queries and keys (AOT's convention; the paper says the embedding is
added "followed by" the self-attention without saying where), then global cross-attention over the reference frames'
memory and bilateral attention over the previous frame's memory, their outputs added; LayerNorm before and after
each attention (``x = x + LN_post(attn(LN_pre(x)))``); a two-layer feed-forward MLP (GELU) with a pre-LayerNorm.
Choices: the memory tokens carry AOT's identification embedding fused into the value, V = linear_V(LN(x) + ID)
(Sec. 4.1 follows [50]); bilateral attention reads the previous frame only (the short-term memory: the bilateral
mask is defined on the query frame's grid, which only a spatially aligned frame shares), cross-attention reads the
long-term memory (reference frames); with ``multi_reference=True`` the model gives the bilateral attention every
memory frame instead (:class:`voszoo.models.batman.BATMAN`). ``attention="spatial_local"`` replaces bilateral
attention by plain windowed local attention (Table 3 ablation: no rank mask, no E bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.layers.local_attention import LOCAL_ATTENTION_BACKENDS, local_window_attention
from voszoo.layers.lstt import DropPath, MultiheadAttention, tokens_to_map

__all__ = [
    "BILATERAL_ATTENTIONS",
    "BilateralBlock",
    "BilateralSpaceEncoder",
    "BilateralTransformer",
    "MultiheadBilateralAttention",
    "bilateral_attention",
    "bilateral_bias",
    "bilateral_keep_mask",
]

BILATERAL_ATTENTIONS: tuple[str, ...] = ("bilateral", "spatial_local")


def _check_encoding(encoding: Tensor, name: str) -> Tensor:
    if encoding.ndim == 3:
        encoding = encoding[:, None]
    if encoding.ndim != 4 or encoding.shape[1] != 1:
        raise ValueError(f"{name}: encoding must be (B, 1, H, W) or (B, H, W), got {tuple(encoding.shape)}")
    return encoding


def _window_values(encoding: Tensor, *, window_size: int, dilation: int, fill: float) -> tuple[Tensor, Tensor]:
    """Window slots of every location: values (B, window^2, H, W) (``fill`` outside the image) and in-image flags
    (1, window^2, H, W) bool. Slot order is row-major (dy, then dx), as ``F.unfold`` and ``local_window_attention``."""
    b, _, height, width = encoding.shape
    r = (window_size - 1) // 2
    pad = r * dilation
    w2 = window_size * window_size
    ones = torch.ones(1, 1, height, width, dtype=encoding.dtype, device=encoding.device)
    inside = F.unfold(ones, window_size, dilation=dilation, padding=pad).view(1, w2, height, width) > 0.5
    values = F.unfold(encoding, window_size, dilation=dilation, padding=pad).view(b, w2, height, width)
    if fill != 0.0:
        values = values.masked_fill(~inside, fill)
    return values, inside


def bilateral_keep_mask(encoding: Tensor, *, window_size: int, bilateral_window: int, dilation: int = 1) -> Tensor:
    """The bilateral space binary mask M of Eq. 2 in window layout.

    Args:
        encoding: E, (B, 1, H, W) or (B, H, W), one scalar per token.
        window_size: spatial window side 2 W_d + 1 (odd).
        bilateral_window: W_b, the largest rank difference kept (>= 0).
        dilation: spacing of the window slots (1 in BATMAN).

    Returns:
        keep: (B, 1, window^2, H, W) bool; keep[b, 0, o, y, x] says whether the key at window slot o of query (y, x)
        is attended. Slots outside the image are False. Ranks: one stable argsort + inverse-permutation scatter;
        ties by slot order (see the module docstring).
    """
    encoding = _check_encoding(encoding, "bilateral_keep_mask")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"bilateral_keep_mask: window_size must be a positive odd int, got {window_size}")
    if bilateral_window < 0:
        raise ValueError(f"bilateral_keep_mask: bilateral_window (W_b) must be >= 0, got {bilateral_window}")
    with torch.no_grad():
        values, inside = _window_values(encoding.detach(), window_size=window_size, dilation=dilation, fill=0.0)
        w2 = values.shape[1]
        # out-of-image slots get +inf: they sort after every (finite) in-image value and are dropped below
        values = values.masked_fill(~inside, float("inf"))
        perm = torch.sort(values, dim=1, stable=True).indices  # (B, w2, H, W): slot at each sorted position
        ranks = torch.empty_like(perm)
        ranks.scatter_(1, perm, torch.arange(w2, device=perm.device).view(1, w2, 1, 1).expand_as(perm))
        centre = ranks[:, w2 // 2 : w2 // 2 + 1]  # the query's own token sits at the centre slot
        keep = ((ranks - centre).abs() <= bilateral_window) & inside
    return keep[:, None]


def bilateral_bias(encoding: Tensor, *, window_size: int, dilation: int = 1) -> Tensor:
    """E_{i,j} of every window slot: (B, 1, H, W) or (B, H, W) -> (B, 1, window^2, H, W) (0 outside the image).

    Differentiable in ``encoding``: the route by which E is trained (Sec. 3.2).
    """
    encoding = _check_encoding(encoding, "bilateral_bias")
    values, _ = _window_values(encoding, window_size=window_size, dilation=dilation, fill=0.0)
    return values[:, None]


def bilateral_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    encoding: Tensor | None,
    *,
    window_size: int = 15,
    bilateral_window: int = 84,
    scale: float | None = None,
    dilation: int = 1,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Multi-head bilateral attention of Eq. 1-2 (heads already split, no projections).

    Args:
        query: (B, heads, d, H, W).
        key, value: (B, heads, d | d_v, H, W) for one reference frame, or (B, heads, d | d_v, T, H, W) for T frames:
            one softmax over the kept window slots of all T frames (the same M and E bias for each, see the module
            docstring).
        encoding: E (B, 1, H, W) of the query frame; None = plain spatial local attention (Table 3 ablation).
        window_size: 2 W_d + 1 (15 for W_d = 7). bilateral_window: W_b (84).
        scale: of q.k, default d ** -0.5. dilation, dropout_p, backend: as ``local_window_attention``.

    Returns:
        (B, heads, d_v, H, W).
    """
    keep = bias = None
    if encoding is not None:
        encoding = _check_encoding(encoding, "bilateral_attention")
        if encoding.shape[0] != query.shape[0] or encoding.shape[-2:] != query.shape[-2:]:
            raise ValueError(
                f"bilateral_attention: encoding {tuple(encoding.shape)} must be (B, 1, H, W) for query "
                f"{tuple(query.shape)}"
            )
        encoding = encoding.to(query.dtype)
        keep = bilateral_keep_mask(
            encoding, window_size=window_size, bilateral_window=bilateral_window, dilation=dilation
        )
        bias = bilateral_bias(encoding, window_size=window_size, dilation=dilation)
    return local_window_attention(
        query,
        key,
        value,
        window_size=window_size,
        bias=bias,
        keep=keep,
        scale=scale,
        dilation=dilation,
        dropout_p=dropout_p,
        backend=backend,
    )


class BilateralSpaceEncoder(nn.Module):
    """E of Sec. 3.2: 1x1 convolution of [query image encoding, flow encoding] to one channel.

    ``forward(image_features (B, C_i, h, w), flow_features (B, C_f, h, w) or None) -> (B, 1, h, w)``;
    ``flow_channels=0`` encodes the image features alone (the ``flow=none`` variant).
    """

    def __init__(self, *, image_channels: int, flow_channels: int) -> None:
        super().__init__()
        if image_channels < 1 or flow_channels < 0:
            raise ValueError(
                f"BilateralSpaceEncoder: image_channels must be >= 1 and flow_channels >= 0, got {image_channels}, "
                f"{flow_channels}"
            )
        self.image_channels = image_channels
        self.flow_channels = flow_channels
        self.proj = nn.Conv2d(image_channels + flow_channels, 1, kernel_size=1)

    def forward(self, image_features: Tensor, flow_features: Tensor | None = None) -> Tensor:
        if (flow_features is None) != (self.flow_channels == 0):
            raise ValueError(
                f"BilateralSpaceEncoder: built with flow_channels={self.flow_channels}; "
                f"{'pass' if self.flow_channels else 'do not pass'} flow_features"
            )
        x = image_features if flow_features is None else torch.cat([image_features, flow_features], dim=1)
        if x.shape[1] != self.image_channels + self.flow_channels:
            raise ValueError(
                f"BilateralSpaceEncoder: expected {self.image_channels} + {self.flow_channels} channels, got "
                f"{tuple(image_features.shape)} and {None if flow_features is None else tuple(flow_features.shape)}"
            )
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"image_channels={self.image_channels}, flow_channels={self.flow_channels}"


class MultiheadBilateralAttention(nn.Module):
    """Multi-head bilateral attention (Eq. 3) on (B, C, H, W) maps.

    Args:
        d_model: C. num_heads: h (8). spatial_radius: W_d (7: a 15 x 15 window). bilateral_window: W_b (84).
        attention: ``"bilateral"`` or ``"spatial_local"`` (ignores E: Table 3's baseline).
        dropout: on the attention probabilities in training. backend: of ``local_window_attention``.
        use_linear: own Q/K/V projections (False: inputs arrive projected by the block, see the module docstring).
        multi_reference: accept T reference frames, key and value (B, C, T, H, W), under one softmax (Sec. 3.2);
            False: one frame (B, C, H, W) only, and a T-frame input is an error.

    ``forward(query (B, C, H, W), key, value (B, C, H, W) or (B, C, T, H, W), encoding (B, 1, H, W) | None)
    -> (B, H*W, C)`` after W^O.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        num_heads: int = 8,
        spatial_radius: int = 7,
        bilateral_window: int = 84,
        attention: str = "bilateral",
        dropout: float = 0.0,
        backend: str = "auto",
        use_linear: bool = False,
        multi_reference: bool = False,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"MultiheadBilateralAttention: d_model={d_model} not divisible by num_heads={num_heads}")
        if multi_reference and backend == "flex":
            raise ValueError(
                "MultiheadBilateralAttention: multi_reference=True needs a backend that takes several key maps; "
                "backend='flex' takes one: use 'auto' (tiled) or 'tiled'"
            )
        if spatial_radius < 0 or bilateral_window < 0:
            raise ValueError(
                f"MultiheadBilateralAttention: spatial_radius and bilateral_window must be >= 0, got "
                f"{spatial_radius}, {bilateral_window}"
            )
        if attention not in BILATERAL_ATTENTIONS:
            raise ValueError(
                f"MultiheadBilateralAttention: unknown attention {attention!r}; "
                f"valid: {', '.join(BILATERAL_ATTENTIONS)}"
            )
        if backend not in LOCAL_ATTENTION_BACKENDS:
            raise ValueError(
                f"MultiheadBilateralAttention: unknown backend {backend!r}; "
                f"valid: {', '.join(LOCAL_ATTENTION_BACKENDS)}"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.spatial_radius = spatial_radius
        self.bilateral_window = bilateral_window
        self.attention = attention
        self.dropout = dropout
        self.backend = backend
        self.use_linear = use_linear
        self.multi_reference = multi_reference
        if use_linear:
            self.linear_Q = nn.Linear(d_model, d_model)
            self.linear_K = nn.Linear(d_model, d_model)
            self.linear_V = nn.Linear(d_model, d_model)
        self.projection = nn.Linear(d_model, d_model)

    @property
    def window_size(self) -> int:
        return 2 * self.spatial_radius + 1

    def forward(self, query: Tensor, key: Tensor, value: Tensor, encoding: Tensor | None = None) -> Tensor:
        if key.ndim == 5 and not self.multi_reference:
            raise ValueError(
                f"MultiheadBilateralAttention: built with multi_reference=False, it reads ONE reference frame "
                f"(B, C, H, W); got key {tuple(key.shape)} with {key.shape[2]} frames: build it with "
                "multi_reference=True (model.transformer.multi_reference=true) or give it one frame"
            )
        frames = tuple(key.shape[2:3]) if key.ndim == 5 else ()
        b, c, height, width = query.shape if query.ndim == 4 else (0, 0, 0, 0)
        expected = (b, self.d_model, *frames, height, width)
        if query.ndim != 4 or c != self.d_model or key.shape != expected or value.shape != expected:
            raise ValueError(
                f"MultiheadBilateralAttention: query must be (B, C={self.d_model}, H, W) and key, value (B, C, H, W)"
                f"{' or (B, C, T, H, W)' if self.multi_reference else ''} on its grid, got {tuple(query.shape)}, "
                f"{tuple(key.shape)}, {tuple(value.shape)}"
            )
        if self.attention == "bilateral" and encoding is None:
            raise ValueError("MultiheadBilateralAttention: attention='bilateral' needs the bilateral encoding E")
        if self.use_linear:

            def project(linear: nn.Linear, x: Tensor) -> Tensor:  # over channels, (B, C, [T,] H, W)
                return linear(x.movedim(1, -1)).movedim(-1, 1)

            query, key, value = (
                project(self.linear_Q, query),
                project(self.linear_K, key),
                project(self.linear_V, value),
            )
        nh = self.num_heads
        out = bilateral_attention(
            query.reshape(b, nh, c // nh, height, width),
            key.reshape(b, nh, c // nh, *frames, height, width),
            value.reshape(b, nh, c // nh, *frames, height, width),
            encoding if self.attention == "bilateral" else None,
            window_size=self.window_size,
            bilateral_window=self.bilateral_window,
            scale=1.0 / math.sqrt(c // nh),
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
        )
        return self.projection(out.reshape(b, c, height * width).transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, W_d={self.spatial_radius}, "
            f"W_b={self.bilateral_window}, attention={self.attention!r}, backend={self.backend!r}, "
            f"multi_reference={self.multi_reference}"
        )


class BilateralBlock(nn.Module):
    """One bilateral transformer block (Sec. 3.2, Fig. 2); order of operations in the module docstring.

    Args:
        d_model: token width C (256). self_heads, att_heads: heads (8, 8; Eq. 3). dim_feedforward: MLP width (1024).
        spatial_radius: W_d (7). bilateral_window: W_b (84). attention: ``"bilateral"`` or ``"spatial_local"``.
        droppath: stochastic depth on the residual branches (voszoo's choice, as AOT; 0 disables).
        dropout: attention dropout. local_backend: of ``local_window_attention``.
        separate_key: memory keys from the block's own W^K (``linear_K``, Eq. 3); False: W^K = W^Q (AOT's tying).
        multi_reference: the bilateral attention takes T reference frames, (B, C, T, h, w) (Sec. 3.2); False: one.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        self_heads: int = 8,
        att_heads: int = 8,
        dim_feedforward: int = 1024,
        spatial_radius: int = 7,
        bilateral_window: int = 84,
        attention: str = "bilateral",
        droppath: float = 0.0,
        dropout: float = 0.0,
        local_backend: str = "auto",
        separate_key: bool = False,
        multi_reference: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.separate_key = separate_key
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model=d_model, num_heads=self_heads, dropout=dropout)
        self.norm1_post = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear_Q = nn.Linear(d_model, d_model)
        self.linear_K = nn.Linear(d_model, d_model) if separate_key else None
        self.linear_V = nn.Linear(d_model, d_model)
        self.cross_attn = MultiheadAttention(d_model=d_model, num_heads=att_heads, dropout=dropout, use_linear=False)
        self.bilateral_attn = MultiheadBilateralAttention(
            d_model=d_model,
            num_heads=att_heads,
            spatial_radius=spatial_radius,
            bilateral_window=bilateral_window,
            attention=attention,
            dropout=dropout,
            backend=local_backend,
            multi_reference=multi_reference,
        )
        self.norm2_post = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.droppath = DropPath(droppath)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def fuse_key_value(self, key: Tensor, value: Tensor, id_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Memory key and value of a frame: (K, linear_V(LN(x) + ID)), all (B, L, C) (AOT's fusion, [50])."""
        return key, self.linear_V(value + id_emb)

    def forward(
        self,
        x: Tensor,
        *,
        size: tuple[int, int],
        encoding: Tensor | None,
        pos: Tensor | None = None,
        long_term: tuple[Tensor, Tensor] | None = None,
        short_term: tuple[Tensor, Tensor] | None = None,
        id_emb: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Propagate the memory into the query frame.

        Args:
            x: (B, L, C) query tokens, L = h*w, ``size = (h, w)``.
            encoding: E (B, 1, h, w) of the query frame (None only with ``attention="spatial_local"``).
            pos: (1 or B, L, C) sine position embedding, added to the self-attention's queries and keys.
            long_term: (K, V) (B, T*L, C) of the reference frames, read by the cross-attention.
            short_term: (K, V) (B, C, h, w) of the previous frame, read by the bilateral attention; with
                ``multi_reference`` (B, C, T', h, w) of the T' frames it reads.
            id_emb: (B, L, C) identification embedding of this frame's own mask: reference mode (both attentions
                read this frame; the memories must then be None).

        Returns:
            (output (B, L, C), key linear_Q(LN(x)) or linear_K(LN(x)) (B, L, C), un-fused value LN(x) (B, L, C)).
        """
        y = self.norm1(x)
        qk = y if pos is None else y + pos
        x = x + self.droppath(self.norm1_post(self.self_attn(qk, qk, y)))

        y = self.norm2(x)
        query = self.linear_Q(y)
        key = self.linear_K(y) if self.linear_K is not None else query  # this frame's memory key
        if id_emb is not None:
            if long_term is not None or short_term is not None:
                raise ValueError("BilateralBlock: pass either id_emb (reference mode) or the memories, not both")
            fused_key, value = self.fuse_key_value(key, y, id_emb)
            long_term = (fused_key, value)
            short_term = (tokens_to_map(fused_key, size), tokens_to_map(value, size))
        elif long_term is None or short_term is None:
            raise ValueError("BilateralBlock: without id_emb both long_term and short_term memories are required")
        cross = self.cross_attn(query, *long_term)
        local = self.bilateral_attn(tokens_to_map(query, size), *short_term, encoding)
        x = x + self.norm2_post(cross + local)

        x = x + self.droppath(self.linear2(F.gelu(self.linear1(self.norm3(x)))))
        return x, key, y

    def extra_repr(self) -> str:
        return f"separate_key={self.separate_key}"


class BilateralTransformer(nn.Module):
    """A stack of ``num_layers`` :class:`BilateralBlock` (12 in BATMAN, Sec. 4.1) with a LayerNorm on every output
    passed to the decoder (``decoder_norms``, as AOT's LSTT).

    Block arguments as :class:`BilateralBlock` (``separate_key``, ``multi_reference``: the paper's reading of Sec. 3.2,
    see the module docstring). ``forward(x (B, L, C), *, size, encoding, pos, long_term,
    short_term, id_emb)`` takes per-layer memories (lists of the block arguments) and returns ``(outputs,
    frame_memories)``: the per-layer normalised outputs (B, L, C) and per layer the frame's un-fused (K, LN(x)).
    """

    def __init__(
        self,
        *,
        num_layers: int = 12,
        d_model: int = 256,
        self_heads: int = 8,
        att_heads: int = 8,
        dim_feedforward: int = 1024,
        spatial_radius: int = 7,
        bilateral_window: int = 84,
        attention: str = "bilateral",
        droppath: float = 0.0,
        dropout: float = 0.0,
        local_backend: str = "auto",
        separate_key: bool = False,
        multi_reference: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"BilateralTransformer: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.d_model = d_model
        self.attention = attention
        self.separate_key = separate_key
        self.multi_reference = multi_reference
        self.layers = nn.ModuleList(
            BilateralBlock(
                d_model=d_model,
                self_heads=self_heads,
                att_heads=att_heads,
                dim_feedforward=dim_feedforward,
                spatial_radius=spatial_radius,
                bilateral_window=bilateral_window,
                attention=attention,
                droppath=droppath,
                dropout=dropout,
                local_backend=local_backend,
                separate_key=separate_key,
                multi_reference=multi_reference,
            )
            for _ in range(num_layers)
        )
        self.decoder_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))

    def fuse(self, memories: list[tuple[Tensor, Tensor]], id_emb: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer memory (K, V) of a frame from its un-fused (K, LN(x)) and identification embedding (B, L, C)."""
        if len(memories) != self.num_layers:
            raise ValueError(f"BilateralTransformer.fuse: got {len(memories)} memories for {self.num_layers} layers")
        return [layer.fuse_key_value(k, v, id_emb) for layer, (k, v) in zip(self.layers, memories, strict=True)]

    def forward(
        self,
        x: Tensor,
        *,
        size: tuple[int, int],
        encoding: Tensor | None,
        pos: Tensor | None = None,
        long_term: list[tuple[Tensor, Tensor]] | None = None,
        short_term: list[tuple[Tensor, Tensor]] | None = None,
        id_emb: Tensor | None = None,
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        for name, memory in (("long_term", long_term), ("short_term", short_term)):
            if memory is not None and len(memory) != self.num_layers:
                raise ValueError(
                    f"BilateralTransformer: {name} holds {len(memory)} layer memories for {self.num_layers} layers"
                )
        outputs, memories = [], []
        for index, layer in enumerate(self.layers):
            x, key, value = layer(
                x,
                size=size,
                encoding=encoding,
                pos=pos,
                long_term=None if long_term is None else long_term[index],
                short_term=None if short_term is None else short_term[index],
                id_emb=id_emb,
            )
            outputs.append(self.decoder_norms[index](x))
            memories.append((key, value))
        return outputs, memories

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, d_model={self.d_model}, attention={self.attention!r}, "
            f"separate_key={self.separate_key}, multi_reference={self.multi_reference}"
        )
