"""MGA (shared/papers/004, Sec. 2.1): Gaussian mask prior, motion-guided modulation of the read, STM's prior slot."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clips_util import tiny_clip
from torch import nn

from voszoo.backbones import ResNetBackbone
from voszoo.decoders import RefineDecoder
from voszoo.hydra_compose import compose_config
from voszoo.inference.session import InferenceSession
from voszoo.layers import KeyValueProjection, SpaceTimeMemoryRead, space_time_memory_read
from voszoo.layers.motion_guided import (
    MotionGuidedPrior,
    gaussian_mask_prior,
    motion_guided_affinity,
    motion_guided_memory_read,
    prior_attn_bias,
)
from voszoo.losses import SegmentationCriterion
from voszoo.memory import EveryN
from voszoo.models.base import labels_to_probs
from voszoo.models.mga import MGA
from voszoo.models.registry import build_model, compose_model_config
from voszoo.models.stm import STM


# -- independent references ------------------------------------------------------------------------------------------
def gauss_grid(height, width, mu_y, mu_x, var_y, var_x):
    """exp(-(y-mu_y)^2/(2 var_y) - (x-mu_x)^2/(2 var_x)) with python floats, pixel by pixel."""
    rows = [
        [math.exp(-((y - mu_y) ** 2) / (2 * var_y) - (x - mu_x) ** 2 / (2 * var_x)) for x in range(width)]
        for y in range(height)
    ]
    return torch.tensor(rows, dtype=torch.float64)


def naive_gaussian(mask, *, spread_scale=1.0, min_sigma=1.0, min_mass=1.0):
    """Moments by meshgrid + einsum over (B, H, W) masks; differentiable; the rule of MGA Sec. 2.1 as documented."""
    b, h, w = mask.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=mask.dtype), torch.arange(w, dtype=mask.dtype), indexing="ij")
    mass = torch.einsum("bhw->b", mask)
    mu_y = torch.einsum("bhw,hw->b", mask, yy) / mass
    mu_x = torch.einsum("bhw,hw->b", mask, xx) / mass
    dy = yy[None] - mu_y[:, None, None]
    dx = xx[None] - mu_x[:, None, None]
    var_y = torch.einsum("bhw,bhw->b", mask, dy**2) / mass
    var_x = torch.einsum("bhw,bhw->b", mask, dx**2) / mass
    s2y = (spread_scale**2 * var_y + min_sigma**2)[:, None, None]
    s2x = (spread_scale**2 * var_x + min_sigma**2)[:, None, None]
    alpha = torch.minimum(mass / min_mass, torch.ones_like(mass))[:, None, None]
    return alpha * torch.exp(-(dy**2) / (2 * s2y) - dx**2 / (2 * s2x)) + 1 - alpha


def naive_prior(module, query_key, mask):
    """P = W * Gauss + b with the module's head parameters applied by hand; mask (B, h, w) on the key grid."""
    gauss = naive_gaussian(
        mask, spread_scale=module.spread_scale, min_sigma=module.min_sigma, min_mass=module.min_mass
    ).unsqueeze(1)
    conv1, conv2 = module.head[0], module.head[2]
    hidden = F.relu(F.conv2d(torch.cat([query_key, gauss], 1), conv1.weight, conv1.bias, padding=1))
    wb = F.conv2d(hidden, conv2.weight, conv2.bias, padding=1)
    return (wb[:, 0] * gauss[:, 0] + wb[:, 1]).unsqueeze(1)


def naive_read(mk, mv, qk, qv, *, gate=None, bias=None, scale=None):
    """STM read in the paper's memory-major THW x HW layout: softmax over memory (dim 1), optional per-query
    logit scale / logit bias before it and per-query gate after it; then [read, query value]."""
    b, ck = mk.shape[:2]
    hq, wq = qk.shape[-2:]
    logits = torch.einsum("bcm,bcq->bmq", mk.reshape(b, ck, -1), qk.reshape(b, ck, -1)) / math.sqrt(ck)
    if scale is not None:
        logits = logits * scale.reshape(b, 1, -1)
    if bias is not None:
        logits = logits + bias.reshape(b, 1, -1)
    affinity = logits.softmax(dim=1)
    if gate is not None:
        affinity = affinity * gate.reshape(b, 1, -1)
    read = torch.einsum("bcm,bmq->bcq", mv.reshape(b, mv.shape[1], -1), affinity).reshape(b, -1, hq, wq)
    return torch.cat([read, qv], 1)


