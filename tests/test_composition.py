"""The slot combinations the docs promise compose, build and train (forward + backward); memory policies swap on
SITVOS and AOT and shape the inference memory as documented; an impossible combination fails before training."""

import numpy as np
import pytest
import torch
from clips_util import tiny_clip

from voszoo.hydra_compose import compose_config
from voszoo.inference.session import InferenceSession
from voszoo.instantiate import ConfigError
from voszoo.layers import MotionEnhancement, MotionGuidedPrior
from voszoo.models.registry import (
    build_memory_policy,
    build_model,
    compose_model_config,
    create_model,
    list_components,
)

SLOT_COMBINATIONS = [
    ("stm_r18", ("motion=mu_layer",), True, False),
    ("stm_r18", ("prior=motion_guided",), False, True),
    ("stm_r18", ("motion=mu_layer", "prior=motion_guided"), True, True),
    ("munet_r18", ("prior=motion_guided",), True, True),
]


def train_step(model):
    torch.manual_seed(0)
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert out["logits"].shape[:2] == (2, 2) and out["logits"].shape[-2:] == (64, 64)
    return out


def has_gradient(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize(("preset", "overrides", "motion", "prior"), SLOT_COMBINATIONS)
def test_slot_combinations_train(preset, overrides, motion, prior):
    cfg = compose_model_config(preset, list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.motion, MotionEnhancement) if motion else model.motion is None
    assert isinstance(model.prior, MotionGuidedPrior) if prior else model.prior is None
    train_step(model)
    for module in (m for m in (model.motion, model.prior) if m is not None):
        assert has_gradient(module), f"{type(module).__name__} receives no gradient in {preset} {overrides}"
    assert has_gradient(model.query_encoder)


# frame indices a bank holds after frames 0..7 with one write per frame, computed by hand from each policy's rule
# (conf/model/memory/*.yaml); fixed_count (7): frames 0..7 are 8 candidates, all spans equal, ties drop the later
# intermediate frame (6).
EXPECTED_MEMORY = {
    "aot_gap": [0, 7],
    "every_12": [0, 7],
    "every_n": [0, 5, 7],
    "first_and_previous": [0, 7],
    "first_only": [0],
    "fixed_count": [0, 1, 2, 3, 4, 5, 7],
    "keep_all": [0, 1, 2, 3, 4, 5, 6, 7],
    "previous_only": [7],
}


def test_every_memory_policy_is_covered():
    assert sorted(list_components("memory")) == sorted(EXPECTED_MEMORY)


@pytest.mark.parametrize("preset", ["sitvos_r18", "aot_t"])
def test_memory_policies_swap(preset):
    torch.manual_seed(0)
    model = build_model(compose_model_config(preset))
    train_step(model)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    first = np.zeros((64, 64), np.uint8)
    first[8:28, 8:28], first[36:60, 30:60] = 1, 2
    for policy_name, expected in EXPECTED_MEMORY.items():
        cfg = compose_model_config(preset, [f"memory={policy_name}"])
        policy = build_memory_policy(cfg)
        assert type(policy).__name__ == cfg.memory._target_.rsplit(".", 1)[1]
        session = InferenceSession(model, policy_factory=lambda cfg=cfg: build_memory_policy(cfg))
        for index, frame in enumerate(frames):
            result = session.step(frame, first if index == 0 else None)
            assert result.labels.shape == (64, 64) and set(np.unique(result.labels)) <= {0, 1, 2}
        assert session.groups[0].memories[0].frame_indices == expected, policy_name
    model.train()


@pytest.mark.parametrize("preset", ["aot_t", "aot_s"])
def test_bilateral_matcher_slot_trains_and_segments_in_aot(preset):
    # BATMAN's bilateral attention as AOT's short-term matcher (`model=aot_s model/matcher=bilateral`)
    from voszoo.layers.bilateral_matcher import BilateralShortTermAttention

    cfg = compose_model_config(preset, ["matcher=bilateral"])
    torch.manual_seed(0)
    model = build_model(cfg)
    matchers = [layer.short_term_attn for layer in model.LSTT.layers]
    assert len(matchers) == cfg.lstt.num_layers
    assert all(isinstance(m, BilateralShortTermAttention) for m in matchers)
    assert all(m.attention.window_size == 15 and m.attention.bilateral_window == 84 for m in matchers)
    train_step(model)
    assert all(has_gradient(m.encoder) for m in matchers)  # E is trained through the attention bias
    model.eval()
    session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg))
    first = np.zeros((64, 64), np.uint8)
    first[8:28, 8:28], first[36:60, 30:60] = 1, 2
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        result = session.step(frame, first if index == 0 else None)
        assert result.labels.shape == (64, 64) and result.probs.shape == (3, 64, 64)
    assert type(build_model(compose_model_config(preset)).LSTT.layers[0].short_term_attn).__name__ == (
        "MultiheadLocalAttention"
    )


def test_slot_missing_from_preset_fails_at_composition():
    # AOT has no `motion` slot: the group override has nothing to replace
    with pytest.raises(ConfigError, match="model 'aot_t' has no 'motion' slot.*: mga, mga_r18, munet, munet_r18, stm"):
        compose_model_config("aot_t", ["motion=mu_layer"])
    with pytest.raises(ConfigError, match="model 'sitvos_r18' has no 'prior' slot"):
        compose_model_config("sitvos_r18", ["prior=motion_guided"])


def test_appended_slot_on_wrong_preset_fails_at_build():
    # `+model/motion=mu_layer` appends the slot anyway; building stops before any training, naming the argument
    # AOT does not take
    cfg = compose_config(None, ["+model=aot_t", "+model/motion=mu_layer"]).model
    with pytest.raises(ConfigError, match="AOT.*unexpected keyword argument 'motion'"):
        build_model(cfg)


@pytest.mark.parametrize("preset", ["aot_s", "aot_b", "batman_light"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_depth_sweep_keeps_the_decoder_input_in_step(preset: str, layers: int) -> None:
    # DESIGN.md's sweep `voszoo-train -m model=aot_s,aot_b model.lstt.num_layers=1,2,3`: the FPN input is
    # d_model x (layers + 1), computed from the propagation node, so the depth alone is a valid override
    stack = "transformer" if preset.startswith("batman") else "lstt"
    cfg = compose_config("train", [f"model={preset}", f"model.{stack}.num_layers={layers}"]).model
    model = build_model(cfg)
    width = int(cfg[stack].d_model)
    assert model.decoder.in_channels == width * (layers + 1) == model.decoder.conv_in.conv.in_channels
    assert len(model.propagator.layers) == layers


def test_an_explicit_decoder_width_that_disagrees_with_the_depth_fails_at_build_with_the_fix():
    with pytest.raises(ConfigError, match=r"decoder.in_channels=512 disagrees with 768, d_model x \(layers \+ 1\)"):
        create_model("aot_t", **{"lstt.num_layers": 2, "decoder.in_channels": 512})
