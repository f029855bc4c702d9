"""STM and its parts: backbone, refine decoder, soft aggregation, encode / memorize / segment, training unroll."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from clips_util import tiny_clip
from torch import nn

from voszoo.backbones import ResNetBackbone
from voszoo.decoders import RefineDecoder
from voszoo.layers import KeyValueProjection, SpaceTimeMemoryRead, soft_aggregate
from voszoo.losses import SegmentationCriterion
from voszoo.memory import EveryN, KeepAll
from voszoo.models.base import labels_to_probs
from voszoo.models.stm import STM


def logit(p):
    return math.log(p / (1 - p))


def tiny_stm(*, criterion=True, memory_encoder=None):
    torch.manual_seed(0)
    return STM(
        memory_encoder=memory_encoder or ResNetBackbone(depth=18, extra_input_channels=2),
        query_encoder=ResNetBackbone(depth=18),
        memory_key_value=KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        query_key_value=KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        reader=SpaceTimeMemoryRead(),
        decoder=RefineDecoder(in_channels=64, skip_channels=(128, 64), hidden_channels=32),
        criterion=SegmentationCriterion(bootstrap_ratio=0.5, jaccard_weight=0.5) if criterion else None,
    )


# -- soft aggregation ------------------------------------------------------------------------------------------------
def test_soft_aggregation_hand_computed():
    probs = torch.tensor([0.5, 0.2], dtype=torch.float64).view(1, 2, 1, 1)
    logits = soft_aggregate(probs)
    # background = (1 - 0.5) * (1 - 0.2) = 0.4
    expected = [logit(0.4), logit(0.5), logit(0.2)]
    assert logits.shape == (1, 3, 1, 1)
    assert logits.flatten().tolist() == pytest.approx(expected, abs=1e-12)
    # the merged distribution is proportional to the odds p / (1 - p)
    odds = torch.tensor([0.4 / 0.6, 1.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(logits.softmax(1).flatten(), odds / odds.sum())


def test_soft_aggregation_clamps_and_masks_absent_objects():
    probs = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    eps = 1e-7
    assert soft_aggregate(probs).flatten().tolist() == pytest.approx([logit(eps), logit(1 - eps), logit(eps)], abs=1e-6)
    probs = torch.tensor([0.3, 0.6], dtype=torch.float64).view(1, 2, 1, 1)
    masked = soft_aggregate(probs, present=torch.tensor([[True, False]]))
    assert masked.flatten().tolist() == pytest.approx([logit(0.7), logit(0.3), logit(eps)], abs=1e-9)
    with pytest.raises(ValueError, match="present"):
        soft_aggregate(probs, present=torch.tensor([True, False]))


# -- backbone --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("depth", "channels"), [(18, (64, 128, 256)), (50, (256, 512, 1024))])
def test_backbone_scales(depth, channels):
    backbone = ResNetBackbone(depth=depth)
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "s4": (1, channels[0], 16, 24),
        "s8": (1, channels[1], 8, 12),
        "s16": (1, channels[2], 4, 6),
    }
    assert backbone.channels == dict(zip(("s4", "s8", "s16"), channels, strict=True))
    assert not hasattr(backbone, "layer4") and not hasattr(backbone, "fc")
    assert all(type(m) is nn.BatchNorm2d for m in backbone.modules() if "Norm" in type(m).__name__)


def test_extra_inputs_equal_one_conv_per_channel_summed():
    backbone = ResNetBackbone(depth=18, extra_input_channels=2).eval()
    image, extra = torch.randn(2, 3, 32, 32), torch.rand(2, 2, 32, 32)
    w = backbone.conv1_extra.weight
    assert w.shape == (64, 2, 7, 7) and w.abs().max() <= 1 / 7
    separate = sum(F.conv2d(extra[:, i : i + 1], w[:, i : i + 1], stride=2, padding=3) for i in range(2))
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(image) + separate)))
    expected = backbone.layer3(backbone.layer2(backbone.layer1(x)))
    torch.testing.assert_close(backbone(image, extra)["s16"], expected)
    with pytest.raises(ValueError, match="extra"):
        backbone(image)
    with pytest.raises(ValueError, match="extra_input_channels=0"):
        ResNetBackbone(depth=18)(image, extra)


def test_backbone_loads_a_local_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone(depth=18, weights=str(path), extra_input_channels=2)
    assert torch.equal(backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(backbone.bn1.running_var, reference.bn1.running_var)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        ResNetBackbone(depth=18, weights=str(tmp_path / "partial.pth"))


def test_backbone_unknown_weights_lists_valid_names():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ResNetBackbone(depth=50, weights="IMAGENET_FOO")
    with pytest.raises(ValueError, match="depth"):
        ResNetBackbone(depth=42)


# -- decoder ---------------------------------------------------------------------------------------------------------
def test_refine_decoder_shapes_and_official_layout():
    decoder = RefineDecoder()
    out = decoder(torch.randn(2, 1024, 4, 6), [torch.randn(2, 512, 8, 12), torch.randn(2, 256, 16, 24)])
    assert out.shape == (2, 2, 64, 96)
    assert decoder.fuse.weight.shape == (256, 1024, 3, 3) and decoder.pred.weight.shape == (2, 256, 3, 3)
    assert decoder.refines[0].conv_skip.weight.shape == (256, 512, 3, 3)
    assert decoder.refines[1].conv_skip.weight.shape == (256, 256, 3, 3)
    sized = decoder(
        torch.randn(1, 1024, 4, 6), [torch.randn(1, 512, 8, 12), torch.randn(1, 256, 16, 24)], output_size=(60, 90)
    )
    assert sized.shape == (1, 2, 60, 90)
    with pytest.raises(ValueError, match="skips"):
        decoder(torch.randn(1, 1024, 4, 6), [torch.randn(1, 256, 8, 12), torch.randn(1, 256, 16, 24)])


def test_refine_block_upsamples_coarse_by_two():
    decoder = RefineDecoder(in_channels=4, skip_channels=(3,), hidden_channels=5, out_channels=1)
    block = decoder.refines[0]
    skip, coarse = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)
    s = block.res_skip(block.conv_skip(skip))
    expected = block.res_out(s + F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False))
    torch.testing.assert_close(block(skip, coarse), expected)


def test_refine_decoder_shares_the_skip_branch_across_objects():
    """Skips given once per frame with skip_repeats=R equal the official layout (skips expanded over the R objects),
    forward and backward, and the skip branch runs on B frames, not B * R rows."""
    torch.manual_seed(0)
    decoder = RefineDecoder(in_channels=6, skip_channels=(5, 4), hidden_channels=7).double()
    x = torch.randn(2 * 3, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    skips = [torch.randn(2, 5, 6, 8, dtype=torch.float64), torch.randn(2, 4, 12, 16, dtype=torch.float64)]
    skips = [s.requires_grad_() for s in skips]
    expanded = decoder(x, [s.repeat_interleave(3, dim=0) for s in skips])
    grads_expanded = torch.autograd.grad(expanded.square().sum(), [x, *skips, *decoder.parameters()])
    seen = []
    handle = decoder.refines[1].conv_skip.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    shared = decoder(x, skips, skip_repeats=3)
    handle.remove()
    assert seen == [2]
    torch.testing.assert_close(shared, expanded)
    grads_shared = torch.autograd.grad(shared.square().sum(), [x, *skips, *decoder.parameters()])
    for a, b in zip(grads_shared, grads_expanded, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="skip_repeats=2"):
        decoder(x, skips, skip_repeats=2)


def test_refine_decoder_chunks_give_the_same_logits():
    torch.manual_seed(0)
    decoder = RefineDecoder(in_channels=6, skip_channels=(5, 4), hidden_channels=7).double()
    x = torch.randn(2 * 3, 6, 3, 4, dtype=torch.float64)
    skips = [torch.randn(2, 5, 6, 8, dtype=torch.float64), torch.randn(2, 4, 12, 16, dtype=torch.float64)]
    whole = decoder(x, skips, skip_repeats=3, output_size=(13, 17))
    for chunk in (1, 2, 4, 6, 100):  # chunks that split a frame's objects and chunks that straddle two frames
        torch.testing.assert_close(decoder(x, skips, skip_repeats=3, output_size=(13, 17), chunk_size=chunk), whole)
    with pytest.raises(ValueError, match="chunk_size"):
        decoder(x, skips, skip_repeats=3, chunk_size=0)


def test_stm_object_chunk_gives_the_same_memory_and_logits_at_inference():
    model = tiny_stm(criterion=False).eval()
    image = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, 4, (2, 64, 96))
    probs = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    results = []
    for chunk in (None, 1, 2):
        model.object_chunk = chunk
        memory = model.new_memory(EveryN(n=5), num_objects=3)
        encoder_batches: list[int] = []
        handle = model.memory_encoder.register_forward_hook(
            lambda m, a, o, seen=encoder_batches: seen.append(a[0].shape[0])
        )
        with torch.no_grad():
            feats = model.encode(image)
            model.memorize(memory, feats, probs, 0)
            results.append((memory.stack("key", dim=3), model.segment(memory, model.encode(image))))
        handle.remove()
        assert encoder_batches == ([6] if chunk is None else [chunk] * (6 // chunk))
    for keys, logits in results[1:]:
        torch.testing.assert_close(keys, results[0][0])
        torch.testing.assert_close(logits, results[0][1])
    with pytest.raises(ValueError, match="object_chunk"):
        STM(
            **{
                **{k: getattr(model, k) for k in ("memory_encoder", "query_encoder", "memory_key_value")},
                "query_key_value": model.query_key_value,
                "reader": model.reader,
                "decoder": model.decoder,
                "object_chunk": 0,
            }
        )


# -- STM: the contract -----------------------------------------------------------------------------------------------
class RecordingEncoder(nn.Module):
    """Wraps a memory encoder and records its inputs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.extra_input_channels = 2
        self.calls = []

    def forward(self, image, extra):
        self.calls.append((image.detach().clone(), extra.detach().clone()))
        return self.inner(image, extra)


