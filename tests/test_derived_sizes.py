"""Sizes that follow from other parts are derived from the built parts (voszoo.models.sizes): a backbone swap is the
backbone override alone, and a size written in a config must agree with the derived one."""

import functools

import pytest
import torch
from clips_util import tiny_clip

from voszoo.instantiate import ConfigError
from voszoo.models.registry import create_model
from voszoo.models.sizes import complete

# (preset, the backbone override(s) alone, expected decoder skip channels): one override per encoder slot
SWAPS = [
    ("stm", ["backbone@model.memory_encoder=resnet18", "backbone@model.query_encoder=resnet18"], (128, 64)),
    ("munet", ["backbone@model.memory_encoder=resnet18", "backbone@model.query_encoder=resnet18"], (128, 64)),
    ("sitvos", ["backbone@model.encoder=resnet18"], (128, 64)),
    ("r50_aot_l", ["backbone@model.encoder=resnet18"], (256, 128, 64)),
    ("batman_light", ["backbone@model.encoder=resnet50"], (1024, 512, 256)),
]


def _params_without_grad(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize(("preset", "swap", "skips"), SWAPS, ids=[s[0] for s in SWAPS])
def test_a_backbone_swap_is_one_override_and_trains(preset, swap, skips):
    torch.manual_seed(0)
    # small widths where they are the preset's own choices (not sizes derived from the encoder), for CPU time
    widths = {
        "batman_light": {"flow.num_flow_updates": 1, "transformer.d_model": 32, "transformer.dim_feedforward": 64}
    }
    model = create_model(preset, overrides=swap, **widths.get(preset, {}))
    assert tuple(model.decoder.skip_channels) == skips
    out = model(tiny_clip())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["logits"].shape[-2:] == (64, 64)
    assert _params_without_grad(model) == [] or preset == "batman_light"  # BATMAN's RAFT is frozen


def test_stm_keys_and_decoder_follow_each_encoder():
    # a different query encoder alone: each key/value projection reads its own encoder, the decoder the query's skips
    model = create_model("stm", overrides=["backbone@model.query_encoder=resnet18"])
    assert model.memory_key_value.key.in_channels == 1024 and model.query_key_value.key.in_channels == 256
    assert model.decoder.skip_channels == (128, 64)
    assert model.decoder.fuse.in_channels == 512 + 512  # memory value + query value channels


def test_identity_sizes_follow_the_bank():
    model = create_model("aot_t", **{"identity.num_identities": 4, "lstt.num_layers": 2})
    assert model.decoder.out_channels == 5 and model.decoder.in_channels == 256 * 3
    batman = create_model("batman_light", **{"identity.num_identities": 4, "flow.num_flow_updates": 1})
    assert batman.calibration.mask_channels == 5


def test_a_size_that_agrees_is_accepted_and_one_that_disagrees_names_the_key():
    swap = ["backbone@model.memory_encoder=resnet18", "backbone@model.query_encoder=resnet18"]
    model = create_model("stm", overrides=swap, **{"decoder.skip_channels": [128, 64]})
    assert model.decoder.skip_channels == (128, 64)
    with pytest.raises(ConfigError, match=r"decoder.skip_channels=\[512, 256\] disagrees with \(128, 64\)"):
        create_model("stm", overrides=swap, **{"decoder.skip_channels": [512, 256]})
    with pytest.raises(ConfigError, match="memory_key_value.in_channels=1024 disagrees with 256, the memory_encoder"):
        create_model("stm", overrides=swap, **{"memory_key_value.in_channels": 1024})
    with pytest.raises(ConfigError, match="calibration.mask_channels=11 disagrees with 5"):
        create_model("batman_light", **{"identity.num_identities": 4, "calibration.mask_channels": 11})


def test_complete_leaves_built_parts_alone():
    built = torch.nn.Conv2d(3, 4, 1)
    assert complete(built, key="x", sizes={"in_channels": (8, "somewhere")}) is built
    assert complete(None, key="x", sizes={"in_channels": (8, "somewhere")}) is None
    made = complete(
        functools.partial(torch.nn.Conv2d, out_channels=4, kernel_size=1),
        key="x",
        sizes={"in_channels": (8, "somewhere")},
    )
    assert made.in_channels == 8
