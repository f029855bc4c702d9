"""AOT's parts against hand-computed values and naive references: sine position embedding, identity bank
(assignment, embedding, decoding), multi-head attention, the LSTT block and stack, FPN head, encoders."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from voszoo.backbones.frozen import FreezableResNetBackbone, FrozenBatchNorm2d, convert_frozen_batchnorm
from voszoo.backbones.mobilenet import MobileNetV2Backbone
from voszoo.backbones.resnet import ResNetBackbone
from voszoo.decoders.fpn import FPNHead
from voszoo.layers.identity import IdentityBank, assign_identities, identity_decode
from voszoo.layers.lstt import LSTT, DropPath, LSTTBlock, MultiheadAttention, multihead_attention
from voszoo.layers.position import SinePositionEmbedding, sine_position_embedding


# -- position embedding ----------------------------------------------------------------------------------------------
def test_sine_position_embedding_hand_computed():
    pos = sine_position_embedding(2, 3, num_pos_feats=4)
    assert pos.shape == (1, 8, 2, 3)
    eps, two_pi = 1e-6, 2 * math.pi
    for y in range(2):
        for x in range(3):
            ey, ex = y / (1 + eps) * two_pi, x / (2 + eps) * two_pi
            # frequencies 10000 ** (2 * (k // 2) / 4) = 1, 1, 100, 100; even k sine, odd k cosine; rows then columns
            expected = [math.sin(ey), math.cos(ey), math.sin(ey / 100), math.cos(ey / 100)]
            expected += [math.sin(ex), math.cos(ex), math.sin(ex / 100), math.cos(ex / 100)]
            assert pos[0, :, y, x].tolist() == pytest.approx(expected, abs=1e-6)
    # unnormalised: raw indices; a single row sits at 0
    raw = sine_position_embedding(3, 1, num_pos_feats=2, normalize=False)
    assert raw[0, 0, :, 0].tolist() == pytest.approx([0.0, math.sin(1.0), math.sin(2.0)], abs=1e-6)
    assert raw[0, 2, :, 0].tolist() == pytest.approx([0.0, 0.0, 0.0])
    module = SinePositionEmbedding(num_pos_feats=4)
    torch.testing.assert_close(module(torch.zeros(5, 7, 2, 3)), pos)
    with pytest.raises(ValueError, match="even"):
        sine_position_embedding(2, 2, num_pos_feats=3)


# -- identity bank ---------------------------------------------------------------------------------------------------
def test_assignment_keeps_background_and_draws_distinct_identities():
    torch.manual_seed(0)
    fixed = assign_identities(2, 3, 10, shuffle=False)
    assert fixed.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    drawn = [assign_identities(4, 5, 10, shuffle=True) for _ in range(50)]
    for assignment in drawn:
        assert (assignment[:, 0] == 0).all()
        for row in assignment[:, 1:].tolist():
            assert len(set(row)) == 5 and all(1 <= s <= 10 for s in row)
    used = torch.cat([a[:, 1:].flatten() for a in drawn])
    assert set(used.tolist()) == set(range(1, 11))  # every identity gets its chance
    assert any((a[0] != a[1]).any() for a in drawn)  # per sample, not per batch
    with pytest.raises(ValueError, match="identity bank"):
        assign_identities(1, 11, 10, shuffle=False)


def naive_embedding(bank, masks, assignment):
    """E = Y P D with explicit loops: scatter class channels to bank slots, then the patch convolution."""
    b, n1, h, w = masks.shape
    slots = torch.zeros(b, bank.num_identities + 1, h, w, dtype=masks.dtype)
    for i in range(b):
        for c in range(n1):
            slots[i, assignment[i, c]] += masks[i, c]
    return F.conv2d(slots, bank.weight, bank.bias, stride=16, padding=8)


def test_identity_embedding_equals_the_permuted_mask_convolution_and_decoding_inverts_it():
    torch.manual_seed(0)
    bank = IdentityBank(num_identities=10, embed_dim=8).double()
    assert bank.weight.shape == (8, 11, 17, 17) and bank.bias.shape == (8,)
    # official init: the (C, 11*17*17) weight matrix has orthogonal rows of norm 17^-2
    rows = bank.weight.detach().view(8, -1)
    torch.testing.assert_close(rows @ rows.T, torch.eye(8, dtype=torch.float64) * 17**-4)
    labels = torch.randint(0, 4, (2, 32, 48))
    masks = F.one_hot(labels, 4).permute(0, 3, 1, 2).double().requires_grad_(True)
    assignment = bank.assign(2, 3, shuffle=True)
    emb = bank(masks, assignment)
    assert emb.shape == (2, 8, 2, 3)
    masks_ref = masks.detach().clone().requires_grad_(True)
    expected = naive_embedding(bank, masks_ref, assignment)
    torch.testing.assert_close(emb, expected)
    emb.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(masks.grad, masks_ref.grad)
    # round trip: scatter to the bank slots, decode (select the assigned slots) -> the class masks back
    torch.testing.assert_close(bank.decode(bank.scatter(masks.detach(), assignment), assignment), masks.detach())


def test_identity_decoding_selects_assigned_logits_and_masks_missing_objects():
    id_logits = torch.arange(2 * 11, dtype=torch.float32).view(2, 11, 1, 1)  # slot s of sample b holds 11 b + s
    assignment = torch.tensor([[0, 7, 2, 9], [0, 3, 10, 1]])
    decoded = identity_decode(id_logits, assignment)
    assert decoded[:, :, 0, 0].tolist() == [[0, 7, 2, 9], [11, 14, 21, 12]]
    masked = identity_decode(id_logits, assignment, num_objects=torch.tensor([3, 1]))
    assert masked[0, :, 0, 0].tolist() == [0, 7, 2, 9]
    assert masked[1, :2, 0, 0].tolist() == [11, 14] and masked[1, 2:, 0, 0].tolist() == [-1e10, -1e10]
    probs = masked.softmax(1)
    assert probs[1, 2:].abs().max() == 0.0 and torch.allclose(probs.sum(1), torch.ones(2, 1, 1))
    half = identity_decode(id_logits.half(), assignment, num_objects=torch.tensor([3, 1]))
    assert half[1, 3, 0, 0].item() == -1e4
    with pytest.raises(ValueError, match="M\\+1 = 11"):
        IdentityBank(num_identities=10, embed_dim=8).decode(torch.zeros(1, 5, 1, 1), assignment[:1])


# -- attention -------------------------------------------------------------------------------------------------------
def naive_multihead(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, with einsum."""
    b, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (x.view(b, x.shape[1], heads, d) for x in (q, k, v))
    logits = torch.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(d)
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), vh).reshape(b, lq, c)


