"""voszoo.create_model(name, weights=...): official checkpoints converted strictly, the ToyVOS pre-trained encoders,
and errors that name the argument."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_aot_presets import synthetic_official
from test_convert import synthetic_checkpoint

import voszoo
from voszoo.engine.checkpoint import CheckpointError
from voszoo.models.convert import CheckpointMismatchError
from voszoo.pretrain import load_toyvos_weights


def test_official_aot_checkpoint_is_converted_into_the_preset(tmp_path: Path) -> None:
    official = synthetic_official("aott", seed=4)
    path = tmp_path / "AOTT_PRE_YTB_DAV.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, path)
    model = voszoo.create_model("aot_t", weights=path)
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in official.items())
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):  # AOT-T weights, AOT-B preset: strict
        voszoo.create_model("aot_b", weights=path)
    with pytest.raises(CheckpointError, match=r"official AOT checkpoint: name=aot_t \(this run builds an STM\)") as e:
        voszoo.create_model("stm_r18", weights=path)  # the preset whose official_weights.files has this file name
    assert e.value.hint == "rerun with name=aot_t"
    renamed = tmp_path / "renamed.pth"
    path.rename(renamed)
    with pytest.raises(CheckpointError, match=r"AOT checkpoint: name=aot_b, aot_l, aot_s, aot_t or r50_aot_l, as its"):
        voszoo.create_model("stm_r18", weights=renamed)  # every preset that declares the AOT format


def test_official_stm_checkpoint_is_converted_into_the_preset(tmp_path: Path) -> None:
    official = synthetic_checkpoint(seed=5)
    path = tmp_path / "STM_weights.pth"
    torch.save(official, path)
    model = voszoo.create_model("stm", weights=str(path))
    state = model.state_dict()
    assert torch.equal(state["decoder.fuse.weight"], official["module.Decoder.convFM.weight"])  # test_convert's map
    assert torch.equal(state["decoder.res.conv2.bias"], official["module.Decoder.ResMM.conv2.bias"])


def test_toyvos_weights_load_the_pretrained_resnet_encoders() -> None:
    expected, _ = load_toyvos_weights("resnet18")  # conftest's seeded cache entry
    model = voszoo.create_model("stm_r18", weights="toyvos")
    for encoder in (model.query_encoder, model.memory_encoder):
        state = encoder.state_dict()
        shared = [k for k in expected if k in state]
        assert shared and all(torch.equal(state[k], expected[k]) for k in shared)
    random = voszoo.create_model("stm_r18")
    assert not torch.equal(random.query_encoder.state_dict()[shared[0]], expected[shared[0]])


def test_weights_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights='missing.pth' is neither 'toyvos' nor an existing checkpoint"):
        voszoo.create_model("stm_r18", weights="missing.pth")
    with pytest.raises(TypeError, match="weights must be None, 'toyvos' or a checkpoint path, got int"):
        voszoo.create_model("stm_r18", weights=3)
    with pytest.raises(ValueError, match=r"weights='toyvos' needs a ResNet encoder.*'aot_t' has none; .*stm_r18"):
        voszoo.create_model("aot_t", weights="toyvos")


def test_voszoo_checkpoint_of_the_preset_loads_and_another_preset_is_named(tmp_path: Path) -> None:
    from voszoo.engine.checkpoint import CHECKPOINT_KEYS, FORMAT_VERSION, model_class_path

    trained = voszoo.create_model("stm_r18", **{"decoder.hidden_channels": 32})
    checkpoint = dict.fromkeys(CHECKPOINT_KEYS)
    checkpoint.update(
        format_version=FORMAT_VERSION,
        model_name="stm_r18",
        model_class=model_class_path(trained),
        state_dict=trained.state_dict(),
        step=1,
        epoch=0,
        position={},
        rng=[],
        config={},
    )
    path = tmp_path / "last.pt"
    torch.save(checkpoint, path)
    loaded = voszoo.create_model("stm_r18", weights=path, **{"decoder.hidden_channels": 32})
    assert all(torch.equal(value, trained.state_dict()[key]) for key, value in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="stm_r18"):
        voszoo.create_model("mga_r18", weights=path)
