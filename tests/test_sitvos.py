"""SITVOS (Lan et al., AAAI 2022): Siamese feature reuse, mask encoder, encode / memorize / segment, ablations."""

import math

import pytest
import torch
import torchvision
from clips_util import tiny_clip
from omegaconf import OmegaConf
from torch import nn

from voszoo.backbones import ResNetBackbone
from voszoo.decoders import RefineDecoder
from voszoo.layers.interactive import InteractiveTransformer
from voszoo.losses import SegmentationCriterion
from voszoo.memory import (
    EveryN,
    FirstAndPrevious,
    FirstOnly,
    FixedCount,
    KeepAll,
    MemoryBank,
    PreviousOnly,
)
from voszoo.models.base import labels_to_probs
from voszoo.models.registry import build_memory_policy, build_model, compose_model_config
from voszoo.models.sitvos import SITVOS


class Counting(nn.Module):
    """Wraps a module, counts its calls and records its first positional input."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.image_channels = getattr(inner, "image_channels", 3)
        self.inputs = []

    def forward(self, x, *args, **kwargs):
        self.inputs.append(x.detach().clone())
        return self.inner(x, *args, **kwargs)


class RecordingTransformer(nn.Module):
    """Wraps the transformer and records the number of memory frames of each call."""

    def __init__(self, inner, tokens_per_frame):
        super().__init__()
        self.inner = inner
        self.tokens_per_frame = tokens_per_frame
        self.frames = []

    def forward(self, memory, query, mask_embedding):
        self.frames.append(memory.shape[1] / self.tokens_per_frame)
        return self.inner(memory, query, mask_embedding)


def tiny_sitvos(*, fim=True, official=True, criterion=True, detach=True, count=False):
    torch.manual_seed(0)
    encoder = ResNetBackbone(depth=18)
    mask_encoder = ResNetBackbone(depth=18, image_channels=1)
    channels = 16
    return SITVOS(
        encoder=Counting(encoder) if count else encoder,
        mask_encoder=Counting(mask_encoder) if count else mask_encoder,
        memory_embedding=nn.Conv2d(256, channels, 3, padding=1),
        query_embedding=nn.Conv2d(256, channels, 3, padding=1),
        mask_embedding=nn.Conv2d(256, channels, 3, padding=1),
        transformer=InteractiveTransformer(
            channels=channels,
            key_channels=8,
            fim=fim,
            cross_value_projection=not official,
            shared_cross_norm=official,
            dropout=0.0,
        ),
        projection=nn.Conv2d(2 * channels, 32, 1) if official else None,
        concat_query=official,
        decoder=RefineDecoder(in_channels=32 if official else channels, skip_channels=(128, 64), hidden_channels=16),
        criterion=SegmentationCriterion(bootstrap_ratio=1.0) if criterion else None,
        detach_memory_masks=detach,
    )


def unroll(model, clip, policy):
    """The training unroll of VOSModel.forward, under an inference memory policy."""
    num_objects = int(clip.num_objects.max())
    memory = model.new_memory(policy, num_objects=num_objects)
    model.memorize(memory, model.encode(clip.images[:, 0]), labels_to_probs(clip.labels[:, 0], num_objects), 0)
    all_logits = []
    for t in range(1, clip.images.shape[1]):
        feats = model.encode(clip.images[:, t])
        logits = model.segment(memory, feats)
        all_logits.append(logits)
        model.memorize(memory, feats, torch.softmax(logits, dim=1), t)
    return model.criterion(torch.stack(all_logits, dim=1), clip.labels[:, 1:], num_objects=clip.num_objects)


def params_without_grad(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]


# -- the mask encoder backbone option ----------------------------------------------------------------------------------
def test_one_channel_backbone_for_masks(tmp_path):
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth=18, image_channels=1)
    assert backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert backbone.conv1.weight.abs().max() <= 1 / 7  # PyTorch's default init: U(-1/sqrt(49), 1/sqrt(49))
    out = backbone(torch.rand(2, 1, 64, 32))
    assert out["s16"].shape == (2, 256, 4, 2) and out["s4"].shape == (2, 64, 16, 8)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    conv1 = backbone.conv1.weight.clone()
    backbone.load_torchvision_weights(str(tmp_path / "r18.pth"))
    assert torch.equal(backbone.conv1.weight, conv1)  # the RGB conv1 does not fit and is not loaded
    assert torch.equal(backbone.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert torch.equal(backbone.bn1.weight, reference.bn1.weight)
    partial = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer3.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        backbone.load_torchvision_weights(str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="image_channels"):
        ResNetBackbone(depth=18, image_channels=0)
    assert ResNetBackbone(depth=18).conv1.weight.shape == (64, 3, 7, 7)


# -- the contract ------------------------------------------------------------------------------------------------------
def test_encode_memorize_segment_shapes_and_siamese_features():
    model = tiny_sitvos(criterion=False).eval()
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.encode(image)
        maps = model.encoder(image)  # the same backbone, called directly
        torch.testing.assert_close(feats.cache["query"], model.query_embedding(maps["s16"]))
        memory = model.new_memory(KeepAll(), num_objects=3)
        labels = torch.randint(0, 4, (2, 64, 96))
        model.memorize(memory, feats, labels_to_probs(labels, 3), 0)
        entry = memory.long_term[0].tensors
        assert entry["frame"].shape == (2, 16, 4, 6) and entry["mask"].shape == (2, 3, 16, 4, 6)
        torch.testing.assert_close(entry["frame"], model.memory_embedding(maps["s16"]))  # M_ori from shared weights
        logits = model.segment(memory, model.encode(torch.randn(2, 3, 64, 96)))
    assert logits.shape == (2, 4, 64, 96) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="N\\+1=4"):
        model.memorize(memory, feats, labels_to_probs(labels, 2), 1)


def test_memorised_frame_reuses_the_cached_backbone_features():
    """Each frame goes through the Siamese backbone exactly once, also when it enters the memory."""
    model = tiny_sitvos(count=True).train()
    out = model(tiny_clip())
    assert len(model.encoder.inputs) == 3  # frames 0, 1, 2: one backbone pass each
    assert len(model.mask_encoder.inputs) == 2  # frames 0 and 1 are memorised
    out["loss"].backward()
    # inference: 6 frames, each segmented and memorised, 6 backbone passes
    model.eval()
    model.encoder.inputs.clear()
    memory = model.new_memory(FixedCount(count=3), num_objects=1)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, 8:20, 8:20] = 1
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(1, 3, 32, 32)), labels_to_probs(labels, 1), 0)
        for t in range(1, 6):
            feats = model.encode(torch.randn(1, 3, 32, 32))
            model.memorize(memory, feats, torch.softmax(model.segment(memory, feats), dim=1), t)
    assert len(model.encoder.inputs) == 6


def test_mask_encoder_sees_each_objects_probability_alone():
    model = tiny_sitvos(criterion=False, count=True).eval()
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(2, 4, 32, 32, generator=g)
    probs = probs / probs.sum(1, keepdim=True)
    memory = model.new_memory(KeepAll(), num_objects=3)
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(2, 3, 32, 32, generator=g)), probs, 0)
    (masks,) = model.mask_encoder.inputs
    assert masks.shape == (6, 1, 32, 32)
    for b in range(2):
        for i in range(3):
            torch.testing.assert_close(masks[b * 3 + i, 0], probs[b, i + 1])


@pytest.mark.parametrize("detach", [True, False])
def test_memorised_predictions_are_detached_as_in_the_official_training(detach):
    model = tiny_sitvos(criterion=False, detach=detach).train()
    probs = torch.softmax(torch.randn(1, 2, 32, 32), dim=1).requires_grad_()
    memory = model.new_memory(KeepAll(), num_objects=1)
    model.memorize(memory, model.encode(torch.randn(1, 3, 32, 32)), probs, 0)
    model.segment(memory, model.encode(torch.randn(1, 3, 32, 32))).sum().backward()
    assert (probs.grad is None) == detach
    assert model.memory_embedding.weight.grad is not None  # the memorised frame's features keep their gradient


def test_batched_segment_equals_per_sample_and_follows_object_order():
    model = tiny_sitvos(criterion=False).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 2, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)

    def run(imgs, labs, order=(1, 2)):
        probs = labels_to_probs(labs, 2)[:, [0, *order]]
        memory = model.new_memory(KeepAll(), num_objects=2)
        with torch.no_grad():
            model.memorize(memory, model.encode(imgs[:, 0]), probs, 0)
            return model.segment(memory, model.encode(imgs[:, 1]))

    both = run(images, labels)
    for b in range(2):
        torch.testing.assert_close(both[b : b + 1], run(images[b : b + 1], labels[b : b + 1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run(images, labels, order=(2, 1)), both[:, [0, 2, 1]], atol=1e-4, rtol=1e-4)


def test_absent_objects_get_zero_probability():
    model = tiny_sitvos(criterion=False).eval()
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    labels[0, 20:28, 20:28] = 2  # only sample 0 has object 2
    memory = model.new_memory(KeepAll(), num_objects=2)
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(2, 3, 32, 32)), labels_to_probs(labels, 2), 0)
        logits = model.segment(memory, model.encode(torch.randn(2, 3, 32, 32)))
    assert memory.state["objects_present"].tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(logits[1, 2], torch.full((32, 32), math.log(1e-7 / (1 - 1e-7))), atol=1e-4, rtol=0)


def test_mask_encoder_must_take_one_channel():
    with pytest.raises(ValueError, match="image_channels=1"):
        SITVOS(
            encoder=ResNetBackbone(depth=18),
            mask_encoder=ResNetBackbone(depth=18),
            memory_embedding=nn.Conv2d(256, 8, 1),
            mask_embedding=nn.Conv2d(256, 8, 1),
            transformer=InteractiveTransformer(channels=8, key_channels=4),
            decoder=RefineDecoder(in_channels=8, skip_channels=(128, 64), hidden_channels=8),
        )


def test_shared_embedding_when_query_embedding_is_none():
    model = tiny_sitvos(criterion=False).eval()
    model.query_embedding = None
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode(image)
        torch.testing.assert_close(feats.cache["query"], model.memory_embedding(model.encoder(image)["s16"]))


# -- memory ------------------------------------------------------------------------------------------------------------
def test_first_only_and_previous_only_banks():
    """Table 4's two single-frame memories, on the bank alone (frames 7..19, the reference being 7)."""
    first, previous = MemoryBank(policy=FirstOnly()), MemoryBank(policy=PreviousOnly(max_frames=3))
    for t in range(7, 20):
        for bank in (first, previous):
            bank.write(t, {"key": torch.full((1,), float(t))})
        assert first.frame_indices == [7] and first.short_term.frame_index == t  # kept, but not read
        assert previous.frame_indices == [t] and [e.frame_index for e in previous.long_term] == [t]
        assert previous.entries(include_short_term=False)[0].frame_index == t
    assert first.stack("key", dim=0).tolist() == [[7.0]]
    assert previous.stack("key", dim=0).tolist() == [[19.0]]
    assert first.reference_index == previous.reference_index == 7
    assert FirstOnly().reads_short_term is False and PreviousOnly().keeps_reference is False
    assert KeepAll().reads_short_term is True and KeepAll().keeps_reference is True


