"""MUNet's MU-Layer and MSAM (shared/papers/002, Sec. 3.2-3.3) against naive references and synthetic motion."""

import math

import pytest
import torch
import torch.nn.functional as F

from voszoo.layers.motion_uncertainty import (
    AdditiveFusion,
    MotionEnhancement,
    MotionFeatureNet,
    MotionSpatialAttention,
    MULayer,
    local_cost_volume,
    soft_argmin_displacement,
    window_max,
    window_validity,
)


# -- naive references ------------------------------------------------------------------------------------------------
def naive_cost_volume(current, previous, window):
    """Eq. 1 by loops: cos(F_t(x), F_{t-1}(x + u)), 0 where x + u leaves the map."""
    b, _, h, w = current.shape
    u, v = window
    out = current.new_zeros(b, u, v, h, w)
    for i in range(u):
        for j in range(v):
            for y in range(h):
                for x in range(w):
                    yy, xx = y + i - u // 2, x + j - v // 2
                    if 0 <= yy < h and 0 <= xx < w:
                        a, c = current[:, :, y, x], previous[:, :, yy, xx]
                        out[:, i, j, y, x] = (a * c).sum(1) / (a.norm(dim=1) * c.norm(dim=1))
    return out


def naive_validity(h, w, window):
    u, v = window
    out = torch.zeros(u, v, h, w, dtype=torch.bool)
    for i in range(u):
        for j in range(v):
            for y in range(h):
                for x in range(w):
                    out[i, j, y, x] = 0 <= y + i - u // 2 < h and 0 <= x + j - v // 2 < w
    return out