def test_multihead_attention_matches_einsum_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g, dtype=torch.float64, requires_grad=True) for n in (6, 30, 30))
    out = multihead_attention(q, k, v, num_heads=4)
    refs = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    expected = naive_multihead(*refs, 4)
    torch.testing.assert_close(out, expected)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    for x, ref in zip((q, k, v), refs, strict=True):
        torch.testing.assert_close(x.grad, ref.grad)
    module = MultiheadAttention(d_model=16, num_heads=4, use_linear=False).double()
    assert [n for n, _ in module.named_parameters()] == ["projection.weight", "projection.bias"]
    torch.testing.assert_close(module(q, k, v), module.projection(expected))


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def to_map(x, size):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


def naive_block(block, x, size, pos, memory_k, memory_v, short_k, short_v):
    """One LSTT block written out (eval mode): self-attention, Eq. 6 long-term attention over all memory tokens,
    Eq. 7 short-term attention (the block's own local attention module, tested separately), feed-forward."""
    sa = block.self_attn
    y = layer_norm(x, block.norm1)
    qk = y + pos
    att = naive_multihead(
        qk @ sa.linear_Q.weight.T + sa.linear_Q.bias,
        qk @ sa.linear_K.weight.T + sa.linear_K.bias,
        y @ sa.linear_V.weight.T + sa.linear_V.bias,
        8,
    )
    x = x + att @ sa.projection.weight.T + sa.projection.bias
    y2 = layer_norm(x, block.norm2)
    q = y2 @ block.linear_Q.weight.T + block.linear_Q.bias
    lt = naive_multihead(q, memory_k, memory_v, 8)
    lt = lt @ block.long_term_attn.projection.weight.T + block.long_term_attn.projection.bias
    st = block.short_term_attn(to_map(q, size), short_k, short_v)
    x = x + lt + st
    y = layer_norm(x, block.norm3)
    hidden = to_map(y @ block.linear1.weight.T + block.linear1.bias, size)
    hidden = F.group_norm(hidden, 32, block.activation.gn.weight, block.activation.gn.bias)
    hidden = F.conv2d(F.gelu(hidden), block.activation.conv.weight, padding=2, groups=hidden.shape[1])
    x = x + hidden.flatten(2).transpose(1, 2) @ block.linear2.weight.T + block.linear2.bias
    return x, q, y2


