"""STM's space-time memory read and key/value projection against naive references (official memory-major layout)."""

import math

import pytest
import torch

from voszoo.layers import KeyValueProjection, SpaceTimeMemoryRead, memory_affinity, space_time_memory_read


def naive_read(mk, mv, qk, qv, *, bias=None, weight=None):
    """STM Eq. 1-2 the way the official code writes it: (B, THW, HW) affinity normalised over memory positions.

    bias: (B, HW, THW) additive logits; weight: (B, HW, THW) multiplicative prior applied after the softmax and
    renormalised over memory positions.
    """
    b, ck, t, h, w = mk.shape
    cv = mv.shape[1]
    hq, wq = qk.shape[-2:]
    mi = mk.reshape(b, ck, t * h * w).transpose(1, 2)  # (B, THW, Ck)
    qi = qk.reshape(b, ck, hq * wq)  # (B, Ck, HW)
    p = torch.bmm(mi, qi) / math.sqrt(ck)  # (B, THW, HW)
    if bias is not None:
        p = p + bias.transpose(1, 2)
    p = torch.softmax(p, dim=1)
    if weight is not None:
        p = p * weight.transpose(1, 2)
        p = p / p.sum(dim=1, keepdim=True)
    mem = torch.bmm(mv.reshape(b, cv, t * h * w), p).reshape(b, cv, hq, wq)
    return torch.cat([mem, qv], dim=1)