def test_encode_memorize_segment_shapes():
    model = tiny_stm(criterion=False).eval()
    image = torch.randn(2, 3, 64, 96)
    feats = model.encode(image)
    assert feats.maps["s16"].shape == (2, 256, 4, 6)
    assert feats.cache["key"].shape == (2, 16, 4, 6) and feats.cache["value"].shape == (2, 32, 4, 6)
    memory = model.new_memory(EveryN(n=5), num_objects=3)
    labels = torch.randint(0, 4, (2, 64, 96))
    with torch.no_grad():
        model.memorize(memory, feats, labels_to_probs(labels, 3), 0)
        assert memory.long_term[0].tensors["key"].shape == (2, 3, 16, 4, 6)
        assert memory.long_term[0].tensors["value"].shape == (2, 3, 32, 4, 6)
        logits = model.segment(memory, model.encode(torch.randn(2, 3, 64, 96)))
    assert logits.shape == (2, 4, 64, 96) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="N\\+1=4"):
        model.memorize(memory, feats, labels_to_probs(labels, 2), 1)


def test_memory_encoder_inputs_follow_the_official_code():
    recorder = RecordingEncoder(ResNetBackbone(depth=18, extra_input_channels=2))
    model = tiny_stm(criterion=False, memory_encoder=recorder).eval()
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(2, 4, 32, 32, generator=g)
    probs = probs / probs.sum(1, keepdim=True)  # (B, N+1) soft probabilities, 3 objects
    image = torch.randn(2, 3, 32, 32, generator=g)
    memory = model.new_memory(KeepAll(), num_objects=3)
    with torch.no_grad():
        model.memorize(memory, model.encode(image), probs, 0)
    images, extra = recorder.calls[0]
    assert images.shape == (6, 3, 32, 32) and extra.shape == (6, 2, 32, 32)
    for b in range(2):
        for i in range(3):
            row = b * 3 + i
            others = [j for j in range(1, 4) if j != i + 1]
            torch.testing.assert_close(images[row], image[b])
            torch.testing.assert_close(extra[row, 0], probs[b, i + 1])
            torch.testing.assert_close(extra[row, 1], probs[b, others].sum(0).clamp(0, 1))