def test_lstt_block_long_term_attention_matches_a_naive_reference_forward_and_backward():
    torch.manual_seed(0)
    size, length, c = (3, 4), 12, 64
    block = LSTTBlock(d_model=c, dim_feedforward=128, window_size=5).double().eval()
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x, pos = rand(2, length, c).requires_grad_(True), rand(1, length, c)
    # two long-term memory frames, each K = linear_Q(norm2(x_m)) and V = linear_V(norm2(x_m) + E_m) (Eq. 4, 6)
    frames = [(rand(2, length, c), rand(2, length, c), rand(2, length, c)) for _ in range(2)]
    fused = [block.fuse_key_value(k, y, e) for k, y, e in frames]
    memory_k = torch.cat([k for k, _ in fused], 1).detach().requires_grad_(True)
    memory_v = torch.cat([v for _, v in fused], 1).detach().requires_grad_(True)
    torch.testing.assert_close(fused[1][1], block.linear_V(frames[1][1] + frames[1][2]))
    short_k, short_v = to_map(fused[1][0].detach(), size), to_map(fused[1][1].detach(), size)
    out, key, value = block(x, size=size, pos=pos, long_term=(memory_k, memory_v), short_term=(short_k, short_v))
    assert out.shape == (2, length, c)

    refs = [t.detach().clone().requires_grad_(True) for t in (x, memory_k, memory_v)]
    expected, expected_key, expected_value = naive_block(block, refs[0], size, pos, refs[1], refs[2], short_k, short_v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(key, expected_key)
    torch.testing.assert_close(value, expected_value)

    weight = rand(*out.shape)
    block.zero_grad()
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    block.zero_grad()
    (expected * weight).sum().backward()
    for tensor, ref in zip((x, memory_k, memory_v), refs, strict=True):
        torch.testing.assert_close(tensor.grad, ref.grad)
    naive_grads = {n: p.grad for n, p in block.named_parameters() if p.grad is not None}
    assert set(grads) == set(naive_grads) and "linear_V.weight" not in grads  # memory values come in fused
    for name, grad in naive_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)


def test_reference_mode_reads_the_frame_itself():
    torch.manual_seed(0)
    size, c = (4, 4), 32
    block = LSTTBlock(d_model=c, dim_feedforward=64, window_size=3).double().eval()
    x, pos, id_emb = (torch.randn(2, 16, c, dtype=torch.float64) for _ in range(3))
    out, key, value = block(x, size=size, pos=pos, id_emb=id_emb)
    # identical to passing the frame's own fused memory explicitly
    mem_k, mem_v = block.fuse_key_value(key, value, id_emb)
    again, _, _ = block(
        x, size=size, pos=pos, long_term=(mem_k, mem_v), short_term=(to_map(mem_k, size), to_map(mem_v, size))
    )
    torch.testing.assert_close(out, again)
    with pytest.raises(ValueError, match="either id_emb"):
        block(x, size=size, id_emb=id_emb, long_term=(mem_k, mem_v), short_term=(mem_k, mem_v))
    with pytest.raises(ValueError, match="required"):
        block(x, size=size)


def test_lstt_stack_names_norms_and_droppath():
    lstt = LSTT(num_layers=3, d_model=32, dim_feedforward=64, window_size=3)
    names = {n for n, _ in lstt.named_parameters()}
    assert {"mask_token", "decoder_norms.2.weight", "layers.2.activation.gn.weight"} <= names
    assert {"layers.1.short_term_attn.relative_emb_k.weight", "layers.1.self_attn.linear_K.bias"} <= names
    assert len(lstt.decoder_norms) == 3 and not lstt.mask_token.requires_grad
    assert all(layer.droppath.p == 0.1 for layer in lstt.layers)
    scaled = LSTT(num_layers=3, d_model=32, dim_feedforward=64, window_size=3, droppath_scaling=True)
    assert [layer.droppath.p for layer in scaled.layers] == [0.0, 0.05, 0.1]
    lstt.eval()
    x, id_emb = torch.randn(1, 9, 32), torch.randn(1, 9, 32)
    outputs, memories = lstt(x, size=(3, 3), id_emb=id_emb)
    # each output normalised by its own decoder norm: the residual stream feeds the next block un-normalised
    raw, key, value = lstt.layers[0](x, size=(3, 3), id_emb=id_emb)
    torch.testing.assert_close(outputs[0], lstt.decoder_norms[0](raw))
    torch.testing.assert_close(memories[0][0], key)
    raw1, _, _ = lstt.layers[1](raw, size=(3, 3), id_emb=id_emb)
    torch.testing.assert_close(outputs[1], lstt.decoder_norms[1](raw1))


def test_droppath_drops_whole_samples():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    out = drop(torch.ones(4000, 3, 2))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is kept or dropped as a whole
    assert abs(per_sample[:, 0].mean().item() - 1.0) < 0.1
    x = torch.randn(3, 4)
    assert drop.eval()(x) is x