def test_fixed_count_memory_never_exceeds_n():
    count = 3
    model = tiny_sitvos(criterion=False).eval()
    recorder = RecordingTransformer(model.transformer, tokens_per_frame=2 * 2)  # 32x32 input -> 2x2 tokens
    model.transformer = recorder
    memory = model.new_memory(FixedCount(count=count), num_objects=2)
    labels = torch.randint(0, 3, (1, 32, 32))
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(1, 3, 32, 32)), labels_to_probs(labels, 2), 0)
        for t in range(1, 10):
            feats = model.encode(torch.randn(1, 3, 32, 32))
            model.memorize(memory, feats, torch.softmax(model.segment(memory, feats), dim=1), t)
            assert memory.frame_indices[0] == 0 and memory.frame_indices[-1] == t
    assert recorder.frames == [min(t, count) for t in range(1, 10)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (FirstOnly(), lambda t: [0]),
        (PreviousOnly(), lambda t: [t - 1]),
        (FirstAndPrevious(), lambda t: sorted({0, t - 1})),
        (EveryN(n=12), lambda t: sorted({*range(0, t, 12), t - 1})),
    ],
    ids=["first-only", "previous-only", "first-and-previous", "every-12"],
)
def test_table4_memories_read_the_promised_frames(policy, expected):
    model = tiny_sitvos(criterion=False).eval()
    recorder = RecordingTransformer(model.transformer, tokens_per_frame=4)
    model.transformer = recorder
    memory = model.new_memory(policy, num_objects=1)
    labels = torch.randint(0, 2, (1, 32, 32))
    with torch.no_grad():
        model.memorize(memory, model.encode(torch.randn(1, 3, 32, 32)), labels_to_probs(labels, 1), 0)
        for t in range(1, 15):
            assert memory.frame_indices == expected(t)
            feats = model.encode(torch.randn(1, 3, 32, 32))
            model.memorize(memory, feats, torch.softmax(model.segment(memory, feats), dim=1), t)
    assert recorder.frames == [len(expected(t)) for t in range(1, 15)]