def random_inputs(*, b=2, ck=8, cv=6, cq=5, t=3, h=4, w=5, hq=4, wq=5, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    return rand(b, ck, t, h, w), rand(b, cv, t, h, w), rand(b, ck, hq, wq), rand(b, cq, hq, wq)


def grads(output, inputs, seed=1):
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return torch.autograd.grad(output, inputs, upstream)


def test_hand_computed_single_query_pixel():
    # C_k = 1, two memory positions with keys 0 and 2, query key 1: affinity softmax([0, 2]) (scale 1/sqrt(1))
    mk = torch.tensor([0.0, 2.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    mv = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    qk = torch.tensor([1.0], dtype=torch.float64).view(1, 1, 1, 1)
    qv = torch.tensor([7.0], dtype=torch.float64).view(1, 1, 1, 1)
    out = space_time_memory_read(mk, mv, qk, qv)
    e2 = math.exp(2.0)
    assert out.shape == (1, 2, 1, 1)
    assert out[0, 0, 0, 0].item() == pytest.approx((1.0 + 3.0 * e2) / (1.0 + e2), abs=1e-12)
    assert out[0, 1, 0, 0].item() == 7.0


@pytest.mark.parametrize("query_size", [(4, 5), (3, 2)])
def test_forward_and_backward_match_naive(query_size):
    inputs = random_inputs(hq=query_size[0], wq=query_size[1])
    fast = space_time_memory_read(*inputs)
    slow = naive_read(*inputs)
    assert fast.shape == (2, 6 + 5, *query_size)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    for g_fast, g_slow in zip(grads(fast, inputs), grads(slow, inputs), strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-12)


def test_module_equals_function_and_query_value_is_optional():
    mk, mv, qk, qv = random_inputs()
    module = SpaceTimeMemoryRead()
    assert list(module.parameters()) == []
    torch.testing.assert_close(module(mk, mv, qk, qv), space_time_memory_read(mk, mv, qk, qv))
    alone = space_time_memory_read(mk, mv, qk)
    torch.testing.assert_close(alone, naive_read(mk, mv, qk, qv)[:, : mv.shape[1]], rtol=0, atol=1e-12)


def test_additive_bias_matches_naive_forward_and_backward():
    mk, mv, qk, qv = random_inputs()
    bias = torch.randn(2, 20, 60, dtype=torch.float64, requires_grad=True)  # (B, HW, THW)
    inputs = (mk, mv, qk, qv, bias)
    fast = space_time_memory_read(mk, mv, qk, qv, attn_bias=bias)
    slow = naive_read(mk, mv, qk, qv, bias=bias)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    for g_fast, g_slow in zip(grads(fast, inputs), grads(slow, inputs), strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-12)


def test_log_bias_is_a_multiplicative_prior_on_the_affinity():
    mk, mv, qk, qv = random_inputs()
    weight = torch.rand(2, 20, 60, dtype=torch.float64) + 0.05  # e.g. MGA's W * G + b, positive
    fast = space_time_memory_read(mk, mv, qk, qv, attn_bias=weight.log())
    torch.testing.assert_close(fast, naive_read(mk, mv, qk, qv, weight=weight), rtol=0, atol=1e-12)


def test_broadcast_bias_over_query_positions():
    mk, mv, qk, qv = random_inputs()
    per_memory = torch.randn(2, 1, 60, dtype=torch.float64)  # one prior per memory position
    fast = space_time_memory_read(mk, mv, qk, qv, attn_bias=per_memory)
    torch.testing.assert_close(fast, naive_read(mk, mv, qk, qv, bias=per_memory.expand(2, 20, 60)), atol=1e-12, rtol=0)


def test_bool_mask_keeps_true_positions():
    mk, mv, qk, qv = random_inputs()
    keep = torch.rand(2, 20, 60, generator=torch.Generator().manual_seed(3)) > 0.3
    keep[..., 0] = True  # every query keeps at least one memory position
    fast = space_time_memory_read(mk, mv, qk, qv, attn_bias=keep)
    bias = torch.zeros(2, 20, 60, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(fast, naive_read(mk, mv, qk, qv, bias=bias), rtol=0, atol=1e-12)


def test_affinity_rows_are_distributions_over_memory():
    mk, _, qk, _ = random_inputs()
    affinity = memory_affinity(mk, qk)
    assert affinity.shape == (2, 20, 60)
    torch.testing.assert_close(affinity.sum(-1), torch.ones(2, 20, dtype=torch.float64))
    logits = torch.einsum("bcm,bcq->bqm", mk.flatten(2), qk.flatten(2)) / math.sqrt(8)
    torch.testing.assert_close(affinity, logits.softmax(-1))


def test_float32_matches_float64_reference():
    inputs64 = random_inputs()
    inputs32 = [x.detach().float() for x in inputs64]
    torch.testing.assert_close(space_time_memory_read(*inputs32).double(), naive_read(*inputs64), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mk_shape", "mv_shape", "qk_shape", "qv_shape", "word"),
    [
        ((2, 8, 3, 4), (2, 6, 3, 4, 5), (2, 8, 4, 5), (2, 5, 4, 5), "memory_key"),
        ((2, 8, 3, 4, 5), (2, 6, 2, 4, 5), (2, 8, 4, 5), (2, 5, 4, 5), "memory_value"),
        ((2, 8, 3, 4, 5), (2, 6, 3, 4, 5), (2, 7, 4, 5), (2, 5, 4, 5), "query_key"),
        ((2, 8, 3, 4, 5), (2, 6, 3, 4, 5), (2, 8, 4, 5), (2, 5, 4, 4), "query_value"),
    ],
)
def test_shape_errors_name_the_argument(mk_shape, mv_shape, qk_shape, qv_shape, word):
    with pytest.raises(ValueError, match=word):
        space_time_memory_read(
            torch.zeros(mk_shape), torch.zeros(mv_shape), torch.zeros(qk_shape), torch.zeros(qv_shape)
        )


def test_key_value_projection_shapes_and_separate_convs():
    projection = KeyValueProjection(in_channels=16, key_channels=4, value_channels=6)
    x = torch.randn(2, 16, 5, 7)
    key, value = projection(x)
    assert key.shape == (2, 4, 5, 7) and value.shape == (2, 6, 5, 7)
    assert projection.key.kernel_size == (3, 3) and projection.value.kernel_size == (3, 3)
    torch.testing.assert_close(
        key, torch.nn.functional.conv2d(x, projection.key.weight, projection.key.bias, padding=1)
    )
    # official sizes: 1024 -> 128 keys, 512 values
    official = KeyValueProjection()
    assert official.key.weight.shape == (128, 1024, 3, 3) and official.value.weight.shape == (512, 1024, 3, 3)
