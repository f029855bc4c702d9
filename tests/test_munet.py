"""MUNet (shared/papers/002): STM's motion slot, the previous frame from memory, Table 4 ablations, config slots."""

import numpy as np
import pytest
import torch
from clips_util import tiny_clip
from torch import nn

from voszoo.backbones import ResNetBackbone
from voszoo.decoders import RefineDecoder
from voszoo.hydra_compose import compose_config
from voszoo.inference.session import InferenceSession
from voszoo.layers import KeyValueProjection, SpaceTimeMemoryRead
from voszoo.layers.motion_uncertainty import (
    AdditiveFusion,
    MotionEnhancement,
    MotionSpatialAttention,
    MULayer,
)
from voszoo.losses import SegmentationCriterion
from voszoo.memory import EveryN, KeepAll
from voszoo.models.base import labels_to_probs
from voszoo.models.munet import MUNet
from voszoo.models.registry import build_model, compose_model_config, create_model
from voszoo.models.stm import STM


class RecordingMotion(nn.Module):
    """Wraps a motion module and records (previous, current) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, previous, current):
        self.calls.append((previous.detach().clone(), current.detach().clone()))
        return self.inner(previous, current)


def tiny_munet(*, motion=None, criterion=True):
    torch.manual_seed(0)
    return MUNet(
        memory_encoder=ResNetBackbone(depth=18, extra_input_channels=2),
        query_encoder=ResNetBackbone(depth=18),
        memory_key_value=KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        query_key_value=KeyValueProjection(in_channels=256, key_channels=16, value_channels=32),
        reader=SpaceTimeMemoryRead(),
        decoder=RefineDecoder(in_channels=64, skip_channels=(128, 64), hidden_channels=32),
        motion=motion
        or MotionEnhancement(mu_layer=MULayer(in_channels=256, window=25), fusion=MotionSpatialAttention(channels=256)),
        criterion=SegmentationCriterion(bootstrap_ratio=0.4, iou_weight=1.0) if criterion else None,
    )


def compose_train(*overrides):
    return compose_config("train", overrides)


def grads_missing(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]


# -- the previous frame comes from the memory ------------------------------------------------------------------------
def test_previous_frame_features_come_from_the_short_term_entry():
    recorder = RecordingMotion(tiny_munet(criterion=False).motion)
    model = tiny_munet(motion=recorder, criterion=False).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 1, 3, 64, 64, generator=g).unbind(0)
    labels = torch.randint(0, 3, (1, 64, 64), generator=g)
    memory = model.new_memory(EveryN(n=5), num_objects=2)
    with torch.no_grad():
        feats = [model.encode(image) for image in images]
        assert all(f.cache == {} for f in feats)  # the query key/value need the previous frame
        model.memorize(memory, feats[0], labels_to_probs(labels, 2), 0)
        for t in range(1, 4):
            logits = model.segment(memory, feats[t])
            assert logits.shape == (1, 3, 64, 64) and torch.isfinite(logits).all()
            model.memorize(memory, feats[t], logits.softmax(1), t)
    for t, (previous, current) in enumerate(recorder.calls, start=1):
        # frame 1's previous frame is the reference (frame 0)
        torch.testing.assert_close(previous, feats[t - 1].maps["s16"])
        torch.testing.assert_close(current, feats[t].maps["s16"])
    # only the newest entry keeps the features; long-term entries keep only keys and values
    assert "query_s16" in memory.short_term.tensors
    assert [sorted(e.tensors) for e in memory.long_term] == [["key", "value"]]


def test_segment_without_a_memorised_previous_frame_is_an_error():
    model = tiny_munet(criterion=False).eval()
    memory = model.new_memory(KeepAll(), num_objects=1)
    with torch.no_grad():
        feats = model.encode(torch.randn(1, 3, 32, 32))
        model.memorize(memory, feats, labels_to_probs(torch.zeros(1, 32, 32, dtype=torch.long), 1), 0)
        del memory.short_term.tensors["query_s16"]  # e.g. a bank written by a model without the motion slot
        with pytest.raises(RuntimeError, match="previous frame"):
            model.segment(memory, feats)


def test_session_feeds_each_group_the_previous_frame():
    recorder = RecordingMotion(tiny_munet(criterion=False).motion)
    model = tiny_munet(motion=recorder, criterion=False)
    session = InferenceSession(model, policy_factory=lambda: EveryN(n=5))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    first = np.zeros((64, 64), np.uint8)
    first[8:24, 8:24] = 1
    second = np.zeros((64, 64), np.uint8)
    second[40:56, 40:56] = 2  # object 2 appears on frame 1: a second memory bank with frame 1 as reference
    session.step(frames[0], first)
    session.step(frames[1], second)
    session.step(frames[2])
    # frame 1: group 1 only (previous = frame 0); frame 2: groups 1 and 2, both with previous = frame 1
    assert len(recorder.calls) == 3
    s16_frame1 = recorder.calls[0][1]
    for previous, current in recorder.calls[1:]:
        torch.testing.assert_close(previous, s16_frame1)
        torch.testing.assert_close(current, recorder.calls[1][1])
    assert not torch.allclose(recorder.calls[0][0], s16_frame1)


def test_munet_needs_a_motion_module():
    with pytest.raises(ValueError, match="model=stm"):
        MUNet(
            memory_encoder=ResNetBackbone(depth=18, extra_input_channels=2),
            query_encoder=ResNetBackbone(depth=18),
            memory_key_value=nn.Identity(),
            query_key_value=nn.Identity(),
            reader=nn.Identity(),
            decoder=nn.Identity(),
            motion=None,
        )


# -- Table 4 ablations through config, forward and backward on a 3-frame 64x64 clip ----------------------------------
# name: (overrides relative to the model node, motion-network input channels, fusion, loss terms)
BSCE_IOU = {"loss_ce", "loss_iou"}
ABLATIONS = {
    "full (e)": ([], 3, MotionSpatialAttention, BSCE_IOU),
    "without displacement": (["motion.mu_layer.use_displacement=false"], 1, MotionSpatialAttention, BSCE_IOU),
    "without uncertainty (d)": (["motion.mu_layer.use_uncertainty=false"], 2, MotionSpatialAttention, BSCE_IOU),
    "CE loss (c)": (["criterion=cross_entropy"], 3, MotionSpatialAttention, {"loss_ce"}),
    "addition fusion (f)": (["motion=mu_layer_add"], 3, AdditiveFusion, BSCE_IOU),
}
SMALL_HEADS = ["memory_key_value.key_channels=16", "memory_key_value.value_channels=32"]
SMALL_HEADS += ["query_key_value.value_channels=32", "decoder.in_channels=64", "decoder.hidden_channels=32"]


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_ablation_switches_train_forward_and_backward(ablation):
    overrides, motion_inputs, fusion, losses = ABLATIONS[ablation]
    torch.manual_seed(0)
    model = build_model(compose_model_config("munet_r18", [*SMALL_HEADS, *overrides])).train()
    assert isinstance(model, MUNet)
    assert model.motion.mu_layer.motion_net.convs[0].in_channels == motion_inputs
    assert type(model.motion.fusion) is fusion
    out = model(tiny_clip())
    assert out["logits"].shape == (2, 2, 3, 64, 64)
    assert {k for k in out if k.startswith("loss_")} == losses
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert grads_missing(model) == []


def test_munet_presets_pair_with_the_paper_criterion():
    cfg = compose_model_config("munet")
    assert cfg._target_ == "voszoo.models.munet.MUNet"
    assert cfg.criterion.bootstrap_ratio == 0.4 and cfg.criterion.iou_weight == 1.0
    assert cfg.motion.mu_layer.window == 25 and cfg.motion.mu_layer.reduction == 4
    # D is the query encoder's s16 channels, derived when the model is built
    for preset, depth, d in (("munet", 50, 1024), ("munet_r18", 18, 256)):
        motion = create_model(preset).motion
        assert compose_model_config(preset).query_encoder.depth == depth
        assert motion.mu_layer.reduce.in_channels == d and motion.fusion.channels == d


def test_paper_recipe_experiment():
    cfg = compose_train("experiment=munet_paper")
    assert compose_train("experiment=munet") == cfg  # the older name is an alias
    assert cfg.model.name == "munet" and cfg.data.name == "davis2017"  # protocol (1): DAVIS 2017 alone
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, list(cfg.optim.betas)) == (
        "adamw",
        2e-5,
        0.5,
        [0.9, 0.999],
    )
    assert (cfg.data.train.num_frames, cfg.data.train.max_gap, list(cfg.data.train.transform.size)) == (
        6,
        1,
        [400, 400],
    )
    quick = compose_train("experiment=munet_quick")
    stm_quick = compose_train("experiment=stm_quick")
    assert quick.model.name == "munet_r18"
    # the trainer differs only by the step count: 200 (its 400-step run peaked at step 200, docs/quickstart.md)
    assert (quick.trainer.max_steps, stm_quick.trainer.max_steps) == (200, 400)
    quick.trainer.max_steps = stm_quick.trainer.max_steps
    assert quick.optim == stm_quick.optim and quick.trainer == stm_quick.trainer
    # the data differ only by the frame gap: the MU-Layer trains on consecutive frames, as it runs at inference
    assert (quick.data.train.max_gap, stm_quick.data.train.max_gap) == (1, 5)
    quick.data.train.max_gap = stm_quick.data.train.max_gap
    assert quick.data == stm_quick.data


# -- the motion slot on STM ------------------------------------------------------------------------------------------
def test_stm_with_motion_slot_composes_and_runs():
    cfg = compose_train("model=stm", "model/motion=mu_layer")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert type(model) is STM and isinstance(model.motion, MotionEnhancement)
    assert model.motion.mu_layer.reduce.in_channels == 1024  # D: the query encoder's s16 channels
    with torch.no_grad():
        out = model(tiny_clip(void_corner=False))
    assert out["logits"].shape == (2, 2, 3, 64, 64) and torch.isfinite(out["loss"])
    assert compose_train("model=stm").model.get("motion") is None  # the slot is empty by default
