"""Input protocols (voszoo/inference/protocols.py): the official AOT and STM geometries, what is padded and where,
round trips, the errors, and sessions that run end to end with protocol=official. Expected sizes are worked out by
hand from the official code (aot-benchmark ``MultiRestrictSize``, STM ``pad_divide_by``), not by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import AffinityModel

from voszoo.inference.protocols import (
    AOTOfficialProtocol,
    STMOfficialProtocol,
    VoszooProtocol,
    aot_official_size,
    resolve_protocol,
    stm_official_padding,
)
from voszoo.inference.session import InferenceSession
from voszoo.memory import FirstAndPrevious
from voszoo.models.registry import build_memory_policy, build_model, compose_model_config, random_weights_config
from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


class _Official(AffinityModel):
    """The tiny test model, claiming an official protocol (the session asks ``model.official_protocol``)."""

    def __init__(self, protocol: str | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._protocol = protocol

    @property
    def official_protocol(self) -> str | None:
        return self._protocol


# -- AOT ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ((480, 854), (481, 849)),  # 479/16 = 29.94 -> 30*16+1; 853/16 = 53.31 -> 53*16+1
        ((481, 849), (481, 849)),  # already 16k+1: unchanged
        ((60, 90), (65, 97)),  # 59/16 = 3.69 -> 4; 89/16 = 5.56 -> 6
        # long edge 1280 > 1040: x0.8125 -> 585 x 1040; 584/16 = 36.5 rounds half to even -> 36*16+1 = 577;
        # 1039/16 = 64.94 -> 65*16+1 = 1041
        ((720, 1280), (577, 1041)),
    ],
)
def test_aot_official_size(original: tuple[int, int], expected: tuple[int, int]) -> None:
    assert aot_official_size(original) == expected


def test_aot_official_image_is_resized_to_16k_plus_1_and_normalised() -> None:
    transform = AOTOfficialProtocol().prepare((480, 854), stride=16)
    assert transform.model_size == (481, 849) and transform.score_size == (480, 854)
    grey = np.full((480, 854, 3), 128, np.uint8)  # bicubic keeps a constant image constant
    frame = transform.image(grey, device="cpu")
    assert frame.shape == (1, 3, 481, 849)
    expected = ((128 / 255 - MEAN) / STD).expand(3, 481, 849)
    torch.testing.assert_close(frame[0], expected, atol=1e-5, rtol=0)


def test_aot_official_output_upsampling_has_aligned_corners() -> None:
    transform = AOTOfficialProtocol().prepare((480, 854), stride=16)
    ramp = torch.arange(849, dtype=torch.float64).view(1, 1, 1, 849).expand(1, 2, 481, 849)
    scores = transform.scores(ramp)
    assert scores.shape == (1, 2, 480, 854)
    # align_corners=True: output column k samples input column k * 848 / 853, the end columns map onto each other
    expected = torch.arange(854, dtype=torch.float64) * 848 / 853
    torch.testing.assert_close(scores[0, 0, 7], expected)


def test_aot_official_memorises_the_argmax_label_resized_nearest() -> None:
    transform = AOTOfficialProtocol().prepare((480, 854), stride=16)
    probs = torch.zeros(1, 2, 480, 854)
    probs[:, 1, :, :427] = 0.9  # object on columns 0..426
    probs[:, 0] = 1 - probs[:, 1]
    memory = transform.memory(probs)
    assert memory.shape == (1, 2, 481, 849)
    assert set(memory.unique().tolist()) == {0.0, 1.0} and torch.all(memory.sum(1) == 1)  # one-hot
    # nearest: model column j reads original column floor(j * 854 / 849) < 427  <=>  j <= 424
    columns = memory[0, 1, 0].nonzero().flatten()
    assert columns.min() == 0 and columns.max() == 424


# -- STM ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("original", "padding"),
    [
        ((480, 854), (5, 5, 0, 0)),  # 854 -> 864: 10 extra, 5 left + 5 right; 480 is a multiple of 16
        ((481, 855), (4, 5, 7, 8)),  # 855 -> 864: 9 = 4 + 5; 481 -> 496: 15 = 7 + 8 (floor half before)
        ((480, 848), (0, 0, 0, 0)),
    ],
)
def test_stm_official_padding(original: tuple[int, int], padding: tuple[int, int, int, int]) -> None:
    assert stm_official_padding(original) == padding


def test_stm_official_pads_black_on_both_sides_before_normalising_and_crops_back() -> None:
    transform = STMOfficialProtocol().prepare((480, 854), stride=16)
    assert transform.model_size == (480, 864) and transform.score_size == (480, 854)
    image = np.full((480, 854, 3), 200, np.uint8)
    frame = transform.image(image, device="cpu")[0]
    assert frame.shape == (3, 480, 864)
    black = (-MEAN / STD).expand(3, 480, 5)  # zeros in [0, 1], normalised afterwards: not 0 in the model input
    torch.testing.assert_close(frame[:, :, :5], black)
    torch.testing.assert_close(frame[:, :, -5:], black)
    torch.testing.assert_close(frame[:, :, 5:859], ((200 / 255 - MEAN) / STD).expand(3, 480, 854))
    logits = torch.randn(1, 3, 480, 864)
    torch.testing.assert_close(transform.scores(logits), logits[..., 5:859])


def test_stm_official_memory_is_zero_in_the_padding_in_every_channel() -> None:
    transform = STMOfficialProtocol().prepare((480, 854), stride=16)
    probs = torch.full((1, 2, 480, 854), 0.5)
    memory = transform.memory(probs)
    assert memory.shape == (1, 2, 480, 864)
    assert torch.all(memory[..., :5] == 0) and torch.all(memory[..., -5:] == 0)
    assert torch.all(memory[..., 5:859] == 0.5)


# -- every protocol -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "protocol", [VoszooProtocol(), VoszooProtocol(short_side=40), AOTOfficialProtocol(), STMOfficialProtocol()]
)
@pytest.mark.parametrize("original", [(480, 854), (60, 90), (64, 64)])
def test_round_trip_shapes(protocol, original: tuple[int, int]) -> None:
    transform = protocol.prepare(original, stride=16)
    frame = transform.image(np.zeros((*original, 3), np.uint8), device="cpu")
    assert frame.shape[-2:] == transform.model_size
    logits = torch.zeros(1, 3, *transform.model_size)
    scores = transform.scores(logits)
    assert scores.shape[-2:] == transform.score_size
    assert transform.output(scores.softmax(1)).shape == (1, 3, *original)
    assert transform.memory(scores.softmax(1)).shape == (1, 3, *transform.model_size)
    assert transform.labels(torch.zeros(original, dtype=torch.long)).shape == transform.score_size


def test_unknown_protocol_names_the_key_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"protocol: unknown protocol 'offical'; valid protocols: official, voszoo"):
        resolve_protocol("offical", model=AffinityModel())
    with pytest.raises(ValueError, match="unknown protocol"):
        InferenceSession(AffinityModel(), policy_factory=FirstAndPrevious, protocol="padded")


def test_official_for_a_method_without_official_code_says_to_use_voszoo() -> None:
    with pytest.raises(ValueError, match=r"protocol=official: model 'mine' \(AffinityModel\) .*use protocol=voszoo"):
        resolve_protocol("official", model=AffinityModel(), model_name="mine")
    for name in ("mga_r18", "munet_r18"):  # STM with a prior / a motion module: not STM's official code
        torch.manual_seed(0)
        with pytest.raises(ValueError, match="use protocol=voszoo"):
            resolve_protocol("official", model=build_model(random_weights_config(name)), model_name=name)


def test_short_side_belongs_to_the_voszoo_protocol() -> None:
    with pytest.raises(ValueError, match="short_side=96 belongs to protocol=voszoo"):
        resolve_protocol("official", model=_Official("stm"), short_side=96)
    assert resolve_protocol(None, model=AffinityModel(), short_side=96).short_side == 96


def test_presets_name_their_protocol() -> None:
    official = ["aot_t", "aot_s", "aot_b", "aot_l", "r50_aot_l", "aot_t_r18", "stm", "stm_r18", "sitvos", "sitvos_r18"]
    voszoo = ["mga", "mga_r18", "munet", "munet_r18", "batman", "batman_light"]
    for name in official:
        assert compose_model_config(name).protocol == "official", name
    for name in voszoo:
        assert compose_model_config(name).protocol == "voszoo", name


def test_eval_protocol_override_reaches_the_session(tmp_path) -> None:
    from voszoo.cli_common import session_protocol
    from voszoo.instantiate import ConfigError

    cfg = compose_model_config("mga_r18")
    torch.manual_seed(0)
    model = build_model(random_weights_config("mga_r18"))
    assert session_protocol(model, cfg, protocol=None, short_side=None) == "voszoo"
    with pytest.raises(ConfigError, match="use protocol=voszoo"):
        session_protocol(model, cfg, protocol="official", short_side=None)
    stm_cfg = compose_model_config("stm_r18")
    assert session_protocol(_Official("stm"), stm_cfg, protocol=None, short_side=None) == "official"
    assert session_protocol(_Official("stm"), stm_cfg, protocol=None, short_side=64) == "voszoo"
    assert session_protocol(_Official("stm"), stm_cfg, protocol="voszoo", short_side=None) == "voszoo"


# -- sessions end to end --------------------------------------------------------------------------------------------
def _video(frames: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(frames)]
    labels = np.zeros((60, 90), np.uint8)
    labels[10:30, 20:50] = 1
    labels[35:55, 50:80] = 2
    return images, labels


@pytest.mark.parametrize(("preset", "model_size"), [("aot_t", (65, 97)), ("stm_r18", (64, 96))])
def test_session_with_the_official_protocol_runs_end_to_end(preset: str, model_size: tuple[int, int]) -> None:
    cfg = random_weights_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg)
    memorised = []
    memorize = model.memorize

    def spy(memory, feats, probs, frame_index):
        memorised.append(probs.detach().clone())
        return memorize(memory, feats, probs, frame_index)

    model.memorize = spy
    session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg), protocol="official")
    images, labels = _video()
    results = [session.step(image, labels if t == 0 else None) for t, image in enumerate(images)]
    assert session.transform.model_size == model_size
    assert all(r.labels.shape == (60, 90) and r.probs.shape == (3, 60, 90) for r in results)
    assert np.array_equal(results[0].labels, labels)
    assert all(p.shape == (1, 3, *model_size) for p in memorised)
    assert len(memorised) == len(images)
    if preset == "stm_r18":  # 60 -> 64: 2 + 2 rows; 90 -> 96: 3 + 3 columns, zero in every channel
        for probs in memorised:
            assert torch.all(probs[..., :2, :] == 0) and torch.all(probs[..., -2:, :] == 0)
            assert torch.all(probs[..., :3] == 0) and torch.all(probs[..., -3:] == 0)
    else:  # a one-hot label map at 65x97
        for probs in memorised:
            assert torch.all(probs.sum(1) == 1) and set(probs.unique().tolist()) <= {0.0, 1.0}


def test_official_session_uses_the_official_geometry_for_a_tiny_model() -> None:
    session = InferenceSession(_Official("stm", pool=1), policy_factory=FirstAndPrevious, protocol="official")
    images, labels = _video(2)
    session.step(images[0], labels)
    result = session.step(images[1])
    assert session.transform.padding == (3, 3, 2, 2)  # 90 -> 96: 3 + 3 columns; 60 -> 64: 2 + 2 rows
    assert result.labels.shape == (60, 90)
