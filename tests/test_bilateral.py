"""BATMAN's bilateral attention (shared/papers/000, Sec. 3.2, Eq. 1-3) against naive dense references."""

import itertools

import pytest
import torch

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
