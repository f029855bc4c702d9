"""Every model preset conf/model/*.yaml composes through Hydra, builds, and runs a training forward on a tiny clip."""

import pytest
import torch
from clips_util import tiny_clip

from voszoo._paths import conf_dir
from voszoo.hydra_compose import compose_config
from voszoo.memory import MemoryPolicy
from voszoo.models.base import VOSModel
from voszoo.models.registry import build_memory_policy, build_model

PRESETS = sorted(path.stem for path in (conf_dir() / "model").glob("*.yaml"))


def compose_model(*overrides):
    return compose_config(None, overrides).model


def test_stm_presets_are_registered():
    assert {"stm", "stm_r18"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_and_runs(preset):
    cfg = compose_model(f"+model={preset}")
    assert cfg.name == preset
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, VOSModel)
    assert isinstance(build_memory_policy(cfg), MemoryPolicy)
    with torch.no_grad():
        out = model(tiny_clip(void_corner=False))
    assert out["logits"].shape[:2] == (2, 2) and out["logits"].shape[-2:] == (64, 64)
    assert torch.isfinite(out["loss"])


def test_stm_slot_overrides():
    cfg = compose_model("+model=stm", "model/memory=fixed_count", "model/criterion=bootstrap_iou")
    policy = build_memory_policy(cfg, max_frames=4)
    assert type(policy).__name__ == "FixedCount" and policy.count == 7 and policy.max_frames == 4
    assert cfg.criterion.bootstrap_ratio == 0.4 and cfg.criterion.iou_weight == 1.0
    r18 = compose_model("+model=stm_r18")
    assert r18.memory_encoder.depth == 18 and r18.memory_encoder.extra_input_channels == 2
    assert r18.query_key_value.key_channels == r18.memory_key_value.key_channels == 64
    swapped = compose_model("+model=stm", "model/backbone@model.query_encoder=resnet18")
    assert swapped.query_encoder.depth == 18 and swapped.memory_encoder.depth == 50