# -- FPN head --------------------------------------------------------------------------------------------------------
def test_fpn_head_matches_a_naive_reference():
    torch.manual_seed(0)
    head = FPNHead(in_channels=48, out_channels=5, hidden_channels=32, skip_channels=(12, 10, 8)).double()
    x = torch.randn(2, 48, 3, 4, dtype=torch.float64)
    s16, s8, s4 = (torch.randn(2, ch, 3 * k, 4 * k, dtype=torch.float64) for ch, k in ((12, 1), (10, 2), (8, 4)))

    def conv_gn(block, t, padding):
        return F.group_norm(
            F.conv2d(t, block.conv.weight, block.conv.bias, padding=padding), 8, block.gn.weight, block.gn.bias
        )

    def up(t, like):
        return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=True)

    y = F.relu(conv_gn(head.conv_in, x, 0))
    y = F.relu(conv_gn(head.conv_16x, F.conv2d(s16, head.adapter_16x.weight, head.adapter_16x.bias) + y, 1))
    y = F.relu(conv_gn(head.conv_8x, F.conv2d(s8, head.adapter_8x.weight, head.adapter_8x.bias) + up(y, s8), 1))
    y = F.relu(conv_gn(head.conv_4x, F.conv2d(s4, head.adapter_4x.weight, head.adapter_4x.bias) + up(y, s4), 1))
    expected = F.conv2d(y, head.conv_out.weight, head.conv_out.bias)
    out = head(x, [s16, s8, s4])
    assert out.shape == (2, 5, 12, 16)
    torch.testing.assert_close(out, expected)
    assert head.conv_8x.conv.weight.shape == (16, 32, 3, 3) and head.adapter_4x.weight.shape == (16, 8, 1, 1)
    with pytest.raises(ValueError, match="s8"):
        head(x, [s16, s4, s4])


# -- encoders --------------------------------------------------------------------------------------------------------
def test_mobilenet_keeps_stride_16_by_dilating_the_last_stages():
    backbone = MobileNetV2Backbone(frozen_bn=True, freeze_at=0).eval()
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "s4": (1, 24, 16, 24),
        "s8": (1, 32, 8, 12),
        "s16": (1, 96, 4, 6),
        "last": (1, 1280, 4, 6),
    }
    depthwise = [backbone.features[i].conv[1][0] for i in range(14, 18)]
    assert [(c.stride, c.dilation, c.padding) for c in depthwise] == [
        ((1, 1), (1, 1), (1, 1)),
        ((1, 1), (2, 2), (2, 2)),
        ((1, 1), (2, 2), (2, 2)),
        ((1, 1), (2, 2), (2, 2)),
    ]
    # the undilated torchvision stages before it are untouched: same weights -> same s16 features
    reference = convert_frozen_batchnorm(torchvision.models.mobilenet_v2(weights=None).features.eval())
    reference.load_state_dict({k[len("features.") :]: v for k, v in backbone.state_dict().items()})
    torch.testing.assert_close(reference[:14](torch.ones(1, 3, 32, 32)), backbone(torch.ones(1, 3, 32, 32))["s16"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert not any(k.endswith("num_batches_tracked") for k in backbone.state_dict())


def test_mobilenet_loads_torchvision_weights_and_freezes_stages(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v2(weights=None)
    with torch.no_grad():
        reference.features[3].conv[0][1].running_var.uniform_(0.5, 2.0)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    backbone = MobileNetV2Backbone(weights=str(path), frozen_bn=True, freeze_at=2)
    bn = backbone.features[3].conv[0][1]
    assert isinstance(bn, FrozenBatchNorm2d) and torch.equal(
        bn.running_var, reference.features[3].conv[0][1].running_var
    )
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {"0", "1", "2", "3"} and trainable == {str(i) for i in range(4, 19)}
    live = MobileNetV2Backbone(frozen_bn=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in live.modules()) and all(
        p.requires_grad for p in live.parameters()
    )
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        MobileNetV2Backbone(weights="NOPE")
    with pytest.raises(ValueError, match="freeze_at"):
        MobileNetV2Backbone(freeze_at=6)


def test_frozen_resnet_equals_the_eval_mode_resnet_and_drops_batchnorm_parameters():
    torch.manual_seed(0)
    plain = ResNetBackbone(depth=18).eval()
    with torch.no_grad():
        for module in plain.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    frozen = FreezableResNetBackbone(depth=18, frozen_bn=True, freeze_at=2)
    state = {k: v for k, v in plain.state_dict().items() if not k.endswith("num_batches_tracked")}
    frozen.load_state_dict(state)
    image = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(frozen(image)["s16"], plain(image)["s16"])
    batchnorm_params = sum(p.numel() for m in plain.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in plain.parameters()) - batchnorm_params
    frozen_names = {n for n, p in frozen.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen_names and all(n.startswith(("conv1", "layer1")) for n in frozen_names)
    assert all(p.requires_grad for n, p in frozen.named_parameters() if n.startswith(("layer2", "layer3")))
