"""Local window attention (AOT Eq. 7 short-term attention) against a naive per-query reference; AOT parameter names."""

import warnings

import pytest
import torch

from voszoo.layers.local_attention import MultiheadLocalAttention, local_window_attention

TRAIN_BACKENDS = ["tiled", "unfold"]


def naive_local_attention(q, k, v, *, window, dilation=1, bias=None, keep=None, rel_v=None, scale=None):
    """One query location at a time: list the in-image window slots, softmax over the kept ones.

    q, k: (B, h, dk, H, W); v: (B, h, dv, H, W); bias/keep: (B|1, h|1, window^2, H, W); rel_v: (h, dv, window^2).
    Slot o = i * window + j sits at offset ((i - r) * dilation, (j - r) * dilation). No kept slot -> zeros.
    """
    b, h, dk, height, width = q.shape
    dv = v.shape[2]
    r = (window - 1) // 2
    scale = dk**-0.5 if scale is None else scale
    out = torch.zeros(b, h, dv, height, width, dtype=v.dtype)
    for y in range(height):
        for x in range(width):
            slots, ys, xs = [], [], []
            for i in range(window):
                for j in range(window):
                    ky, kx = y + (i - r) * dilation, x + (j - r) * dilation
                    if 0 <= ky < height and 0 <= kx < width:
                        slots.append(i * window + j)
                        ys.append(ky)
                        xs.append(kx)
            keys = k[:, :, :, ys, xs]  # (B, h, dk, n)
            vals = v[:, :, :, ys, xs]  # (B, h, dv, n)
            logit = (q[:, :, :, y, x].unsqueeze(-1) * keys).sum(2) * scale  # (B, h, n)
            if bias is not None:
                logit = logit + bias[:, :, slots, y, x]
            allowed = torch.ones_like(logit, dtype=torch.bool)
            if keep is not None:
                allowed = allowed & keep[:, :, slots, y, x]
            big = logit.detach().masked_fill(~allowed, -1e300).amax(-1, keepdim=True)
            shifted = torch.where(allowed, logit - big, torch.zeros_like(logit))  # finite everywhere
            e = torch.where(allowed, torch.exp(shifted), torch.zeros_like(logit))
            p = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
            o = (p.unsqueeze(2) * vals).sum(-1)
            if rel_v is not None:
                o = o + (p.unsqueeze(2) * rel_v[:, :, slots].unsqueeze(0)).sum(-1)
            out[:, :, :, y, x] = o
    return out


def make_inputs(*, b=2, h=2, dk=3, dv=4, height=7, width=11, window=5, bias_heads=2, keep_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    w2 = window * window
    q, k, v = rand(b, h, dk, height, width), rand(b, h, dk, height, width), rand(b, h, dv, height, width)
    bias = None if bias_heads is None else rand(b, bias_heads, w2, height, width)
    rel_v = rand(h, dv, w2)
    keep = None
    if keep_heads is not None:
        keep = torch.rand(b, keep_heads, w2, height, width, generator=g) < 0.4
        keep[0, :, :, 2, 3] = False  # a fully dropped window
        keep[-1, 0, :, 0, 0] = False  # and one at a corner, one head only
    return q, k, v, bias, keep, rel_v


def check_forward_backward(backend, *, window, dilation=1, bias_heads=2, keep_heads=None, tile_size=4, **shape):
    q, k, v, bias, keep, rel_v = make_inputs(window=window, bias_heads=bias_heads, keep_heads=keep_heads, **shape)
    named = [
        (n, t)
        for n, t in zip(["query", "key", "value", "bias", "relative_value"], (q, k, v, bias, rel_v), strict=True)
        if t is not None
    ]
    names, leaves = [n for n, _ in named], [t for _, t in named]
    kw = dict(window=window, dilation=dilation, bias=bias, keep=keep, rel_v=rel_v)
    ref = naive_local_attention(q, k, v, **kw)
    out = local_window_attention(
        q,
        k,
        v,
        window_size=window,
        dilation=dilation,
        bias=bias,
        keep=keep,
        relative_value=rel_v,
        backend=backend,
        tile_size=tile_size,
    )
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, rg, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"grad {n}: {m}")
    return out


@pytest.mark.parametrize("backend", TRAIN_BACKENDS)
@pytest.mark.parametrize("window", [3, 5, 15])
def test_matches_naive_odd_sizes(backend, window):
    # 7 x 11 is not a multiple of the tile (4); window 15 is larger than the image.
    check_forward_backward(backend, window=window, height=7, width=11)


@pytest.mark.parametrize("backend", TRAIN_BACKENDS)
def test_dilation_two(backend):
    check_forward_backward(backend, window=3, dilation=2, height=7, width=9)
    check_forward_backward(backend, window=5, dilation=2, height=6, width=5, bias_heads=1, keep_heads=2)


