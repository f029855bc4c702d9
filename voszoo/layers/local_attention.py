"""Exact local (windowed) multi-head attention: AOT's short-term attention, reused by BATMAN's bilateral attention.

Yang et al., "Associating Objects with Transformers for Video Object Segmentation", NeurIPS 2021
(shared/papers/001), Sec. 4.2 Eq. 7 ("Short-Term Attention") and App. A.1: every query location p attends only to
the lambda x lambda neighbourhood N(p) of the previous frame, with a learned relative position embedding (Table 3e,
"Rel", after Shaw et al.). Official implementation github.com/yoxu515/aot-benchmark,
``networks/layers/attention.py`` (``MultiheadLocalAttentionV2``; ``V3`` is the dense fallback used when the
``spatial_correlation_sampler`` CUDA extension is missing). Facts followed from it:

- q, k, v arrive already projected as (B, C, H, W) maps; heads are channel groups of C / num_heads (head-major).
- relative key bias: a grouped 1x1 convolution ``relative_emb_k`` (C -> heads * window^2, groups=heads) of the
  UNSCALED query; the query is then scaled by 1 / sqrt(head_dim);
  logit(p, o) = q_p . k_{p+o} / sqrt(d) + relative_emb_k(q)_p[o].
- window positions o are ordered row-major (dy, then dx) with offsets (i - r) * dilation, i = 0..window-1, r =
  (window - 1) / 2: the ``F.unfold`` order. Keys outside the image are masked (weight exactly 0).
- softmax over the window^2 positions, dropout on the attention probabilities (V2; V3 drops logits instead),
  output = attn @ v_window + attn @ relative_emb_v (per head, (head_dim, window^2), zero-initialised in the
  official module), heads concatenated, then ``projection`` = Linear(C, C).
- Note: the official LSTT block re-initialises every parameter with more than one dimension with
  ``xavier_uniform_`` (including ``relative_emb_v``), so this module's own init only matters when used standalone.

Dilation: the official V2/V3 gather the logits at dilated offsets but aggregate values (``local2global``) and the
padding mask at undilated offsets, which disagree for dilation > 1 (AOT always uses dilation 1). Here logits,
masks and values all use the dilated positions.

Fully-dropped windows (possible only with a ``keep`` mask, e.g. BATMAN's rank rule): such a query receives ZEROS
(no value term, no relative-value term) and zero gradients, never NaN. This matches what FlexAttention returns.

Backends of :func:`local_window_attention` (all exact, same results up to float rounding):

- ``"tiled"``: queries are cut into tile x tile tiles; a tile attends to its (tile + window - 1)^2 key neighbourhood
  with one batched matmul, each query's window^2 logits are gathered from it, biased, masked and normalised, then
  scattered back and multiplied with the neighbourhood values. Never forms an HW x HW matrix; autograd works.
  Dilation d is handled exactly by splitting the map into its d^2 strided sub-grids (a dilated window of a query on
  sub-grid (a, b) only touches keys of the same sub-grid, where it is an undilated window).
  Tiling, padding and un-tiling are gathers of precomputed index tensors (no Python branch on whether H and W fill
  the tiles), so ``torch.export`` with symbolic H, W traces one graph valid for every size (tests/test_export.py;
  dilation 1 only: dilation d loops over min(d, H) sub-grids). In eager mode this is as fast as the earlier
  block-copy tiling and faster in training. Gather vs block copy, median CPU time, AOT's 30x54 grid, 8 heads x 32,
  window 15, 1 thread, two runs: forward 94.6 vs 94.0 ms and 82.3 vs 80.7 ms (within noise), forward + backward
  252 vs 284 ms and 254 vs 281 ms (index_select's backward is one index_add instead of many slice copies);
  outputs bit-identical.
- ``"unfold"``: ``F.unfold`` gathers every query's window of keys and values (window^2 copies of k and v): simple,
  memory heavy; a second implementation for cross-checks.
- ``"flex"``: ``torch.nn.attention.flex_attention`` with a block-sparse window mask; the bias is a ``score_mod``,
  ``keep`` joins the ``mask_mod``; the relative-value term is read out of the same call by appending to v a one-hot
  code of each key's window slot (key row // dilation mod window, same for columns), which is unique within any
  window. Compiled with ``torch.compile`` on CUDA (intended for GPU inference; untested here, no GPU). On CPU it
  runs torch's eager reference (dense scores, forward only: torch has no FlexAttention backward on CPU) and is
  only useful for checking. No dropout.
- ``"auto"``: ``"flex"`` for CUDA tensors when no gradient is needed and FlexAttention is importable, else
  ``"tiled"``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOCAL_ATTENTION_BACKENDS", "MultiheadLocalAttention", "local_window_attention"]

LOCAL_ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "tiled", "unfold", "flex")


def _check_inputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window_size: int,
    bias: Tensor | None,
    keep: Tensor | None,
    relative_value: Tensor | None,
    dilation: int,
    dropout_p: float,
    backend: str,
    tile_size: int,
) -> None:
    name = "local_window_attention"
    if backend not in LOCAL_ATTENTION_BACKENDS:
        raise ValueError(f"{name}: unknown backend {backend!r}; valid: {', '.join(LOCAL_ATTENTION_BACKENDS)}")
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"{name}: window_size must be a positive odd int (2 * radius + 1), got {window_size!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{name}: dilation must be an int >= 1, got {dilation!r}")
    if not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"{name}: tile_size must be an int >= 1, got {tile_size!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p!r}")
    if query.ndim != 5 or key.ndim not in (5, 6) or value.ndim != key.ndim:
        raise ValueError(
            f"{name}: query must be (B, heads, d, H, W) and key, value both (B, heads, d, H, W) or both "
            f"(B, heads, d, T, H, W), got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    frames = () if key.ndim == 5 else (key.shape[3],)
    b, h, dk, height, width = query.shape
    if key.shape != (b, h, dk, *frames, height, width):
        raise ValueError(
            f"{name}: key {tuple(key.shape)} must be query's {tuple(query.shape)}"
            + (f" with T={frames[0]} frames before H, W" if frames else "")
        )
    if value.shape[:2] != (b, h) or value.shape[3:] != (*frames, height, width):
        raise ValueError(
            f"{name}: value must be (B={b}, heads={h}, d_v, {'T, ' if frames else ''}H={height}, W={width}) like "
            f"key, got {tuple(value.shape)}"
        )
    w2 = window_size * window_size
    for arg, t in (("bias", bias), ("keep", keep)):
        if t is None:
            continue
        if t.ndim != 5 or t.shape[0] not in (1, b) or t.shape[1] not in (1, h) or t.shape[2:] != (w2, height, width):
            raise ValueError(
                f"{name}: {arg} must be (B={b} or 1, heads={h} or 1, window^2={w2}, H={height}, W={width}), "
                f"got {tuple(t.shape)}"
            )
    if keep is not None and keep.dtype != torch.bool:
        raise ValueError(f"{name}: keep must be a bool tensor (False = dropped), got dtype {keep.dtype}")
    if relative_value is not None and relative_value.shape != (h, value.shape[2], w2):
        raise ValueError(
            f"{name}: relative_value must be (heads={h}, d_v={value.shape[2]}, window^2={w2}), "
            f"got {tuple(relative_value.shape)}"
        )


def _softmax_keep(logits: Tensor, valid: Tensor, *, dim: int, may_be_empty: bool) -> Tensor:
    """Softmax of ``logits`` over ``dim`` restricted to ``valid``; rows with nothing valid give all zeros."""
    logits = logits.masked_fill(~valid, float("-inf"))
    if not may_be_empty:
        return logits.softmax(dim=dim)
    nonempty = valid.any(dim=dim, keepdim=True)
    attn = logits.masked_fill(~nonempty, 0.0).softmax(dim=dim)
    return attn.masked_fill(~nonempty, 0.0)


def local_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window_size: int,
    bias: Tensor | None = None,
    keep: Tensor | None = None,
    relative_value: Tensor | None = None,
    scale: float | None = None,
    dilation: int = 1,
    dropout_p: float = 0.0,
    backend: str = "auto",
    tile_size: int = 8,
) -> Tensor:
    """Exact local attention of every query location to the window x window neighbourhood of the key map.

    For query location p = (y, x) and window slot o = (i, j) (row-major, o = i * window + j), the key position is
    p + ((i - r) * dilation, (j - r) * dilation) with r = (window_size - 1) // 2, and

        logit[p, o] = scale * <query[p], key[p + o]> + bias[o, p]          (slots outside the image or keep=False
        attn[p] = softmax_o(logit[p])                                       are dropped: weight exactly 0)
        out[p] = sum_o attn[p, o] * (value[p + o] + relative_value[:, o])

    Several key maps (BATMAN's bilateral attention over several reference frames, Yu et al. ECCV 2022, Sec. 3.2):
    with key (B, heads, d_k, T, H, W) and value (B, heads, d_v, T, H, W), every query attends to its window in each
    of the T maps under ONE softmax over the T x window^2 slots (same geometry, ``bias``, ``keep`` and
    ``relative_value`` for every map); T = 1 equals the single-map call.

    Args:
        query: (B, heads, d_k, H, W).
        key: (B, heads, d_k, H, W), or (B, heads, d_k, T, H, W) for T key maps.
        value: (B, heads, d_v, H, W), or (B, heads, d_v, T, H, W) with key.
        window_size: odd window side lambda (AOT: 15).
        bias: (B or 1, heads or 1, window^2, H, W) added to the logits (AOT: relative key bias; BATMAN: bilateral
            bias).
        keep: (B or 1, heads or 1, window^2, H, W) bool, False drops the slot. A query whose whole window is
            dropped outputs zeros (and gets zero gradients).
        relative_value: (heads, d_v, window^2) relative value embedding (AOT ``relative_emb_v``).
        scale: logit scale, default d_k ** -0.5.
        dilation: spacing of the window slots.
        dropout_p: dropout on the attention probabilities (applied whenever > 0; pass 0 in eval). Not with flex.
        backend: "auto", "tiled", "unfold" or "flex" (see the module docstring); several key maps: not flex.
        tile_size: query tile side of the tiled backend (the speed/memory trade-off; results do not depend on it).

    Returns:
        (B, heads, d_v, H, W), dtype of ``value``.
    """
    _check_inputs(
        query,
        key,
        value,
        window_size=window_size,
        bias=bias,
        keep=keep,
        relative_value=relative_value,
        dilation=dilation,
        dropout_p=dropout_p,
        backend=backend,
        tile_size=tile_size,
    )
    if scale is None:
        scale = query.shape[2] ** -0.5
    tensors = [t for t in (query, key, value, bias, relative_value) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    frames = key.ndim == 6
    if backend == "auto":
        flex = query.is_cuda and not needs_grad and dropout_p == 0.0 and not frames and _flex_importable()
        backend = "flex" if flex else "tiled"
    kwargs = dict(window_size=window_size, bias=bias, keep=keep, relative_value=relative_value, scale=scale)
    if backend == "flex" and frames:
        raise ValueError(
            f"local_window_attention: backend='flex' takes one key map, got T={key.shape[3]} "
            f"(key {tuple(key.shape)}); use 'tiled' or 'unfold'"
        )
    if backend == "flex":
        if dropout_p > 0.0:
            raise ValueError("local_window_attention: backend='flex' has no attention dropout; use 'tiled'")
        if query.device.type == "cpu" and needs_grad:
            raise ValueError(
                "local_window_attention: backend='flex' on CPU is forward-only (torch's FlexAttention has no CPU "
                "backward); use backend='tiled' for training"
            )
        if not needs_grad:  # torch refuses CPU FlexAttention on tensors that require grad, even under no_grad
            query, key, value = query.detach(), key.detach(), value.detach()
            kwargs = {n: t.detach() if isinstance(t, Tensor) else t for n, t in kwargs.items()}
        return _flex_attention(query, key, value, dilation=dilation, **kwargs)
    if backend == "unfold":
        return _unfold_attention(query, key, value, dilation=dilation, dropout_p=dropout_p, **kwargs)
    if dilation == 1:
        return _tiled_attention(query, key, value, dropout_p=dropout_p, tile_size=tile_size, **kwargs)
    # Dilation d: the d^2 strided sub-grids are independent undilated problems.
    b, h, _, height, width = query.shape
    out = value.new_zeros(b, h, value.shape[2], height, width)
    for a in range(min(dilation, height)):
        for c in range(min(dilation, width)):
            sub = (Ellipsis, slice(a, None, dilation), slice(c, None, dilation))
            out[sub] = _tiled_attention(
                query[sub],
                key[sub],
                value[sub],
                window_size=window_size,
                bias=None if bias is None else bias[sub],
                keep=None if keep is None else keep[sub],
                relative_value=relative_value,
                scale=scale,
                dropout_p=dropout_p,
                tile_size=tile_size,
            )
    return out


def _tile_geometry(size: int, tile_size: int) -> tuple[int, int]:
    """(tile side, tile count) along one axis of ``size`` positions; results never depend on it.

    A concrete size (eager, ``torch.compile`` with static shapes) gets the least padding: min(tile_size, size),
    ceil(size / tile). A symbolic size (``torch.export`` or ``torch.compile`` with dynamic H, W) gets ``tile_size`` and
    at least 2 tiles: a tile side min(tile_size, H) would bake H <= tile_size into the graph, and a count that can be
    1 is a size-1 dimension, which torch specialises (0/1 specialisation). The extra tile is padding, cropped away.
    """
    if isinstance(size, int):
        tile = min(tile_size, size)
        return tile, -(-size // tile)
    # ceil as (size + tile - 1) // tile, not -(-size // tile): the ONNX exporter turns a SymInt floor division into
    # ONNX Div, which truncates, so a negative dividend would round the wrong way in the .onnx graph.
    return tile_size, torch.sym_max((size + tile_size - 1) // tile_size, 2)


def _gather_positions(x: Tensor, index: Tensor, *, pad_value: float | bool = 0) -> Tensor:
    """(B, h, c, H, W) -> (B, h, len(index), c): the channel vectors at flat positions ``index`` (y * W + x); the
    index H * W reads ``pad_value``.

    Padding and tiling by one gather of precomputed indices rather than slices of a padded map, so nothing branches on
    whether H and W fill the tiles (one traced graph serves every size).
    """
    b, h, c = x.shape[:3]
    rows = torch.cat([x.flatten(3).transpose(-1, -2), x.new_full((b, h, 1, c), pad_value)], dim=2)
    return rows.index_select(2, index)


def _tile_index(height: int, width: int, tiles: tuple[int, int, int, int], device: torch.device) -> Tensor:
    """Flat position y * W + x of every slot of the (nty, ntx, ty, tx) tile layout, ``tiles = (ty, nty, tx, ntx)``;
    H * W for the padding beyond the map."""
    ty, nty, tx, ntx = tiles
    ys = torch.arange(nty * ty, device=device).view(nty, 1, ty, 1)
    xs = torch.arange(ntx * tx, device=device).view(1, ntx, 1, tx)
    return torch.where((ys < height) & (xs < width), ys * width + xs, height * width).reshape(-1)


def _map_index(height: int, width: int, tiles: tuple[int, int, int, int], device: torch.device) -> Tensor:
    """Inverse of :func:`_tile_index`: for every map position y * W + x, its slot in the flattened tile layout."""
    ty, _, tx, ntx = tiles
    ys = torch.arange(height, device=device).view(height, 1)
    xs = torch.arange(width, device=device).view(1, width)
    tile = (ys // ty) * ntx + xs // tx
    return (tile * ty * tx + (ys % ty) * tx + xs % tx).reshape(-1)


def _tiled_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window_size: int,
    bias: Tensor | None,
    keep: Tensor | None,
    relative_value: Tensor | None,
    scale: float,
    dropout_p: float,
    tile_size: int,
) -> Tensor:
    """Undilated tiled local attention; shapes as :func:`local_window_attention`."""
    if key.ndim == 5:  # one key map = T of 1
        key, value = key.unsqueeze(3), value.unsqueeze(3)
    b, h, dk, height, width = query.shape
    dv, nf = value.shape[2], key.shape[3]
    r = (window_size - 1) // 2
    w2 = window_size * window_size
    (ty, nty), (tx, ntx) = _tile_geometry(height, tile_size), _tile_geometry(width, tile_size)
    tiles = (ty, nty, tx, ntx)
    hp, wp = nty * ty, ntx * tx
    ny, nx = ty + 2 * r, tx + 2 * r  # key neighbourhood of one tile
    dev = query.device

    # Key neighbourhood of every tile as flat indices into the H*W positions; outside the image -> index H*W,
    # a zero row appended to the channels-last map (so no padded copy of the map is needed).
    ky = (torch.arange(nty, device=dev) * ty).view(nty, 1, 1, 1) + torch.arange(ny, device=dev).view(1, 1, ny, 1) - r
    kx = (torch.arange(ntx, device=dev) * tx).view(1, ntx, 1, 1) + torch.arange(nx, device=dev).view(1, 1, 1, nx) - r
    nb_idx = torch.where((ky >= 0) & (ky < height) & (kx >= 0) & (kx < width), ky * width + kx, height * width)
    nb_idx = nb_idx.reshape(-1)

    def neighbourhoods(x: Tensor) -> Tensor:  # (B, h, c, T, H, W) -> (B, h, T, nty, ntx, ny * nx, c)
        c = x.shape[2]
        x = x.transpose(2, 3).reshape(b, h * nf, c, height, width)
        return _gather_positions(x, nb_idx).view(b, h, nf, nty, ntx, ny * nx, c)

    tile_idx = _tile_index(height, width, tiles, dev)

    def to_tiles(x: Tensor, pad_value: float | bool = 0) -> Tensor:  # (B', h', c, H, W) -> (B', h', nty, ntx, T, c)
        return _gather_positions(x, tile_idx, pad_value=pad_value).view(*x.shape[:2], nty, ntx, ty * tx, x.shape[2])

    q_t = to_tiles(query) * scale  # (B, h, nty, ntx, T_q, dk), T_q = ty * tx queries per tile
    logits_n = q_t.unsqueeze(2) @ neighbourhoods(key).transpose(-1, -2)  # (B, h, T, nty, ntx, T_q, ny * nx)

    # Flat index of (query in tile, window slot) inside the T x (ny * nx) tile logits.
    qy = torch.arange(ty, device=dev).view(ty, 1, 1, 1)
    qx = torch.arange(tx, device=dev).view(1, tx, 1, 1)
    oy = torch.arange(window_size, device=dev).view(1, 1, window_size, 1)
    ox = torch.arange(window_size, device=dev).view(1, 1, 1, window_size)
    flat = ((qy * tx + qx) * (ny * nx) + (qy + oy) * nx + (qx + ox)).reshape(-1)
    logits = logits_n.flatten(-2).index_select(-1, flat).view(b, h, nf, nty, ntx, ty * tx, w2)
    del logits_n
    # (B, h, nty, ntx, T_q, T, w2): the T maps' windows side by side, for one softmax over T x w2 slots
    logits = logits.permute(0, 1, 3, 4, 5, 2, 6).contiguous()

    # Slots outside the image. Padding queries (cropped away at the end) keep every slot of their zero-padded
    # window, so that no row is empty.
    ys = torch.arange(hp, device=dev).view(hp, 1) + torch.arange(window_size, device=dev) - r
    xs = torch.arange(wp, device=dev).view(wp, 1) + torch.arange(window_size, device=dev) - r
    # (Masks, not in-place slices: slicing at H would make the traced graph depend on whether H fills the tiles.)
    row_out = ((ys < 0) | (ys >= height)) & (torch.arange(hp, device=dev) < height).view(hp, 1)
    col_out = ((xs < 0) | (xs >= width)) & (torch.arange(wp, device=dev) < width).view(wp, 1)
    # Broadcast straight into the tile layout (nty, ntx, ty, tx, w, w): no transposed copy to reshape.
    row_out = row_out.view(nty, 1, ty, 1, window_size, 1)
    col_out = col_out.view(1, ntx, 1, tx, 1, window_size)
    outside = (row_out | col_out).view(1, 1, nty, ntx, ty * tx, 1, w2)  # the same slots of every map
    if bias is not None:
        logits += to_tiles(bias.to(logits.dtype)).unsqueeze(-2)
    if keep is not None:
        outside = outside | to_tiles(~keep, pad_value=False).unsqueeze(-2)
    logits.masked_fill_(outside, float("-inf"))
    logits = logits.view(b, h, nty, ntx, ty * tx, nf * w2)
    if keep is None:
        attn = logits.softmax(dim=-1)
    else:  # rows with every slot dropped -> zeros
        empty = outside.all(dim=-1)  # (..., T_q, 1): a row is empty in every map or in none
        attn = logits.masked_fill_(empty, 0.0).softmax(dim=-1).masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)

    attn_f = attn.view(b, h, nty, ntx, ty * tx, nf, w2).permute(0, 1, 5, 2, 3, 4, 6)  # (B, h, T, nty, ntx, T_q, w2)
    attn_n = attn.new_zeros(b, h, nf, nty, ntx, ty * tx * ny * nx).index_copy_(-1, flat, attn_f.flatten(-2))
    out = (attn_n.view(b, h, nf, nty, ntx, ty * tx, ny * nx) @ neighbourhoods(value)).sum(2)
    if relative_value is not None:
        rel = attn.view(b, h, nty * ntx * ty * tx, nf, w2).sum(-2) @ relative_value.transpose(1, 2)
        out = out + rel.view(b, h, nty, ntx, ty * tx, dv)
    # Back from tiles to the map by a gather of the H*W real positions (slicing the padded map would branch on
    # whether H and W fill the tiles).
    out = out.view(b, h, nty * ntx * ty * tx, dv).index_select(2, _map_index(height, width, tiles, dev))
    return out.transpose(-1, -2).clone(memory_format=torch.contiguous_format).view(b, h, dv, height, width)


def _unfold_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window_size: int,
    bias: Tensor | None,
    keep: Tensor | None,
    relative_value: Tensor | None,
    scale: float,
    dilation: int,
    dropout_p: float,
) -> Tensor:
    """``F.unfold`` gather of every window (window^2 copies of key and value); shapes as the public function."""
    if key.ndim == 5:  # one key map = T of 1
        key, value = key.unsqueeze(3), value.unsqueeze(3)
    b, h, dk, height, width = query.shape
    dv, nf = value.shape[2], key.shape[3]
    w2 = window_size * window_size
    pad = (window_size - 1) // 2 * dilation

    def windows(x: Tensor) -> Tensor:  # (B', h', c, T', H, W) -> (B', h', c, T' * w2, H, W), slots map-major
        bb, hh, c, tt = x.shape[:4]
        u = F.unfold(x.reshape(bb * hh, c * tt, height, width), window_size, dilation=dilation, padding=pad)
        return u.view(bb, hh, c, tt * w2, height, width)

    logits = (query.unsqueeze(3) * windows(key)).sum(2) * scale  # (B, h, T * w2, H, W)
    valid = windows(query.new_ones(1, 1, 1, 1, height, width))[:, :, 0] > 0.5  # (1, 1, w2, H, W)
    if bias is not None:
        logits = logits + bias.repeat(1, 1, nf, 1, 1)
    if keep is not None:
        valid = valid & keep
    attn = _softmax_keep(logits, valid.repeat(1, 1, nf, 1, 1), dim=2, may_be_empty=keep is not None)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    out = (attn.unsqueeze(2) * windows(value)).sum(3)
    if relative_value is not None:
        per_slot = attn.unflatten(2, (nf, w2)).sum(2)  # (B, h, w2, H, W)
        out = out + torch.einsum("bhoyx,hco->bhcyx", per_slot, relative_value)
    return out.reshape(b, h, dv, height, width)


@functools.cache
def _flex_importable() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _flex_kernel(compiled: bool) -> Callable[..., Tensor]:
    """FlexAttention, compiled once per process for CUDA; eager (dense reference) otherwise."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _flex_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window_size: int,
    bias: Tensor | None,
    keep: Tensor | None,
    relative_value: Tensor | None,
    scale: float,
    dilation: int,
) -> Tensor:
    """FlexAttention with a window block mask; shapes as :func:`local_window_attention`."""
    if not _flex_importable():
        raise ValueError("local_window_attention: backend='flex' needs torch.nn.attention.flex_attention (torch>=2.5)")
    from torch.nn.attention.flex_attention import create_block_mask

    b, h, dk, height, width = query.shape
    dv = value.shape[2]
    hw = height * width
    r = (window_size - 1) // 2
    reach = r * dilation
    w2 = window_size * window_size
    dev = query.device

    def slot(q_idx: Tensor, kv_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dy = kv_idx // width - q_idx // width
        dx = kv_idx % width - q_idx % width
        inside = (dy.abs() <= reach) & (dx.abs() <= reach) & (dy % dilation == 0) & (dx % dilation == 0)
        o = (dy // dilation + r).clamp(0, window_size - 1) * window_size + (dx // dilation + r).clamp(
            0, window_size - 1
        )
        return inside, o, q_idx

    keep_flat = None if keep is None else keep.flatten(3)  # (B|1, h|1, w2, HW)
    bias_flat = None if bias is None else bias.flatten(3)

    def mask_mod(bi: Tensor, hi: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        inside, o, q = slot(q_idx, kv_idx)
        if keep_flat is None:
            return inside
        kb = bi if keep_flat.shape[0] > 1 else torch.zeros_like(bi)
        kh = hi if keep_flat.shape[1] > 1 else torch.zeros_like(hi)
        return inside & keep_flat[kb, kh, o, q]

    score_mod = None
    if bias_flat is not None:

        def score_mod(score: Tensor, bi: Tensor, hi: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            _, o, q = slot(q_idx, kv_idx)
            bb = bi if bias_flat.shape[0] > 1 else torch.zeros_like(bi)
            bh = hi if bias_flat.shape[1] > 1 else torch.zeros_like(hi)
            return score + bias_flat[bb, bh, o, q]

    mask_b = None if keep_flat is None or keep_flat.shape[0] == 1 else b
    mask_h = None if keep_flat is None or keep_flat.shape[1] == 1 else h
    block_mask = create_block_mask(mask_mod, mask_b, mask_h, hw, hw, device=dev)

    q = query.flatten(3).transpose(-1, -2)  # (B, h, HW, dk)
    k = key.flatten(3).transpose(-1, -2)
    v = value.flatten(3).transpose(-1, -2)  # (B, h, HW, dv)
    if relative_value is not None:
        # One-hot of each key's window slot class (row // dilation mod window, col // dilation mod window): within
        # any window the w2 keys have distinct classes, so these output channels are the window probabilities.
        ky = torch.arange(height, device=dev) // dilation % window_size
        kx = torch.arange(width, device=dev) // dilation % window_size
        cls = (ky.view(-1, 1) * window_size + kx.view(1, -1)).reshape(hw)
        onehot = F.one_hot(cls, w2).to(v.dtype).expand(b, h, hw, w2)
        v = torch.cat([v, onehot], dim=-1)
    out = _flex_kernel(query.is_cuda)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    if relative_value is not None:
        probs_by_class = out[..., dv:]  # (B, h, HW, w2)
        out = out[..., :dv]
        qy = (torch.arange(height, device=dev) // dilation).view(height, 1, 1, 1)
        qx = (torch.arange(width, device=dev) // dilation).view(1, width, 1, 1)
        oy = torch.arange(window_size, device=dev).view(1, 1, window_size, 1)
        ox = torch.arange(window_size, device=dev).view(1, 1, 1, window_size)
        cls_of_slot = (((qy + oy - r) % window_size) * window_size + (qx + ox - r) % window_size).reshape(1, 1, hw, w2)
        attn = probs_by_class.gather(-1, cls_of_slot.expand(b, h, hw, w2))  # (B, h, HW, w2) in slot order
        out = out + attn @ relative_value.transpose(1, 2).unsqueeze(0)
    return out.transpose(-1, -2).reshape(b, h, dv, height, width)


class MultiheadLocalAttention(nn.Module):
    """AOT's multi-head short-term (local) attention with relative position embeddings (Eq. 7, App. A.1).

    ``forward(query, key, value)``: (B, C, H, W) maps already projected by the caller (LSTT) -> tokens (B, H*W, C)
    after ``projection``. Parameters carry the official names and shapes (aot-benchmark
    ``MultiheadLocalAttentionV2``), e.g. d_model 256, 8 heads, window 15: ``relative_emb_k`` Conv2d(256, 1800, 1,
    groups=8) applied to the unscaled query, ``relative_emb_v`` (8, 32, 225) zero-initialised, ``projection``
    Linear(256, 256). Heads are contiguous channel groups; ``dropout`` acts on the attention probabilities in
    training.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        num_heads: int = 8,
        window_size: int = 15,
        dilation: int = 1,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"MultiheadLocalAttention: d_model={d_model} is not divisible by num_heads={num_heads}")
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"MultiheadLocalAttention: window_size must be a positive odd int, got {window_size}")
        if backend not in LOCAL_ATTENTION_BACKENDS:
            raise ValueError(
                f"MultiheadLocalAttention: unknown backend {backend!r}; valid: {', '.join(LOCAL_ATTENTION_BACKENDS)}"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.window_size = window_size
        self.dilation = dilation
        self.dropout = dropout
        self.backend = backend
        head_dim = d_model // num_heads
        w2 = window_size * window_size
        self.relative_emb_k = nn.Conv2d(d_model, num_heads * w2, kernel_size=1, groups=num_heads)
        self.relative_emb_v = nn.Parameter(torch.zeros(num_heads, head_dim, w2))
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        if query.ndim != 4 or query.shape[1] != self.d_model:
            raise ValueError(
                f"MultiheadLocalAttention: query must be (B, C={self.d_model}, H, W), got {tuple(query.shape)}"
            )
        if key.shape != query.shape or value.shape != query.shape:
            raise ValueError(
                f"MultiheadLocalAttention: key {tuple(key.shape)} and value {tuple(value.shape)} must match query "
                f"{tuple(query.shape)}"
            )
        b, c, height, width = query.shape
        nh = self.num_heads
        w2 = self.window_size * self.window_size
        rel_bias = self.relative_emb_k(query).view(b, nh, w2, height, width)
        out = local_window_attention(
            query.reshape(b, nh, c // nh, height, width),
            key.reshape(b, nh, c // nh, height, width),
            value.reshape(b, nh, c // nh, height, width),
            window_size=self.window_size,
            bias=rel_bias,
            relative_value=self.relative_emb_v,
            scale=1.0 / math.sqrt(c // nh),
            dilation=self.dilation,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
        )
        return self.projection(out.reshape(b, c, height * width).transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"dilation={self.dilation}, dropout={self.dropout}, backend={self.backend!r}"
        )