# -- ablation switches: forward and backward on a 3-frame 64x64 clip --------------------------------------------------
@pytest.mark.parametrize(
    ("fim", "official"), [(True, True), (False, True), (True, False)], ids=["official", "official-no-fim", "paper"]
)
def test_training_unroll_gives_finite_losses_and_gradients_everywhere(fim, official):
    model = tiny_sitvos(fim=fim, official=official).train()
    out = model(tiny_clip())
    assert out["logits"].shape == (2, 2, 3, 64, 64)
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_ce", "logits"}
    out["loss"].backward()
    assert params_without_grad(model) == []
    assert model.multi_object == "per_object" and model.stride == 16


def test_every_memory_policy_runs_forward_and_backward():
    model = tiny_sitvos().train()
    clip = tiny_clip()
    for policy in [FirstOnly(), PreviousOnly(), FirstAndPrevious(), EveryN(n=12), FixedCount(count=7)]:
        model.zero_grad()
        losses = unroll(model, clip, policy)
        assert torch.isfinite(losses["loss"]), policy
        losses["loss"].backward()
        assert params_without_grad(model) == [], policy


# -- presets -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ([], lambda m, p: m.transformer.fim and type(p).__name__ == "FixedCount" and p.count == 7),
        (["memory=first_only"], lambda m, p: type(p).__name__ == "FirstOnly"),
        (["memory=previous_only"], lambda m, p: type(p).__name__ == "PreviousOnly"),
        (["memory=first_and_previous"], lambda m, p: type(p).__name__ == "FirstAndPrevious"),
        (["memory=every_12"], lambda m, p: type(p).__name__ == "EveryN" and p.n == 12),
    ],
    ids=["default", "first-only", "previous-only", "first-and-previous", "every-12"],
)
def test_memory_switches_compose(overrides, check):
    cfg = compose_model_config("sitvos_r18", overrides)
    assert check(build_model(cfg), build_memory_policy(cfg))