def random_inputs(seed=0, *, b=2, ck=8, cv=6, cq=5, t=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    mk = torch.randn(b, ck, t, h, w, generator=g, dtype=torch.float64)
    mv = torch.randn(b, cv, t, h, w, generator=g, dtype=torch.float64)
    qk = torch.randn(b, ck, h, w, generator=g, dtype=torch.float64)
    qv = torch.randn(b, cq, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, h, w, generator=g, dtype=torch.float64)
    mask[0, :, :2] = 0  # an object on the right of sample 0
    return [x.requires_grad_() for x in (mk, mv, qk, qv, mask)]


def random_module(form="multiply", positivity="none", seed=1, key_channels=8, **kwargs):
    torch.manual_seed(seed)
    module = MotionGuidedPrior(key_channels=key_channels, hidden_channels=4, form=form, positivity=positivity, **kwargs)
    nn.init.normal_(module.head[2].weight, std=0.3)  # leave the P = 1 start so that the prior varies
    return module.double()


# -- the Gaussian heat map -------------------------------------------------------------------------------------------
def test_gaussian_of_a_rectangle_hand_computed():
    mask = torch.zeros(12, 12, dtype=torch.float64)
    mask[2:6, 3:9] = 1  # rows 2..5, columns 3..8
    # centre (3.5, 5.5); variance of h consecutive integers = (h^2 - 1) / 12: rows 15/12, columns 35/12
    # sigma^2 = spread_scale^2 var + min_sigma^2 = 4 * 1.25 + 0.25 and 4 * 35/12 + 0.25
    got = gaussian_mask_prior(mask, spread_scale=2.0, min_sigma=0.5)
    torch.testing.assert_close(got, gauss_grid(12, 12, 3.5, 5.5, 5.25, 35 / 3 + 0.25), rtol=0, atol=1e-12)
    assert got[3, 5].item() == pytest.approx(math.exp(-0.25 / 10.5 - 0.25 / (2 * (35 / 3 + 0.25))), abs=1e-12)


def test_gaussian_of_a_single_pixel_has_width_min_sigma():
    mask = torch.zeros(9, 10, dtype=torch.float64)
    mask[4, 7] = 1
    got = gaussian_mask_prior(mask, min_sigma=1.5)
    assert got[4, 7].item() == 1.0
    assert got[4, 8].item() == pytest.approx(math.exp(-1 / 4.5), abs=1e-12)
    assert got[6, 7].item() == pytest.approx(math.exp(-4 / 4.5), abs=1e-12)
    torch.testing.assert_close(got, gauss_grid(9, 10, 4, 7, 2.25, 2.25), rtol=0, atol=1e-12)


def test_gaussian_of_two_weighted_blobs():
    mask = torch.zeros(6, 9, dtype=torch.float64)
    mask[2, 2] = 1.0
    mask[2, 6] = 3.0  # soft weights: mass 4, centre x = (2 + 18) / 4 = 5, var_x = (1 * 9 + 3 * 1) / 4 = 3
    torch.testing.assert_close(gaussian_mask_prior(mask), gauss_grid(6, 9, 2, 5, 1.0, 4.0), rtol=0, atol=1e-12)
    # spread_scale 0 keeps only min_sigma
    torch.testing.assert_close(
        gaussian_mask_prior(mask, spread_scale=0.0), gauss_grid(6, 9, 2, 5, 1.0, 1.0), rtol=0, atol=1e-12
    )
    # two equal blobs: the centre lies between them, where neither blob is
    equal = torch.zeros(6, 9, dtype=torch.float64)
    equal[2, 2] = equal[2, 6] = 1.0
    got = gaussian_mask_prior(equal)
    assert got[2, 4].item() == 1.0 and got[2, 2].item() == pytest.approx(math.exp(-4 / 10), abs=1e-12)


def test_empty_mask_gives_all_ones_and_light_masks_blend():
    masks = torch.zeros(3, 1, 6, 7)
    masks[1, 0, 2:4, 2:5] = 1.0
    masks[2, 0, 3, 3] = 0.25  # mass 0.25 < min_mass 1: 0.25 G + 0.75
    got = gaussian_mask_prior(masks)
    assert got.shape == (3, 1, 6, 7) and got.dtype == torch.float32
    assert torch.equal(got[0], torch.ones(1, 6, 7))
    torch.testing.assert_close(got[1, 0].double(), gauss_grid(6, 7, 2.5, 3, 1.25, 1 + 2 / 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[2, 0].double(), 0.25 * gauss_grid(6, 7, 3, 3, 1, 1) + 0.75, rtol=0, atol=1e-6)


def test_gaussian_matches_naive_forward_and_backward():
    mask = torch.rand(3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask[2] *= 0.02  # mass < min_mass: the blended branch
    mask.requires_grad_()
    kwargs = {"spread_scale": 1.7, "min_sigma": 0.8, "min_mass": 2.0}
    fast, naive = gaussian_mask_prior(mask, **kwargs), naive_gaussian(mask, **kwargs)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    weights = torch.randn_like(fast)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), mask)
    (g_naive,) = torch.autograd.grad((naive * weights).sum(), mask)
    torch.testing.assert_close(g_fast, g_naive, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda m: gaussian_mask_prior(m, **kwargs), (mask,))


def test_gaussian_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_sigma"):
        gaussian_mask_prior(torch.ones(3, 3), min_sigma=0.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        gaussian_mask_prior(torch.ones(3))


# -- the prior P = W * Gauss + b and its forms -----------------------------------------------------------------------
def grads(out, tensors):
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), tensors, retain_graph=True)


