"""The official weights each preset declares (``official_weights:``, voszoo/models/official.py), checked against the
model the preset builds, as torchvision's tests check its weights' ``meta``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import voszoo
from voszoo.instantiate import ConfigError
from voszoo.models.official import WEIGHT_FORMATS, official_weights
from voszoo.models.registry import compose_model_config

DECLARED = {
    preset: weights
    for preset in voszoo.list_models()
    if (weights := official_weights(compose_model_config(preset))) is not None
}


def test_the_official_architectures_declare_their_weights() -> None:
    # the presets that are the papers' own architectures; derived ones (stm_r18, mga, munet, aot_t_r18) say null
    assert sorted(DECLARED) == ["aot_b", "aot_l", "aot_s", "aot_t", "r50_aot_l", "stm"]
    assert {weights.format for weights in DECLARED.values()} == set(WEIGHT_FORMATS)  # no format without a preset
    files = [name for weights in DECLARED.values() for name in weights.files]
    assert len(files) == len(set(files)), "a published file name must point to one preset"


@pytest.mark.parametrize("preset", sorted(DECLARED))
def test_declared_parameter_count_is_what_the_preset_builds(preset: str) -> None:
    torch.manual_seed(0)
    model = voszoo.create_model(preset)
    assert sum(p.numel() for p in model.parameters()) == DECLARED[preset].parameters


def test_malformed_metadata_is_an_error_naming_the_key() -> None:
    good = {"format": "aot", "files": ["X.pth"], "source": "here", "parameters": 1}
    with pytest.raises(
        ConfigError, match=r"model \(mine\)\.official_weights: unknown keys \['url'\], missing keys \[\]"
    ):
        official_weights(OmegaConf.create({"name": "mine", "official_weights": {**good, "url": "x"}}))
    with pytest.raises(
        ConfigError, match=r"official_weights\.format: unknown format 'deaot'; valid formats: \['aot', "
    ):
        official_weights(OmegaConf.create({"name": "mine", "official_weights": {**good, "format": "deaot"}}))
    with pytest.raises(ConfigError, match=r"official_weights\.files must be a non-empty list of file names"):
        official_weights(OmegaConf.create({"name": "mine", "official_weights": {**good, "files": "X.pth"}}))
    assert official_weights(OmegaConf.create({"name": "mine", "official_weights": good})).files == ("X.pth",)


def test_formats_recognise_only_their_own_files() -> None:
    aot, stm = WEIGHT_FORMATS["aot"], WEIGHT_FORMATS["stm"]
    official_aot = {"state_dict": {"module.patch_wise_id_bank.weight": torch.zeros(1)}}
    official_stm = {"module.KV_M_r4.Key.weight": torch.zeros(1)}
    assert aot.matches(official_aot) and not stm.matches(official_aot)
    assert stm.matches(official_stm) and not aot.matches(official_stm)
    voszoo_checkpoint = {"format_version": 1, "state_dict": {"patch_wise_id_bank.weight": torch.zeros(1)}}
    assert not aot.matches(voszoo_checkpoint)
