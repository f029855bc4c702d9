"""BATMAN's bilateral attention (shared/papers/000, Sec. 3.2, Eq. 1-3) against naive dense references."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from voszoo.layers.bilateral import (
    BilateralBlock,
    BilateralSpaceEncoder,
    BilateralTransformer,
    MultiheadBilateralAttention,
    bilateral_attention,
    bilateral_keep_mask,
)


def brute_force_keep(encoding, window_size, bilateral_window):
    """Eq. 2 by loops: dict (b, y, x) -> set of kept key positions (i, j). Ranks among the in-image window values,
    ties broken by row-major window order."""
    b_, _, h, w = encoding.shape
    r = (window_size - 1) // 2
    kept = {}
    for b, y, x in itertools.product(range(b_), range(h), range(w)):
        slots = [(y + dy, x + dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        inside = [(i, j) for i, j in slots if 0 <= i < h and 0 <= j < w]
        values = [float(encoding[b, 0, i, j]) for i, j in inside]
        rank = {}
        for n, pos in enumerate(inside):
            rank[pos] = sum(1 for m, v in enumerate(values) if v < values[n] or (v == values[n] and m < n))
        kept[(b, y, x)] = {pos for pos in inside if abs(rank[pos] - rank[(y, x)]) <= bilateral_window}
    return kept


def keep_as_dict(keep, window_size):
    b_, _, _, h, w = keep.shape
    r = (window_size - 1) // 2
    out = {}
    for b, y, x in itertools.product(range(b_), range(h), range(w)):
        out[(b, y, x)] = {
            (y + o // window_size - r, x + o % window_size - r)
            for o in range(window_size * window_size)
            if keep[b, 0, o, y, x]
        }
    return out


@pytest.mark.parametrize("bilateral_window", [0, 3, 11])
@pytest.mark.parametrize("ties", [False, True])
def test_keep_mask_matches_brute_force(bilateral_window, ties):
    g = torch.Generator().manual_seed(bilateral_window + 10 * ties)
    encoding = torch.randn(2, 1, 6, 7, generator=g)
    if ties:  # few distinct values: many ties inside every window
        encoding = torch.randint(0, 3, (2, 1, 6, 7), generator=g).float()
    keep = bilateral_keep_mask(encoding, window_size=5, bilateral_window=bilateral_window)
    assert keep.shape == (2, 1, 25, 6, 7) and keep.dtype == torch.bool
    assert keep_as_dict(keep, 5) == brute_force_keep(encoding, 5, bilateral_window)


def test_keep_mask_hand_example():
    # 1 x 3 image, window 3: the middle query's window holds values [5, 1, 3] (in-image slots 3, 4, 5);
    # ranks 2, 0, 1; query (centre, value 1) has rank 0, W_b = 1 keeps ranks 0 and 1: the value-1 and value-3 keys.
    encoding = torch.tensor([[[[5.0, 1.0, 3.0]]]])
    keep = bilateral_keep_mask(encoding, window_size=3, bilateral_window=1)
    assert keep[0, 0, :, 0, 1].tolist() == [False, False, False, False, True, True, False, False, False]
    # left query (value 5, rank 1 of [5, 1]): keeps itself and the value-1 key; slots outside the image are dropped
    assert keep[0, 0, :, 0, 0].tolist() == [False, False, False, False, True, True, False, False, False]


def test_large_bilateral_window_is_spatial_local():
    encoding = torch.randn(1, 1, 5, 6)
    keep = bilateral_keep_mask(encoding, window_size=5, bilateral_window=24)  # >= window^2 - 1: every rank pair
    spatial = brute_force_keep(torch.zeros(1, 1, 5, 6), 5, 10**6)
    assert keep_as_dict(keep, 5) == spatial


def dense_reference(query, key, value, encoding, kept, scale):
    """Eq. 1 with a dense HW x HW mask: logits q.k * scale + E_key where kept, -inf elsewhere."""
    b_, nh, d, h, w = query.shape
    q = query.flatten(3)  # (B, nh, d, HW)
    k = key.flatten(3)
    v = value.flatten(3)
    logits = torch.einsum("bndp,bndq->bnpq", q, k) * scale
    if encoding is not None:
        logits = logits + encoding.flatten(2)[:, :, None, :]  # E of the key position
    mask = torch.zeros(b_, 1, h * w, h * w, dtype=torch.bool)
    for (b, y, x), positions in kept.items():
        for i, j in positions:
            mask[b, 0, y * w + x, i * w + j] = True
    attn = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bnpq,bndq->bndp", attn, v).reshape(b_, nh, v.shape[2], h, w)


@pytest.mark.parametrize("spatial_local", [False, True])
def test_bilateral_attention_equals_dense_reference(spatial_local):
    g = torch.Generator().manual_seed(3)
    shape = (2, 2, 4, 7, 6)
    query, key, value = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    encoding = torch.randn(2, 1, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    window, wb = 5, 6
    out = bilateral_attention(
        query,
        key,
        value,
        None if spatial_local else encoding,
        window_size=window,
        bilateral_window=wb,
        backend="tiled",
    )
    kept = brute_force_keep(
        torch.zeros_like(encoding) if spatial_local else encoding.detach(), window, 10**6 if spatial_local else wb
    )
    ref = dense_reference(query, key, value, None if spatial_local else encoding, kept, scale=4**-0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    inputs = (query, key, value) if spatial_local else (query, key, value, encoding)
    grads = torch.autograd.grad(out, inputs, upstream)
    grads_ref = torch.autograd.grad(ref, inputs, upstream)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if not spatial_local:
        assert grads[-1].abs().sum() > 0  # E is trained through the bias


def test_multihead_bilateral_attention_projection_and_heads():
    torch.manual_seed(0)
    attn = MultiheadBilateralAttention(d_model=8, num_heads=2, spatial_radius=1, bilateral_window=2).double()
    q, k, v = (torch.randn(1, 8, 4, 5, dtype=torch.float64) for _ in range(3))
    e = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    out = attn(q, k, v, e)
    kept = brute_force_keep(e, 3, 2)
    heads = dense_reference(*(x.view(1, 2, 4, 4, 5) for x in (q, k, v)), e, kept, scale=4**-0.5)
    ref = attn.projection(heads.reshape(1, 8, 20).transpose(1, 2))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the bilateral encoding"):
        attn(q, k, v, None)
    with pytest.raises(ValueError, match="unknown attention"):
        MultiheadBilateralAttention(attention="global")


def test_block_and_stack_shapes_and_gradients():
    torch.manual_seed(0)
    size, c = (4, 5), 16
    stack = BilateralTransformer(
        num_layers=2, d_model=c, self_heads=2, att_heads=2, dim_feedforward=32, spatial_radius=1, bilateral_window=3
    )
    x = torch.randn(2, 20, c)
    encoding = torch.randn(2, 1, *size, requires_grad=True)
    id_emb = torch.randn(2, 20, c)
    _, memories = stack(x, size=size, encoding=encoding, id_emb=id_emb)  # reference mode
    fused = stack.fuse(memories, id_emb)
    long_term = [(k, v) for k, v in fused]
    short_term = [(k.transpose(1, 2).reshape(2, c, *size), v.transpose(1, 2).reshape(2, c, *size)) for k, v in fused]
    outputs, _ = stack(torch.randn(2, 20, c), size=size, encoding=encoding, long_term=long_term, short_term=short_term)
    assert len(outputs) == 2 and outputs[-1].shape == (2, 20, c)
    outputs[-1].sum().backward()
    assert encoding.grad is not None and encoding.grad.abs().sum() > 0
    block = BilateralBlock(d_model=c, self_heads=2, att_heads=2, dim_feedforward=32, spatial_radius=1)
    with pytest.raises(ValueError, match="either id_emb"):
        block(x, size=size, encoding=encoding, id_emb=id_emb, long_term=long_term[0], short_term=short_term[0])


def test_space_encoder_is_one_scalar_per_token():
    enc = BilateralSpaceEncoder(image_channels=3, flow_channels=2)
    img, flo = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    out = enc(img, flo)
    w = enc.proj.weight.view(5)
    ref = torch.einsum("c,bchw->bhw", w, torch.cat([img, flo], 1))[:, None] + enc.proj.bias
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="pass flow_features"):
        enc(img)


def test_bilateral_short_term_matcher_equals_the_dense_reference_with_appearance_encoding():
    # the LSTT matcher slot (model/matcher=bilateral): E = 1x1 conv of the query map, then Eq. 1-3 over the window
    from voszoo.layers.bilateral_matcher import BilateralShortTermAttention

    torch.manual_seed(0)
    matcher = BilateralShortTermAttention(d_model=8, num_heads=2, spatial_radius=1, bilateral_window=2).double()
    q, k, v = (torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = matcher(q, k, v)
    encoding = matcher.encoder.proj(q)  # (B, 1, h, w): one scalar per query token
    kept = brute_force_keep(encoding.detach(), 3, 2)
    heads = dense_reference(*(x.view(2, 2, 4, 4, 5) for x in (q, k, v)), encoding, kept, scale=4**-0.5)
    ref = matcher.attention.projection(heads.reshape(2, 8, 20).transpose(1, 2))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    upstream = torch.randn(out.shape, dtype=torch.float64)
    params = (q, k, v, matcher.encoder.proj.weight)
    grads = torch.autograd.grad(out, params, upstream)
    grads_ref = torch.autograd.grad(ref, params, upstream)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert grads[-1].abs().sum() > 0  # the encoding learns through the E bias


# -- the paper's reading of Sec. 3.2: K, V from several reference frames, separate W^K --------------------------------
def naive_multi_reference(attn, q, k, v, e):
    """Eq. 1-3 with K and V from T reference frames, by loops. For query (y, x) and head n: the positions (i, j) kept
    by Eq. 2 (ranks of the query frame's E in the window) are read in EVERY frame t, logit q.k_t(i, j) / sqrt(d) +
    E(i, j), one softmax over all of them; heads concatenated, then W^O. q: (B, C, H, W); k, v: (B, C, T, H, W);
    e: (B, 1, H, W). Returns (B, H*W, C)."""
    b_, c, frames, h, w = k.shape
    nh = attn.num_heads
    d = c // nh
    kept = brute_force_keep(e.detach(), attn.window_size, attn.bilateral_window)
    samples = []
    for b in range(b_):
        tokens = []
        for y, x in itertools.product(range(h), range(w)):
            heads = []
            for n in range(nh):
                ch = slice(n * d, (n + 1) * d)
                logits, values = [], []
                for t in range(frames):
                    for i, j in sorted(kept[(b, y, x)]):
                        logits.append((q[b, ch, y, x] * k[b, ch, t, i, j]).sum() / math.sqrt(d) + e[b, 0, i, j])
                        values.append(v[b, ch, t, i, j])
                weights = torch.softmax(torch.stack(logits), dim=0)
                heads.append((weights[:, None] * torch.stack(values)).sum(0))
            tokens.append(torch.cat(heads))
        samples.append(torch.stack(tokens))
    return torch.stack(samples) @ attn.projection.weight.T + attn.projection.bias


def test_multi_reference_bilateral_attention_matches_the_loop_reference():
    torch.manual_seed(0)
    attn = MultiheadBilateralAttention(
        d_model=8, num_heads=2, spatial_radius=1, bilateral_window=2, multi_reference=True
    ).double()
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 8, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 8, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    e = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = attn(q, k, v, e)
    ref = naive_multi_reference(attn, q, k, v, e)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    leaves = (q, k, v, e, attn.projection.weight)
    for a, b in zip(
        torch.autograd.grad(out, leaves, upstream), torch.autograd.grad(ref, leaves, upstream), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # one frame of several is not the previous-frame reading: the other frames change the output
    single = attn(q, k[:, :, -1], v[:, :, -1], e)
    assert not torch.allclose(single, out)


def test_multi_reference_is_a_switch_that_cannot_be_ignored():
    q, e = torch.randn(1, 8, 4, 5), torch.randn(1, 1, 4, 5)
    frames = torch.randn(1, 8, 2, 4, 5)
    previous_only = MultiheadBilateralAttention(d_model=8, num_heads=2, spatial_radius=1, bilateral_window=2)
    with pytest.raises(ValueError, match="multi_reference=False.*2 frames.*multi_reference=True"):
        previous_only(q, frames, frames, e)
    with pytest.raises(ValueError, match="backend='flex' takes one"):
        MultiheadBilateralAttention(d_model=8, num_heads=2, multi_reference=True, backend="flex")
    multi = MultiheadBilateralAttention(
        d_model=8, num_heads=2, spatial_radius=1, bilateral_window=2, multi_reference=True
    )
    with pytest.raises(ValueError, match="on its grid"):
        multi(q, frames[..., :4], frames[..., :4], e)


def test_block_with_separate_key_and_multi_reference_matches_naive():
    """One block in the paper's reading: memory keys from the block's own W^K, bilateral attention over every given
    frame. Self- and cross-attention are the block's own (tested with AOT's LSTT); the rest is written out."""
    torch.manual_seed(1)
    size, c, frames = (4, 5), 8, 2
    block = BilateralBlock(
        d_model=c,
        self_heads=2,
        att_heads=2,
        dim_feedforward=16,
        spatial_radius=1,
        bilateral_window=2,
        separate_key=True,
        multi_reference=True,
    ).double()
    g = torch.Generator().manual_seed(2)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x, pos, e = rand(2, 20, c), rand(1, 20, c), rand(2, 1, *size)
    mem_k, mem_v = rand(2, frames, 20, c), rand(2, frames, 20, c)  # stored memory of two frames
    long_term = (mem_k.flatten(1, 2), mem_v.flatten(1, 2))
    maps = tuple(m.permute(0, 3, 1, 2).unflatten(-1, size) for m in (mem_k, mem_v))  # (B, C, T, h, w)
    out, key, value = block(x, size=size, encoding=e, pos=pos, long_term=long_term, short_term=maps)

    y = block.norm1(x)
    x1 = x + block.norm1_post(block.self_attn(y + pos, y + pos, y))
    y2 = block.norm2(x1)
    q = y2 @ block.linear_Q.weight.T + block.linear_Q.bias
    cross = block.cross_attn(q, *long_term)
    local = naive_multi_reference(block.bilateral_attn, q.transpose(1, 2).unflatten(-1, size), *maps, e)
    x2 = x1 + block.norm2_post(cross + local)
    ref = x2 + block.linear2(F.gelu(block.linear1(block.norm3(x2))))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(key, y2 @ block.linear_K.weight.T + block.linear_K.bias)  # W^K, not W^Q
    assert not torch.allclose(key, q)
    torch.testing.assert_close(value, y2)
    upstream = rand(2, 20, c).detach()
    leaves = (x, e, mem_k, mem_v, block.linear_Q.weight, block.bilateral_attn.projection.weight)
    grads = torch.autograd.grad((out * upstream).sum() + key.sum(), leaves)
    ref_grads = torch.autograd.grad((ref * upstream).sum() + (y2 @ block.linear_K.weight.T).sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the default ties W^K to W^Q: no linear_K, the memory key is the query projection
    tied = BilateralBlock(d_model=c, self_heads=2, att_heads=2, dim_feedforward=16, spatial_radius=1)
    assert tied.linear_K is None and "linear_K.weight" not in tied.state_dict()