def test_prior_matches_naive_head():
    mk, mv, qk, qv, mask = random_inputs()
    module = random_module()
    torch.testing.assert_close(module(qk, mask), naive_prior(module, qk, mask), rtol=0, atol=1e-12)
    torch.testing.assert_close(module(qk, mask.unsqueeze(1)), naive_prior(module, qk, mask), rtol=0, atol=1e-12)


def test_multiply_form_is_the_unnormalised_product_forward_and_backward():
    inputs = random_inputs()
    mk, mv, qk, qv, mask = inputs
    module = random_module()
    params = list(module.parameters())
    fast = module.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    prior = naive_prior(module, qk, mask)
    assert prior.min() < 0.5 and prior.max() > 1.2  # a non-trivial prior
    naive = naive_read(mk, mv, qk, qv, gate=prior)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    for a, b in zip(grads(fast, inputs + params), grads(naive, inputs + params), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the explicit affinity path of the layer (materialised THW x HW) is the same product
    explicit = motion_guided_memory_read(mk, mv, qk, qv, prior=prior)
    torch.testing.assert_close(explicit, naive, rtol=0, atol=1e-12)
    for a, b in zip(grads(explicit, inputs), grads(naive, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_log_bias_equals_renormalised_product_equals_plain_read():
    """A per-query log-bias shifts all of a query's logits equally: the softmax over memory positions cancels it,
    as renormalising the per-query product does. Both are the plain STM read."""
    mk, mv, qk, qv, mask = random_inputs()
    module = random_module(form="log_bias", positivity="softplus")
    prior = module(qk, mask)
    fast = module.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    plain = naive_read(mk, mv, qk, qv)
    torch.testing.assert_close(fast, naive_read(mk, mv, qk, qv, bias=prior.log()), rtol=0, atol=1e-12)
    torch.testing.assert_close(motion_guided_memory_read(mk, mv, qk, qv, prior=prior, renormalise=True), plain)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)
    renormalised = motion_guided_affinity(mk, qk, prior, renormalise=True)
    torch.testing.assert_close(renormalised.sum(-1), torch.ones(2, 20, dtype=torch.float64))


def test_multiply_and_log_bias_differ_by_the_prior():
    """Same prior, two forms: the paper's unnormalised product scales query j's read by P_j; the log-bias does not."""
    mk, mv, qk, qv, mask = random_inputs()
    multiply = random_module(form="multiply", positivity="softplus")
    log_bias = random_module(form="log_bias", positivity="softplus")
    prior = multiply(qk, mask)
    torch.testing.assert_close(prior, log_bias(qk, mask))
    a = multiply.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    b = log_bias.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    cv = mv.shape[1]
    torch.testing.assert_close(a[:, :cv], prior * b[:, :cv], rtol=0, atol=1e-12)
    torch.testing.assert_close(a[:, cv:], qv)  # the query value is never modulated
    assert (a[:, :cv] - b[:, :cv]).abs().max() > 0.1


def test_logit_scale_form_matches_naive():
    inputs = random_inputs()
    mk, mv, qk, qv, mask = inputs
    module = random_module(form="logit_scale")
    fast = module.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    naive = naive_read(mk, mv, qk, qv, scale=naive_prior(module, qk, mask))
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    for a, b in zip(grads(fast, inputs), grads(naive, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("form", ["multiply", "log_bias", "logit_scale"])
def test_default_initialisation_starts_as_plain_stm(form):
    mk, mv, qk, qv, mask = random_inputs()
    module = MotionGuidedPrior(key_channels=8, form=form, positivity="clamp").double()
    torch.testing.assert_close(module(qk, mask), torch.ones(2, 1, 4, 5, dtype=torch.float64))
    out = module.modulated_read(SpaceTimeMemoryRead(), mk, mv, qk, qv, previous_mask=mask)
    torch.testing.assert_close(out, space_time_memory_read(mk, mv, qk, qv))
    gauss_start = MotionGuidedPrior(key_channels=8, init_weight=1.0, init_bias=0.0).double()
    torch.testing.assert_close(gauss_start(qk, mask), naive_gaussian(mask).unsqueeze(1))


def test_positivity_maps_and_errors():
    torch.manual_seed(0)
    qk, mask = torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3)  # empty mask: Gauss = 1, so P = W + b
    clamp = MotionGuidedPrior(key_channels=4, positivity="clamp", min_prior=0.01, init_weight=-2.0, init_bias=1.0)
    torch.testing.assert_close(clamp(qk, mask), torch.full((1, 1, 3, 3), 0.01))
    softplus = MotionGuidedPrior(key_channels=4, positivity="softplus", init_weight=-2.0, init_bias=1.0)
    torch.testing.assert_close(softplus(qk, mask), torch.full((1, 1, 3, 3), math.log1p(math.exp(-1.0))))
    none = MotionGuidedPrior(key_channels=4, init_weight=-2.0, init_bias=1.0)
    torch.testing.assert_close(none(qk, mask), torch.full((1, 1, 3, 3), -1.0))
    with pytest.raises(ValueError, match="softplus"):
        MotionGuidedPrior(key_channels=4, form="log_bias")
    with pytest.raises(ValueError, match="multiply, log_bias, logit_scale"):
        MotionGuidedPrior(key_channels=4, form="gate")
    with pytest.raises(ValueError, match="C_k=4"):
        clamp(torch.randn(1, 5, 3, 3), mask)
    with pytest.raises(ValueError, match="batch"):
        clamp(qk, torch.zeros(2, 3, 3))


def test_mask_is_area_averaged_to_the_key_grid():
    torch.manual_seed(0)
    module = random_module(key_channels=4)
    qk = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    full = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    pooled = full.reshape(2, 1, 4, 16, 4, 16).mean(dim=(3, 5))
    torch.testing.assert_close(module(qk, full), module(qk, pooled), rtol=0, atol=1e-12)


def test_attn_bias_layout():
    prior = torch.rand(2, 1, 3, 4) + 0.1
    bias = prior_attn_bias(prior)
    assert bias.shape == (2, 12, 1)
    torch.testing.assert_close(bias[1, 4 + 2, 0], prior[1, 0, 1, 2].log())
    with pytest.raises(ValueError, match="prior"):
        prior_attn_bias(torch.rand(2, 2, 3, 4))


def test_multi_head_recipe_gates_each_head_before_the_output_projection():
    """docs/methods/mga.md: in multi-head attention, scale the per-head outputs (before the output projection)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64) for n in (6, 10, 10))  # (B, heads, L, d)
    prior = torch.rand(2, 6, generator=g, dtype=torch.float64)
    gated = F.scaled_dot_product_attention(q, k, v) * prior[:, None, :, None]
    affinity = (q @ k.transpose(-1, -2) / 2.0).softmax(-1) * prior[:, None, :, None]  # query-major, scale 1/sqrt(4)
    torch.testing.assert_close(gated, affinity @ v)


# -- STM's prior slot and the MGA model ------------------------------------------------------------------------------
class RecordingPrior(nn.Module):
    """Wraps a prior module and records the previous masks it receives."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.masks = []

    def modulated_read(self, reader, *args, previous_mask):
        self.masks.append(previous_mask.detach().clone())
        return self.inner.modulated_read(reader, *args, previous_mask=previous_mask)


def tiny_parts():
    torch.manual_seed(0)
    return {
        "memory_encoder": ResNetBackbone(depth=18, extra_input_channels=2),
        "query_encoder": ResNetBackbone(depth=18),
        "memory_key_value": KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        "query_key_value": KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        "reader": SpaceTimeMemoryRead(),
        "decoder": RefineDecoder(in_channels=64, skip_channels=(128, 64), hidden_channels=32),
        "criterion": SegmentationCriterion(),
    }


def tiny_mga(prior=None):
    parts = tiny_parts()
    if prior is None:
        prior = MotionGuidedPrior(key_channels=16, hidden_channels=8)
        nn.init.normal_(prior.head[2].weight, std=0.1)
    return MGA(**parts, prior=prior)


def pool16(x):
    b, n, h, w = x.shape
    return x.reshape(b, n, h // 16, 16, w // 16, 16).mean(dim=(3, 5))


def test_each_object_reads_with_its_own_previous_mask_from_the_short_term_entry():
    recorder = RecordingPrior(tiny_mga().prior)
    model = tiny_mga(prior=recorder).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 2, 3, 64, 64, generator=g).unbind(0)
    labels = torch.randint(0, 3, (2, 64, 64), generator=g)
    memory = model.new_memory(EveryN(n=5), num_objects=2)
    with torch.no_grad():
        feats = [model.encode(image) for image in images]
        reference = labels_to_probs(labels, 2)
        model.memorize(memory, feats[0], reference, 0)
        assert memory.short_term.tensors["prior_mask"].shape == (2, 2, 4, 4)
        probs1 = model.segment(memory, feats[1]).softmax(1)
        model.memorize(memory, feats[1], probs1, 1)
        model.segment(memory, feats[2])
    # object-major per sample: (sample 0 object 1, sample 0 object 2, sample 1 object 1, sample 1 object 2)
    expected = [pool16(reference[:, 1:]), pool16(probs1[:, 1:])]
    for recorded, want in zip(recorder.masks, expected, strict=True):
        assert recorded.shape == (4, 1, 4, 4)
        torch.testing.assert_close(recorded, want.flatten(0, 1).unsqueeze(1))
    # only the newest entry keeps the mask; the reference (long-term) entry keeps keys and values
    assert "prior_mask" in memory.short_term.tensors
    assert [sorted(e.tensors) for e in memory.long_term] == [["key", "value"]]


def test_segment_without_a_memorised_mask_is_an_error():
    model = tiny_mga().eval()
    memory = model.new_memory(EveryN(n=5), num_objects=1)
    with torch.no_grad():
        feats = model.encode(torch.randn(1, 3, 32, 32))
        model.memorize(memory, feats, labels_to_probs(torch.zeros(1, 32, 32, dtype=torch.long), 1), 0)
        del memory.short_term.tensors["prior_mask"]  # e.g. a bank written by a model without the prior slot
        with pytest.raises(RuntimeError, match="previous frame's masks"):
            model.segment(memory, feats)


def test_mga_starts_as_stm_and_needs_a_prior():
    stm = STM(**tiny_parts()).eval()
    mga = MGA(**tiny_parts(), prior=MotionGuidedPrior(key_channels=16)).eval()  # default init: P = 1
    clip = tiny_clip(void_corner=False)
    with torch.no_grad():
        torch.testing.assert_close(mga(clip)["logits"], stm(clip)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="model=stm"):
        MGA(**tiny_parts(), prior=None)


def test_session_runs_mga_with_an_object_appearing_mid_video():
    recorder = RecordingPrior(tiny_mga().prior)
    session = InferenceSession(tiny_mga(prior=recorder), policy_factory=lambda: EveryN(n=5))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    first = np.zeros((64, 64), np.uint8)
    first[8:24, 8:40] = 1
    second = np.zeros((64, 64), np.uint8)
    second[40:56, 40:56] = 2
    session.step(frames[0], first)
    session.step(frames[1], second)
    out = session.step(frames[2])
    assert out.labels.shape == (64, 64) and out.object_ids == [1, 2]
    # frame 1 (group 1): the reference mask, area-averaged to the 4x4 key grid
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0:2, 0:3] = torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]])  # rows 8-23, columns 8-39
    torch.testing.assert_close(recorder.masks[0], expected)
    assert len(recorder.masks) == 3 and all(torch.isfinite(m).all() for m in recorder.masks)