def test_batched_segment_equals_per_sample_and_follows_object_order():
    model = tiny_stm(criterion=False).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 2, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)

    def run(imgs, labs, order=(1, 2)):
        probs = labels_to_probs(labs, 2)[:, [0, *order]]
        memory = model.new_memory(EveryN(n=5), num_objects=2)
        with torch.no_grad():
            model.memorize(memory, model.encode(imgs[:, 0]), probs, 0)
            return model.segment(memory, model.encode(imgs[:, 1]))

    both = run(images, labels)
    for b in range(2):
        torch.testing.assert_close(both[b : b + 1], run(images[b : b + 1], labels[b : b + 1]), atol=1e-4, rtol=1e-4)
    swapped = run(images, labels, order=(2, 1))
    torch.testing.assert_close(swapped, both[:, [0, 2, 1]], atol=1e-4, rtol=1e-4)


def test_absent_objects_get_zero_probability():
    model = tiny_stm(criterion=False).eval()
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    labels[0, 20:28, 20:28] = 2  # only sample 0 has object 2
    memory = model.new_memory(KeepAll(), num_objects=2)
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(2, 3, 32, 32)), labels_to_probs(labels, 2), 0)
        logits = model.segment(memory, model.encode(torch.randn(2, 3, 32, 32)))
    assert memory.state["objects_present"].tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(logits[1, 2], torch.full((32, 32), logit(1e-7)), atol=1e-4, rtol=0)
    assert (logits[0, 2] > logit(1e-7) + 1e-3).any()