@pytest.mark.parametrize("backend", TRAIN_BACKENDS)
def test_keep_mask_and_fully_dropped_windows(backend):
    out = check_forward_backward(backend, window=5, keep_heads=1, bias_heads=1)
    assert torch.count_nonzero(out[0, :, :, 2, 3]) == 0  # dropped window -> zeros (value and relative term)
    assert torch.count_nonzero(out[1, :, :, 0, 0]) == 0  # keep_heads=1: keep[1, 0] applies to every head


@pytest.mark.parametrize("tile_size", [1, 3, 8, 32])
def test_tiled_independent_of_tile_size(tile_size):
    check_forward_backward("tiled", window=5, tile_size=tile_size, keep_heads=2, b=1, height=9, width=6)


def test_float32_and_no_optional_terms():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 4, 10, 13, generator=g) for _ in range(3))
    ref = naive_local_attention(q.double(), k.double(), v.double(), window=7, scale=0.3)
    for backend in TRAIN_BACKENDS:
        out = local_window_attention(q, k, v, window_size=7, scale=0.3, backend=backend)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_window_one_returns_value():
    q, k, v, *_ = make_inputs(window=1)
    out = local_window_attention(q, k, v, window_size=1, backend="tiled")
    torch.testing.assert_close(out, v)


def test_dropout_zero_probability_path_and_scaling():
    q, k, v, bias, _, rel_v = make_inputs(window=3)
    torch.manual_seed(0)
    out = local_window_attention(q, k, v, window_size=3, bias=bias, relative_value=rel_v, dropout_p=0.5)
    ref = naive_local_attention(q, k, v, window=3, bias=bias, rel_v=rel_v)
    # Dropout keeps each probability or zeroes it and rescales by 2: outputs differ but stay finite.
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)