# -- presets and slot composition ------------------------------------------------------------------------------------
SMALL_HEADS = ["memory_key_value.key_channels=16", "memory_key_value.value_channels=32"]
SMALL_HEADS += ["query_key_value.value_channels=32", "decoder.in_channels=64", "decoder.hidden_channels=32"]


def compose_train(*overrides):
    return compose_config("train", overrides)


def train_step_grads_everywhere(model):
    nn.init.normal_(model.prior.head[2].weight, std=0.1)  # past the zero-initialised start
    out = model.train()(tiny_clip())
    assert out["logits"].shape == (2, 2, 3, 64, 64) and torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_mga_r18_preset_trains_forward_and_backward():
    cfg = compose_model_config("mga_r18", SMALL_HEADS)
    assert cfg.prior.key_channels == 16 and cfg.prior.form == "multiply"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, MGA) and isinstance(model.prior, MotionGuidedPrior)
    train_step_grads_everywhere(model)


def test_stm_prior_slot_composes_and_trains():
    cfg = compose_train("model=stm_r18", "model/prior=motion_guided", *(f"model.{o}" for o in SMALL_HEADS))
    assert cfg.model.prior.key_channels == 16
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert type(model) is STM and isinstance(model.prior, MotionGuidedPrior)
    train_step_grads_everywhere(model)
    assert compose_train("model=stm").model.get("prior") is None  # the slot is empty by default
    assert compose_model_config("mga").prior.key_channels == 128