def test_memory_encoder_must_take_two_masks():
    with pytest.raises(ValueError, match="extra_input_channels=2"):
        tiny_stm(memory_encoder=ResNetBackbone(depth=18))


# -- STM: training ---------------------------------------------------------------------------------------------------
def test_training_unroll_gives_finite_losses_and_gradients_everywhere():
    model = tiny_stm().train()
    clip = tiny_clip()
    out = model(clip)
    assert out["logits"].shape == (2, 2, 3, 64, 64)
    assert {"loss", "loss_ce", "loss_jaccard"} <= set(out)
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_ce", "loss_jaccard"))
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []
    assert model.multi_object == "per_object" and model.stride == 16


def test_tied_initialisation_gives_equal_keys_for_an_empty_mask():
    """With tie_initial_weights the query path starts as a copy of the memory path: for a frame memorised with an
    all-zero mask (the mask convolution then adds nothing) memory and query keys are equal; untied they are not."""
    image = torch.randn(1, 3, 64, 64)
    for tie in (True, False):
        torch.manual_seed(0)
        model = tiny_stm(criterion=False)
        if tie:
            model = STM(
                memory_encoder=model.memory_encoder,
                query_encoder=model.query_encoder,
                memory_key_value=model.memory_key_value,
                query_key_value=model.query_key_value,
                reader=model.reader,
                decoder=model.decoder,
                tie_initial_weights=True,
            )
        model.eval()
        memory = model.new_memory(KeepAll(), num_objects=1)
        feats = model.encode(image)
        model.memorize(memory, feats, torch.cat([torch.ones(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)], 1), 0)
        memory_key = memory.stack("key", dim=3)[:, 0, :, 0]  # (B, C_k, h, w) of object 0, frame 0
        assert torch.allclose(memory_key, feats.cache["key"], atol=1e-5) == tie
    # they train independently afterwards: distinct tensors
    assert model.query_encoder.conv1.weight.data_ptr() != model.memory_encoder.conv1.weight.data_ptr()
