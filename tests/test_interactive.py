"""SITVOS's interactive transformer (Lan et al., AAAI 2022, Sec. 3.3, Eq. 1-4) against naive einsum references."""

import math

import pytest
import torch

from voszoo.layers.interactive import AttentionBlock, InteractiveTransformer


# -- naive references, written from the equations ---------------------------------------------------------------------
def naive_layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def naive_block(block, x, y, z):
    """LN(softmax((x W^Q)(y W^K)^T / temperature) (z W^V) + x), one sample at a time with explicit loops."""
    outputs = []
    for b in range(x.shape[0]):
        q = torch.einsum("lc,dc->ld", x[b], block.to_query.weight)
        k = torch.einsum("lc,dc->ld", y[b], block.to_key.weight)
        v = z[b] if block.to_value is None else torch.einsum("lc,dc->ld", z[b], block.to_value.weight)
        logits = torch.einsum("qd,kd->qk", q, k) / block.temperature
        weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        weights = weights / weights.sum(dim=1, keepdim=True)
        outputs.append(naive_layer_norm(torch.einsum("qk,kc->qc", weights, v) + x[b], block.norm))
    return torch.stack(outputs)


def naive_transformer(model, memory, query, mask_embedding):
    """Eq. 1-4 object by object: returns (B, K, L_q, C)."""
    results = []
    for k in range(mask_embedding.shape[1]):
        m_sa = naive_block(model.memory_self, memory, memory, memory)
        q_sa = naive_block(model.query_self, query, query, query)
        m_x = mask_embedding[:, k] * memory
        if model.fim:
            m_out = naive_block(model.memory_cross, m_sa, q_sa, q_sa)  # Eq. 3
            q_out = naive_block(model.query_cross, q_sa, m_sa, m_x)  # Eq. 4
            t_out = naive_block(model.output_cross, q_out, m_out, m_out)  # Eq. 2
        else:
            t_out = naive_block(model.output_cross, q_sa, m_sa, m_x)
        results.append(t_out)
    return torch.stack(results, dim=1)


def randomise_norms(module, generator):
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.copy_(
                    1 + 0.3 * torch.randn(norm.weight.shape, generator=generator, dtype=norm.weight.dtype)
                )
                norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator, dtype=norm.bias.dtype))


def grads(module, *inputs):
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone() for x in inputs]


# -- one block ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_projection", [True, False])
@pytest.mark.parametrize("temperature", [None, 3.0])
def test_block_forward_and_backward_match_naive(value_projection, temperature):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = AttentionBlock(channels=12, key_channels=5, value_projection=value_projection, temperature=temperature)
    block = block.double().eval()
    randomise_norms(block, g)
    x = torch.randn(2, 7, 12, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 9, 12, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 9, 12, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)

    (block(x, y, z) * upstream).sum().backward()
    fast = grads(block, x, y, z)
    out = block(x, y, z)
    for t in (*block.parameters(), x, y, z):
        t.grad = None
    expected = naive_block(block, x, y, z)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    for a, b in zip(fast, grads(block, x, y, z), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert block.temperature == (math.sqrt(5) if temperature is None else temperature)


def test_block_single_key_hand_computed():
    """One key token gets all the attention: the output is LN(z W^V + x), whatever the query and key."""
    block = AttentionBlock(channels=4, key_channels=2).double().eval()
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]], dtype=torch.float64)
    z = torch.tensor([[[1.0, 0.0, -1.0, 2.0]]], dtype=torch.float64)
    with torch.no_grad():
        block.to_value.weight.copy_(2 * torch.eye(4, dtype=torch.float64))
        out = block(x, torch.randn(1, 1, 4, dtype=torch.float64), z)
    for row, xr in zip(out[0], x[0], strict=True):
        s = xr + 2 * z[0, 0]  # e.g. [3, 2, 1, 8] for the first row
        expected = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + 1e-5)
        torch.testing.assert_close(row, expected)