def shifted(previous, dx, dy):
    """current(x, y) = previous(x + dx, y + dy) where defined, and the mask of those pixels."""
    current = torch.zeros_like(previous)
    h, w = previous.shape[-2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    current[..., ys, xs] = previous[..., ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
    defined = torch.zeros(h, w, dtype=torch.bool)
    defined[ys, xs] = True
    return current, defined


def plane_waves(h, w, *, offset, waves, phases):
    """A smooth pattern whose cosine similarity depends only on the difference of positions: channel pairs
    (cos, sin)(k . p + phase) at p = (x, y) + offset, so cos(F(p), F(q)) = mean_k cos(k . (p - q)), even in p - q."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    arg = (
        waves[:, 0, None, None] * (xs + offset[0]) + waves[:, 1, None, None] * (ys + offset[1]) + phases[:, None, None]
    )
    return torch.cat([torch.cos(arg), torch.sin(arg)])[None]


# -- Eq. 1: cost volume ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "window", "tile"), [((5, 6), (3, 5), 32), ((4, 3), (7, 5), 32), ((5, 7), (3, 5), 2)])
def test_cost_volume_matches_naive_forward_and_backward(size, window, tile):
    g = torch.Generator().manual_seed(0)
    current = torch.randn(2, 4, *size, generator=g, dtype=torch.float64, requires_grad=True)
    previous = torch.randn(2, 4, *size, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, *window, *size, generator=g, dtype=torch.float64)
    fast = local_cost_volume(current, previous, window=window, tile=tile)  # tile=2, width 7: blocks 2, 2, 2, 1
    slow = naive_cost_volume(current, previous, window)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    grads_fast = torch.autograd.grad((fast * weights).sum(), (current, previous))
    grads_slow = torch.autograd.grad((slow * weights).sum(), (current, previous))
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_cost_volume_float32_and_validity():
    g = torch.Generator().manual_seed(1)
    current, previous = torch.randn(1, 8, 6, 5, generator=g), torch.randn(1, 8, 6, 5, generator=g)
    torch.testing.assert_close(
        local_cost_volume(current, previous, window=5), naive_cost_volume(current, previous, (5, 5)), atol=1e-5, rtol=0
    )
    assert torch.equal(window_validity(4, 3, window=(7, 5)), naive_validity(4, 3, (7, 5)))
    with pytest.raises(ValueError, match="odd"):
        local_cost_volume(current, previous, window=4)
    with pytest.raises(ValueError, match="same shape"):
        local_cost_volume(current, previous[..., :4])


# -- soft-argmin displacement ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dx", "dy"), [(3, -2), (-5, 4), (0, 0), (12, -12)])
def test_soft_argmin_recovers_integer_shifts(dx, dy):
    g = torch.Generator().manual_seed(2)
    previous = torch.randn(1, 128, 30, 30, generator=g)  # wrong matches: cosine ~ N(0, 1/128)
    current, defined = shifted(previous, dx, dy)
    cost = local_cost_volume(current, previous, window=25)
    valid = window_validity(30, 30, window=25)
    displacement = soft_argmin_displacement(cost, valid=valid)  # default temperature
    expected = torch.tensor([dx, dy], dtype=torch.float32)[:, None]
    torch.testing.assert_close(displacement[0][:, defined], expected.expand(2, int(defined.sum())), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shift", [(0.5, -0.25), (0.3, 0.7), (-1.4, 2.2), (3.75, -0.1)])
def test_soft_argmin_recovers_sub_pixel_shifts(shift):
    g = torch.Generator().manual_seed(3)
    waves = torch.randn(64, 2, generator=g, dtype=torch.float64) * 0.3
    phases = torch.rand(64, generator=g, dtype=torch.float64) * 2 * math.pi
    size, window, margin = 32, 15, 10  # pixels >= margin from the border see the whole peak inside the map
    previous = plane_waves(size, size, offset=(0.0, 0.0), waves=waves, phases=phases)
    current = plane_waves(size, size, offset=shift, waves=waves, phases=phases)  # current(x) = previous(x + shift)
    cost = local_cost_volume(current, previous, window=window)
    displacement = soft_argmin_displacement(cost, valid=window_validity(size, size, window=window))
    inner = displacement[0, :, margin:-margin, margin:-margin]
    expected = torch.tensor(shift, dtype=torch.float64)[:, None, None].expand_as(inner)
    torch.testing.assert_close(inner, expected, atol=0.01, rtol=0)


def test_printed_sign_weights_the_worst_matches():
    """Sec. 3.2 prints softmax(-C): on a known shift it does not find the match, the default does."""
    g = torch.Generator().manual_seed(4)
    previous = torch.randn(1, 64, 20, 20, generator=g)
    current, defined = shifted(previous, 2, 1)
    cost = local_cost_volume(current, previous, window=9)
    valid = window_validity(20, 20, window=9)
    best = soft_argmin_displacement(cost, valid=valid)[0][:, defined]
    printed = soft_argmin_displacement(cost, valid=valid, paper_sign=True)[0][:, defined]
    truth = torch.tensor([2.0, 1.0])[:, None]
    assert (best - truth).norm(dim=0).max() < 1e-3
    assert (printed - truth).norm(dim=0).mean() > 1.5  # pulled towards the least similar displacements
    # the printed formula is the soft-argmax of -C: the expected displacement under softmax(-C / T), by hand
    y, x = 10, 10
    weights = torch.softmax(-cost[0, :, :, y, x].flatten() / 0.05, dim=0).view(9, 9)
    offsets = torch.arange(9.0) - 4
    manual = torch.stack([(weights * offsets[None, :]).sum(), (weights * offsets[:, None]).sum()])
    torch.testing.assert_close(soft_argmin_displacement(cost, paper_sign=True)[0, :, y, x], manual)


def test_temperature_one_collapses_towards_the_centre():
    g = torch.Generator().manual_seed(5)
    previous = torch.randn(1, 64, 30, 30, generator=g)
    current, _ = shifted(previous, 6, 0)
    cost = local_cost_volume(current, previous, window=25)
    valid = window_validity(30, 30, window=25)
    assert soft_argmin_displacement(cost, temperature=1.0, valid=valid)[0, 0, 15, 12] < 1.0
    with pytest.raises(ValueError, match="temperature"):
        soft_argmin_displacement(cost, temperature=0.0)


# -- Eq. 2: uncertainty ----------------------------------------------------------------------------------------------
def test_uncertainty_is_the_window_maximum():
    g = torch.Generator().manual_seed(6)
    cost = torch.randn(2, 5, 3, 4, 6, generator=g) - 3.0  # all negative: excluded entries must not leak a 0
    valid = naive_validity(4, 6, (5, 3))
    out = window_max(cost, valid=valid)
    assert out.shape == (2, 1, 4, 6)
    for b in range(2):
        for y in range(4):
            for x in range(6):
                candidates = [float(cost[b, i, j, y, x]) for i in range(5) for j in range(3) if valid[i, j, y, x]]
                assert float(out[b, 0, y, x]) == max(candidates)
    torch.testing.assert_close(window_max(cost), cost.amax(dim=(1, 2))[:, None])


# -- Table 1: motion feature network ---------------------------------------------------------------------------------
def test_motion_net_has_table1_layers():
    net = MotionFeatureNet(in_channels=3, out_channels=1024)
    table1 = [(3, 3, 7), (3, 16, 1), (16, 16, 3), (16, 32, 1), (32, 32, 3), (32, 32, 1), (32, 64, 3), (64, 1024, 1)]
    convs = net.convs
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == table1
    assert all(c.kernel_size[0] == c.kernel_size[1] and c.stride == (1, 1) for c in convs)
    assert net(torch.randn(2, 3, 5, 7)).shape == (2, 1024, 5, 7)
    relus = [type(m).__name__ for m in net.layers].count("ReLU")
    assert relus == 7 and type(net.layers[-1]) is torch.nn.Conv2d
    with pytest.raises(ValueError, match="kernels"):
        MotionFeatureNet(kernels=(7, 1, 3))


def test_mu_layer_reduces_with_one_shared_conv_and_feeds_the_motion_tensor():
    torch.manual_seed(7)
    layer = MULayer(in_channels=32, window=7).double()
    assert layer.reduce.in_channels == 32 and layer.reduce.out_channels == 8 and layer.reduce.kernel_size == (1, 1)
    previous, current = torch.randn(2, 32, 6, 5, dtype=torch.float64), torch.randn(2, 32, 6, 5, dtype=torch.float64)
    cost = naive_cost_volume(layer.reduce(current), layer.reduce(previous), (7, 7))
    valid = naive_validity(6, 5, (7, 7))
    displacement, uncertainty = layer.estimate(previous, current)
    torch.testing.assert_close(displacement, soft_argmin_displacement(cost, temperature=0.05, valid=valid))
    torch.testing.assert_close(uncertainty, window_max(cost, valid=valid))
    expected = layer.motion_net(torch.cat([displacement, uncertainty], dim=1))
    torch.testing.assert_close(layer(previous, current), expected)


@pytest.mark.parametrize(("use_displacement", "use_uncertainty", "channels"), [(False, True, 1), (True, False, 2)])
def test_ablation_switches_drop_motion_channels(use_displacement, use_uncertainty, channels):
    torch.manual_seed(8)
    layer = MULayer(in_channels=16, window=5, use_displacement=use_displacement, use_uncertainty=use_uncertainty)
    assert layer.motion_net.convs[0].in_channels == channels
    previous, current = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    displacement, uncertainty = layer.estimate(previous, current)
    kept = uncertainty if channels == 1 else displacement
    torch.testing.assert_close(layer(previous, current), layer.motion_net(kept))


def test_mu_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no motion input"):
        MULayer(in_channels=16, use_displacement=False, use_uncertainty=False)
    with pytest.raises(ValueError, match="multiple of reduction"):
        MULayer(in_channels=18)
    with pytest.raises(ValueError, match="outside"):
        MULayer(in_channels=16, outside="clamp")
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        MULayer(in_channels=16)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4))


def test_zero_outside_keeps_out_of_map_entries_at_zero():
    torch.manual_seed(9)
    layer = MULayer(in_channels=16, window=5, outside="zero")
    previous, current = torch.randn(1, 16, 3, 3), torch.randn(1, 16, 3, 3)
    cost, valid = layer.cost_volume(previous, current)
    assert valid is None and torch.all(cost[:, ~window_validity(3, 3, window=5)] == 0)
    displacement, uncertainty = layer.estimate(previous, current)
    torch.testing.assert_close(uncertainty, cost.amax(dim=(1, 2))[:, None])
    torch.testing.assert_close(displacement, soft_argmin_displacement(cost, temperature=0.05))


# -- Eq. 3: MSAM and addition ----------------------------------------------------------------------------------------
def test_msam_matches_eq3_and_addition_is_a_sum():
    torch.manual_seed(10)
    msam = MotionSpatialAttention(channels=6).double()
    semantic, motion = torch.randn(2, 6, 3, 4, dtype=torch.float64), torch.randn(2, 6, 3, 4, dtype=torch.float64)
    w, b = msam.conv.weight.view(6), msam.conv.bias
    attention = torch.sigmoid(torch.einsum("bchw,c->bhw", motion, w) + b)[:, None]  # one channel, broadcast
    assert msam.attention(motion).shape == (2, 1, 3, 4)
    torch.testing.assert_close(msam(semantic, motion), semantic * attention + semantic)
    torch.testing.assert_close(AdditiveFusion(channels=6)(semantic, motion), semantic + motion)
    with pytest.raises(ValueError, match="D=6"):
        msam(semantic[:, :4], motion[:, :4])
    with pytest.raises(ValueError, match="same shape"):
        AdditiveFusion()(semantic, motion[:, :, :2])


def test_motion_enhancement_chains_mu_layer_and_fusion_with_gradients():
    torch.manual_seed(11)
    layer = MULayer(in_channels=16, window=5)
    module = MotionEnhancement(mu_layer=layer, fusion=MotionSpatialAttention(channels=16))
    previous = torch.randn(1, 16, 4, 4, requires_grad=True)
    current = torch.randn(1, 16, 4, 4, requires_grad=True)
    out = module(previous, current)
    torch.testing.assert_close(out, module.fusion(current, layer(previous, current)))
    F.mse_loss(out, torch.zeros_like(out)).backward()
    assert previous.grad.abs().sum() > 0 and current.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