def test_flex_forward_on_cpu():
    # torch's FlexAttention runs on CPU (eager, dense) for forward only; it must equal the naive reference.
    for window, dilation, keep_heads in [(5, 1, None), (3, 2, 2), (15, 1, 1)]:
        q, k, v, bias, keep, rel_v = make_inputs(window=window, keep_heads=keep_heads, height=6, width=7)
        with torch.no_grad():
            ref = naive_local_attention(q, k, v, window=window, dilation=dilation, bias=bias, keep=keep, rel_v=rel_v)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile" (eager on CPU)
                out = local_window_attention(
                    q,
                    k,
                    v,
                    window_size=window,
                    dilation=dilation,
                    bias=bias,
                    keep=keep,
                    relative_value=rel_v,
                    backend="flex",
                )
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_flex_backward_on_cpu_is_a_clear_error():
    q, k, v, *_ = make_inputs(window=3)
    with pytest.raises(ValueError, match="forward-only"):
        local_window_attention(q, k, v, window_size=3, backend="flex")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(window_size=4), "odd"),
        (dict(window_size=3, backend="cuda"), "valid: auto, tiled, unfold, flex"),
        (dict(window_size=3, dilation=0), "dilation"),
        (dict(window_size=3, bias=torch.zeros(2, 2, 8, 7, 11)), r"bias must be .*window\^2=9"),
        (dict(window_size=3, keep=torch.ones(2, 2, 9, 7, 11)), "bool"),
        (dict(window_size=3, relative_value=torch.zeros(2, 4, 25)), "relative_value"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, k, v, *_ = make_inputs(window=3)
    with pytest.raises(ValueError, match=match):
        local_window_attention(q, k, v, **kwargs)


def test_module_parameters_match_official_aot():
    m = MultiheadLocalAttention(d_model=256, num_heads=8, window_size=15)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    # networks/layers/attention.py MultiheadLocalAttentionV2 in an AOT checkpoint (short_term_attn.*).
    assert shapes == {
        "relative_emb_v": (8, 32, 225),
        "relative_emb_k.weight": (1800, 32, 1, 1),
        "relative_emb_k.bias": (1800,),
        "projection.weight": (256, 256),
        "projection.bias": (256,),
    }
    assert torch.count_nonzero(m.relative_emb_v) == 0  # official init


def test_module_matches_naive_formula():
    torch.manual_seed(0)
    c, nh, window, height, width = 12, 3, 5, 6, 9
    m = MultiheadLocalAttention(d_model=c, num_heads=nh, window_size=window, backend="tiled").double()
    with torch.no_grad():
        m.relative_emb_v.normal_()
    q, k, v = (torch.randn(2, c, height, width, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = m(q, k, v)
    assert out.shape == (2, height * width, c)

    # Official recipe: grouped 1x1 conv of the unscaled query -> per-head relative key bias; heads = channel groups.
    hd, w2 = c // nh, window * window
    wk = m.relative_emb_k.weight.view(nh, w2, hd)
    bias = torch.einsum("gok,bgkyx->bgoyx", wk, q.view(2, nh, hd, height, width))
    bias = bias + m.relative_emb_k.bias.view(1, nh, w2, 1, 1)
    heads = naive_local_attention(
        q.view(2, nh, hd, height, width),
        k.view(2, nh, hd, height, width),
        v.view(2, nh, hd, height, width),
        window=window,
        bias=bias,
        rel_v=m.relative_emb_v,
        scale=hd**-0.5,
    )
    tokens = heads.reshape(2, c, height * width).transpose(1, 2)
    ref = tokens @ m.projection.weight.T + m.projection.bias
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)

    grad_out = torch.randn_like(out)
    params = [q, k, v, m.relative_emb_k.weight, m.relative_emb_v, m.projection.weight]
    for g, rg in zip(
        torch.autograd.grad(out, params, grad_out), torch.autograd.grad(ref, params, grad_out), strict=True
    ):
        torch.testing.assert_close(g, rg, atol=1e-10, rtol=1e-10)


def test_module_backends_agree_and_dropout_only_in_training():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, 5, 7) for _ in range(3))
    a = MultiheadLocalAttention(d_model=16, num_heads=2, window_size=3, backend="tiled", dropout=0.5)
    b = MultiheadLocalAttention(d_model=16, num_heads=2, window_size=3, backend="unfold", dropout=0.5)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    torch.testing.assert_close(a(q, k, v), b(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a(q, k, v), a(q, k, v))
    a.train()
    assert not torch.allclose(a(q, k, v), b(q, k, v), atol=1e-3)
    with pytest.raises(ValueError, match="query must be"):
        a(q[:, :8], k, v)


# -- several key maps (BATMAN's bilateral attention over several reference frames, Yu et al. ECCV 2022, Sec. 3.2) -----
def naive_multi_map_attention(q, k, v, *, window, dilation, bias, keep, rel_v):
    """One query at a time, one softmax over the in-image, kept window slots of EVERY map t.

    q: (B, h, dk, H, W); k: (B, h, dk, T, H, W); v: (B, h, dv, T, H, W); bias/keep: (B, h, window^2, H, W), the same
    for every map; rel_v: (h, dv, window^2).
    """
    b_, h_, dk, height, width = q.shape
    frames = k.shape[3]
    r = (window - 1) // 2
    out = torch.zeros(b_, h_, v.shape[2], height, width, dtype=v.dtype)
    for b in range(b_):
        for head in range(h_):
            for y in range(height):
                for x in range(width):
                    logits, values = [], []
                    for t in range(frames):
                        for o in range(window * window):
                            ky, kx = y + (o // window - r) * dilation, x + (o % window - r) * dilation
                            if 0 <= ky < height and 0 <= kx < width and keep[b, head, o, y, x]:
                                logit = (q[b, head, :, y, x] * k[b, head, :, t, ky, kx]).sum() * dk**-0.5
                                logits.append(logit + bias[b, head, o, y, x])
                                values.append(v[b, head, :, t, ky, kx] + rel_v[head, :, o])
                    if logits:
                        weights = torch.softmax(torch.stack(logits), dim=0)
                        out[b, head, :, y, x] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("backend", TRAIN_BACKENDS)
@pytest.mark.parametrize("dilation", [1, 2])
def test_several_key_maps_share_one_softmax(backend, dilation):
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    q, k, v = rand(1, 2, 3, 5, 6), rand(1, 2, 3, 3, 5, 6), rand(1, 2, 4, 3, 5, 6)  # T = 3 key maps
    bias, rel_v = rand(1, 2, 9, 5, 6), rand(2, 4, 9)
    keep = torch.rand(1, 2, 9, 5, 6, generator=g) < 0.6
    keep[0, 1, :, 2, 2] = False  # a query with nothing kept in any map: zeros
    leaves = (q, k, v, bias, rel_v)
    kw = dict(bias=bias, keep=keep, relative_value=rel_v, dilation=dilation, backend=backend, tile_size=4)
    out = local_window_attention(q, k, v, window_size=3, **kw)
    ref = naive_multi_map_attention(q, k, v, window=3, dilation=dilation, bias=bias, keep=keep, rel_v=rel_v)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    assert out[0, 1, :, 2, 2].abs().sum() == 0
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads, ref_grads = torch.autograd.grad(out, leaves, upstream), torch.autograd.grad(ref, leaves, upstream)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # one map given with T = 1 is the single-map call
    single = local_window_attention(q, k[:, :, :, 1], v[:, :, :, 1], window_size=3, **kw)
    torch.testing.assert_close(local_window_attention(q, k[:, :, :, 1:2], v[:, :, :, 1:2], window_size=3, **kw), single)


def test_several_key_maps_bad_arguments():
    q, k, v, *_ = make_inputs(window=3)
    frames_k, frames_v = k[:, :, :, None].expand(-1, -1, -1, 2, -1, -1), v[:, :, :, None].expand(-1, -1, -1, 2, -1, -1)
    with pytest.raises(ValueError, match="backend='flex' takes one key map, got T=2"):
        local_window_attention(q.detach(), frames_k.detach(), frames_v.detach(), window_size=3, backend="flex")
    with pytest.raises(ValueError, match="both"):
        local_window_attention(q, frames_k, v, window_size=3)
    with pytest.raises(ValueError, match="with T=2 frames"):
        local_window_attention(q, frames_k[..., :5], frames_v, window_size=3)