def test_quick_experiment_differs_from_stm_quick_by_the_model_only():
    quick, stm_quick = compose_train("experiment=mga_quick"), compose_train("experiment=stm_quick")
    assert quick.model.name == "mga_r18" and stm_quick.model.name == "stm_r18"
    assert quick.optim == stm_quick.optim and quick.trainer == stm_quick.trainer and quick.data == stm_quick.data
    # protocol: MGA has no official code, so its preset keeps voszoo's input protocol where STM's is "official"
    differ = {k for k in quick.model if quick.model[k] != stm_quick.model.get(k)}
    assert differ == {"_target_", "name", "prior", "protocol"}


# -- the prior on another matcher: AOT's long-term attention ---------------------------------------------------------
def aot_pair():
    """AOT-T built twice with the same weights, without and with the motion-guided prior (default init: P = 1)."""
    torch.manual_seed(0)
    plain = build_model(compose_model_config("aot_t"))
    gated = build_model(compose_model_config("aot_t", ["prior=motion_guided"]))
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("prior.") for key in missing)
    return plain.eval(), gated.eval()


def test_prior_on_aot_starts_as_plain_aot_and_then_gates_the_long_term_attention():
    plain, gated = aot_pair()
    assert isinstance(gated.prior, MotionGuidedPrior) and gated.prior.key_channels == 256
    clip = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(gated(clip)["logits"], plain(clip)["logits"])  # W = 0, b = 1: P = 1
        nn.init.normal_(gated.prior.head[2].weight, std=0.5)
        assert not torch.allclose(gated(clip)["logits"], plain(clip)["logits"])
    gated.train()
    out = gated(clip)
    out["loss"].backward()
    assert gated.prior.head[2].weight.grad.abs().sum() > 0  # trained through the gated attention


def test_prior_on_aot_reads_the_union_of_the_previous_objects():
    _, gated = aot_pair()
    nn.init.normal_(gated.prior.head[2].weight, std=0.5)
    seen = []
    inner = gated.prior.forward
    gated.prior.forward = lambda key, mask: seen.append(mask.detach().clone()) or inner(key, mask)
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    first = np.zeros((64, 64), np.uint8)
    first[8:28, 8:28], first[36:60, 30:60] = 1, 2
    session = InferenceSession(gated, policy_factory=lambda: EveryN(n=9999))
    for index, frame in enumerate(frames):
        session.step(frame, first if index == 0 else None)
    assert len(seen) == 2  # frames 1 and 2; the reference pass has no previous mask
    torch.testing.assert_close(seen[0][0, 0], torch.as_tensor(first > 0, dtype=seen[0].dtype))
    with pytest.raises(ValueError, match="form must be 'multiply'"):
        log_form = ["prior=motion_guided", "prior.form=log_bias", "prior.positivity=softplus"]
        build_model(compose_model_config("aot_t", log_form))