def test_block_defaults_and_errors():
    block = AttentionBlock(channels=128)
    assert block.temperature == 8.0  # sqrt(d_k = 64), the official code's constant
    assert block.to_query.bias is None and block.to_query.weight.shape == (64, 128)
    assert block.to_value.weight.shape == (128, 128)
    assert block.dropout == 0.01
    with pytest.raises(ValueError, match="C=128"):
        block(torch.randn(1, 3, 64), torch.randn(1, 3, 128), torch.randn(1, 3, 128))
    with pytest.raises(ValueError, match="length"):
        block(torch.randn(1, 3, 128), torch.randn(1, 4, 128), torch.randn(1, 5, 128))
    with pytest.raises(ValueError, match="temperature"):
        AttentionBlock(channels=8, temperature=0.0)
    with pytest.raises(ValueError, match="shared norm"):
        AttentionBlock(channels=8, norm=torch.nn.LayerNorm(4))


def test_block_dropout_only_in_training():
    torch.manual_seed(0)
    block = AttentionBlock(channels=8, key_channels=4, dropout=0.5)
    x = torch.randn(1, 16, 8)
    block.eval()
    torch.testing.assert_close(block(x, x, x), block(x, x, x))
    block.train()
    assert not torch.allclose(block(x, x, x), block(x, x, x))


# -- the transformer ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"fim": True},
        {"fim": False},
        {"fim": True, "cross_value_projection": False, "shared_cross_norm": True, "temperature": 8.0},
        {"fim": False, "cross_value_projection": False, "shared_cross_norm": True},
    ],
    ids=["fim-paper", "plain-paper", "fim-official", "plain-official"],
)
def test_transformer_forward_and_backward_match_naive(options):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = InteractiveTransformer(channels=8, key_channels=4, dropout=0.0, **options).double().eval()
    randomise_norms(model, g)
    memory = torch.randn(2, 2 * 6, 8, generator=g, dtype=torch.float64, requires_grad=True)  # T = 2, 6 tokens each
    query = torch.randn(2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 3, 12, 8, generator=g, dtype=torch.float64).requires_grad_()  # 3 objects
    upstream = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)

    out = model(memory, query, mask)
    assert out.shape == (2, 3, 6, 8)
    (out * upstream).sum().backward()
    fast = grads(model, memory, query, mask)
    for t in (*model.parameters(), memory, query, mask):
        t.grad = None
    expected = naive_transformer(model, memory, query, mask)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    for a, b in zip(fast, grads(model, memory, query, mask), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_transformer_single_object_input_and_object_independence():
    torch.manual_seed(2)
    model = InteractiveTransformer(channels=8, key_channels=4).eval()
    memory, query, mask = torch.randn(1, 10, 8), torch.randn(1, 5, 8), torch.rand(1, 2, 10, 8)
    both = model(memory, query, mask)
    for k in range(2):
        single = model(memory, query, mask[:, k])
        assert single.shape == (1, 5, 8)
        torch.testing.assert_close(both[:, k], single, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="mask_embedding"):
        model(memory, query, torch.rand(1, 2, 9, 8))


def test_transformer_structure_of_variants():
    official = InteractiveTransformer(channels=128, cross_value_projection=False, shared_cross_norm=True, fim=True)
    blocks = [official.memory_cross, official.query_cross, official.output_cross]
    assert all(b.to_value is None for b in blocks)
    assert blocks[0].norm is blocks[1].norm is blocks[2].norm
    assert official.memory_self.to_value is not None and official.memory_self.norm.eps == 1e-6
    assert official.memory_self.norm is not official.query_self.norm
    # official Memory: 2 SA x (2*128*64 + 128*128 + 2*128) + 3 CA x 2*128*64 + one LN (2*128)
    assert (
        sum(p.numel() for p in official.parameters()) == 2 * (2 * 128 * 64 + 128 * 128 + 256) + 3 * 2 * 128 * 64 + 256
    )
    plain = InteractiveTransformer(channels=16, key_channels=8, fim=False)
    assert plain.memory_cross is None and plain.query_cross is None
    paper = InteractiveTransformer()
    assert paper.channels == 256 and paper.output_cross.to_value.weight.shape == (256, 256)
    assert paper.output_cross.to_query.weight.shape == (64, 256)