def test_r18_preset_without_fim_trains():
    cfg = compose_model_config("sitvos_r18", ["transformer.fim=false"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert not model.transformer.fim and model.transformer.memory_cross is None
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and params_without_grad(model) == []


def _count_parameters(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _conv_parameters(in_channels: int, out_channels: int, kernel: int) -> int:
    """Weights and bias of a k x k convolution."""
    return in_channels * out_channels * kernel * kernel + out_channels


def test_sitvos_preset_has_the_official_layout():
    model = build_model(compose_model_config("sitvos"))
    # official model.py by hand: ResNet-50 to layer3, ResNet-18 (bn1, layer1-3) + 1-channel conv1_m, W_K / W_Q
    # (1024 -> 128, 3x3) and W_mask (256 -> 128, 3x3), Memory (2 SA, 3 CA without W^V, shared LN, projector
    # 256 -> 512), Decoder(256) with 512 / 256 skips
    r50, r18 = torchvision.models.resnet50(), torchvision.models.resnet18()
    count, conv = _count_parameters, _conv_parameters

    residual = 2 * conv(256, 256, 3)
    expected = (
        count(r50.conv1, r50.bn1, r50.layer1, r50.layer2, r50.layer3)
        + 64 * 49
        + count(r18.bn1, r18.layer1, r18.layer2, r18.layer3)
        + 2 * conv(1024, 128, 3)
        + conv(256, 128, 3)
        + 2 * (2 * 128 * 64 + 128 * 128 + 256)
        + 3 * 2 * 128 * 64
        + 256
        + conv(256, 512, 1)
        + conv(512, 256, 3)
        + residual
        + conv(512, 256, 3)
        + 2 * residual
        + conv(256, 256, 3)
        + 2 * residual
        + conv(256, 2, 3)
    )
    assert sum(p.numel() for p in model.parameters()) == expected == 23_076_738
    assert model.transformer.output_cross.temperature == 8.0
    assert model.mask_encoder.conv1.weight.shape == (64, 1, 7, 7)


def test_sitvos_paper_preset_has_the_paper_layout():
    """model=sitvos_paper by hand from Sec. 3.1-3.4: one shared 1x1 embedding 1024 -> C = 256, a 1x1 mask embedding
    256 -> 256, five single-head blocks each with W^Q, W^K (256 -> 64), W^V (256 x 256) and its own LayerNorm, T_out
    (256) straight into the decoder (convolution + residual block, two refinement modules, 2-channel output)."""
    torch.manual_seed(0)
    model = build_model(compose_model_config("sitvos_paper"))
    r50, r18 = torchvision.models.resnet50(), torchvision.models.resnet18()
    count, conv = _count_parameters, _conv_parameters

    residual = 2 * conv(256, 256, 3)
    block = 2 * 256 * 64 + 256 * 256 + 2 * 256  # W^Q, W^K, W^V (no bias), LayerNorm
    expected = (
        count(r50.conv1, r50.bn1, r50.layer1, r50.layer2, r50.layer3)
        + 64 * 49
        + count(r18.bn1, r18.layer1, r18.layer2, r18.layer3)
        + conv(1024, 256, 1)
        + conv(256, 256, 1)
        + 5 * block
        + conv(256, 256, 3)
        + residual
        + conv(512, 256, 3)
        + 2 * residual
        + conv(256, 256, 3)
        + 2 * residual
        + conv(256, 2, 3)
    )
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.query_embedding is None and model.projection is None and not model.concat_query
    assert model.memory_embedding.kernel_size == model.mask_embedding.kernel_size == (1, 1)
    blocks = [getattr(model.transformer, n) for n in ("memory_self", "query_self", "memory_cross", "query_cross")]
    blocks.append(model.transformer.output_cross)
    assert all(b.to_value is not None and b.key_channels == 64 and b.temperature == 8.0 for b in blocks)
    assert len({id(b.norm) for b in blocks}) == 5
    # the preset is the sitvos preset with the overrides docs/methods/sitvos.md lists
    overrides = [*PAPER_OVERRIDES[:-1], "memory_embedding.out_channels=256"]  # the decoder's input is derived
    paper, overridden = (
        OmegaConf.to_container(cfg, resolve=True)
        for cfg in (compose_model_config("sitvos_paper"), compose_model_config("sitvos", overrides))
    )
    assert {**paper, "name": None} == {**overridden, "name": None}
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and params_without_grad(model) == []


def _one_step(model):
    memory = model.new_memory(FixedCount(count=7), num_objects=1)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, 4:20, 4:20] = 1
    model.memorize(memory, model.encode(torch.randn(1, 3, 32, 32)), labels_to_probs(labels, 1), 0)
    return memory, model.encode(torch.randn(1, 3, 32, 32))


def test_the_projection_sees_t_out_then_q_ori():
    model = tiny_sitvos(criterion=False).eval()
    seen = []
    model.projection.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    memory, feats = _one_step(model)
    with torch.no_grad():
        model.segment(memory, feats)
    (x,) = seen
    assert x.shape == (1, 32, 2, 2)
    torch.testing.assert_close(x[:, 16:], feats.cache["query"])
    assert not torch.allclose(x[:, :16], feats.cache["query"])


PAPER_OVERRIDES = [
    "memory_embedding.kernel_size=1",
    "memory_embedding.padding=0",
    "query_embedding=null",
    "transformer.temperature=null",
    "transformer.cross_value_projection=true",
    "transformer.shared_cross_norm=false",
    "concat_query=false",
    "projection=null",
    "decoder.in_channels=64",
]


def test_paper_variant_is_data():
    """The paper's equations (1x1 embeddings shared by the Siamese branches, W^V everywhere, one LN per block, T_out
    straight into the decoder) are overrides of the preset (docs/methods/sitvos.md)."""
    torch.manual_seed(0)
    model = build_model(compose_model_config("sitvos_r18", PAPER_OVERRIDES)).train()
    assert model.query_embedding is None and model.projection is None and not model.concat_query
    assert model.memory_embedding.kernel_size == (1, 1) and model.mask_embedding.kernel_size == (1, 1)
    blocks = [model.transformer.memory_cross, model.transformer.query_cross, model.transformer.output_cross]
    assert all(b.to_value is not None for b in blocks) and len({id(b.norm) for b in blocks}) == 3
    assert model.transformer.output_cross.temperature == math.sqrt(32)
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and params_without_grad(model) == []


# -- the paper recipe (Sec. 3.5) and Table 3's training-data rows ---------------------------------------------------
@pytest.mark.parametrize("stage", ["sitvos_paper_static", "sitvos_paper", "sitvos_paper_main_only"])
def test_paper_recipe_states_the_papers_numbers(stage):
    from voszoo.hydra_compose import compose_config

    # data=static / davis_youtube point at folders that are not here; their numbers do not depend on them
    cfg = compose_config("train", [f"experiment={stage}", "data=toyvos"])
    assert cfg.model.name == "sitvos_paper"
    assert (cfg.model.criterion.ce_weight, cfg.model.criterion.jaccard_weight, cfg.model.criterion.bootstrap_ratio) == (
        1.0,
        0.0,
        1.0,
    )  # plain cross-entropy
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.encoder_lr_mult) == ("adam", 1e-5, 0, 1)
    assert (cfg.schedule.power, cfg.schedule.warmup_steps) == (0.9, 0)
    assert (cfg.trainer.batch_size, cfg.trainer.freeze_bn) == (4, True)
    clip = cfg.data.train if stage.endswith("_static") else cfg.data.clip
    assert (clip.num_frames, list(clip.transform.size)) == (3, [384, 384])
    if not stage.endswith("_static"):
        assert cfg.data.train.sources.davis.max_gap == 26  # intervals 0..25 = index gaps 1..26
    # Table 3: full training starts from the static stage, main-only from ImageNet
    assert bool(cfg.get("init_required")) == (stage == "sitvos_paper")
    assert (cfg.model.encoder.weights is not None) == (stage != "sitvos_paper")
