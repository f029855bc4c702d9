"""Every AOT preset against the official model: the official key list (names, shapes, parameter counts 5.73M,
7.00M, 8.26M, 8.26M, 14.91M counted independently from the list), strict conversion of a synthetic official state
dict, voszoo-eval's official-weights path, and a training step on a tiny 3-frame clip."""

import ast
import math
from pathlib import Path

import pytest
import torch
from clips_util import tiny_clip
from omegaconf import OmegaConf

from voszoo.memory import EveryN
from voszoo.models.convert import CheckpointMismatchError
from voszoo.models.convert_aot import is_official_aot_state, load_official_aot
from voszoo.models.registry import build_memory_policy, compose_model_config, create_model

KEYS_FILE = Path(__file__).parent / "data" / "aot_state_dict_keys.txt"
# preset -> (section of the official key list, parameters in millions as the AOT model zoo reports them)
PRESETS = {
    "aot_t": ("aott", 5.73),
    "aot_s": ("aots", 7.00),
    "aot_b": ("aotb", 8.26),
    "aot_l": ("aotl", 8.26),
    "r50_aot_l": ("r50_aotl", 14.91),
}


def official_sections():
    """{section: (header fields, [(key, shape), ...])} of the official key list."""
    sections, current = {}, None
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#####"):
            _, section, _, *fields = line.split()
            current = sections[section] = (dict(f.split("=") for f in fields), [])
        elif line.strip():
            key, shape = line.split("\t")
            current[1].append((key, tuple(ast.literal_eval(shape))))
    return sections


SECTIONS = official_sections()


def official_parameter_count(rows):
    """Parameters of the official model: every tensor except the frozen batch norms' (weight, bias and statistics
    of modules with a running_mean are buffers of the official FrozenBatchNorm2d)."""
    frozen = {key.rsplit(".", 1)[0] for key, _ in rows if key.endswith(".running_mean")}
    return sum(math.prod(shape) for key, shape in rows if key.rsplit(".", 1)[0] not in frozen)


def synthetic_official(section, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=g) for key, shape in SECTIONS[section][1]}


@pytest.fixture(scope="module")
def models():
    """One fresh model per preset, shared in file order: key checks, a training step, then conversions."""
    torch.manual_seed(0)
    return {name: create_model(name) for name in PRESETS}


# -- presets vs the official model -----------------------------------------------------------------------------------
def test_key_list_headers_and_counts_agree():
    for _, (section, millions) in PRESETS.items():
        header, rows = SECTIONS[section]
        assert int(header["keys"]) == len(rows)
        assert header["params"] == f"{millions:.2f}M"
        assert round(official_parameter_count(rows) / 1e6, 2) == millions


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_matches_the_official_model_key_for_key(models, preset):
    section, millions = PRESETS[preset]
    model = models[preset]
    rows = SECTIONS[section][1]
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert own == dict(rows)
    count = sum(p.numel() for p in model.parameters())
    assert count == official_parameter_count(rows)
    assert round(count / 1e6, 2) == millions
    assert model.max_objects == 10 and model.multi_object == "joint" and model.stride == 16


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_on_a_three_frame_clip(models, preset):
    model = models[preset].train()  # fresh: this runs before the conversion tests load synthetic weights
    out = model(tiny_clip())
    assert out["logits"].shape == (2, 2, 3, 64, 64)
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_ce", "loss_jaccard"))
    # sample 1 has one object: its second object channel is out of the softmax (Eq. 5, official -1e10)
    assert (out["logits"][1, :, 2] == -1e10).all() and (out["logits"][0, :, 2] > -1e9).all()
    out["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum()] == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    # frozen: the stem and first stage of the encoder (App. A.1.2) and the unused mask token
    assert "LSTT.mask_token" in frozen and all(n.startswith(("encoder.", "LSTT.mask_token")) for n in frozen)
    assert len(frozen) > 1


@pytest.mark.parametrize("preset", list(PRESETS))
def test_official_state_dict_converts_strictly(models, preset):
    model = models[preset]
    official = synthetic_official(PRESETS[preset][0])
    wrapped = {"state_dict": {f"module.{k}": v for k, v in official.items()}, "step": 100000}
    assert is_official_aot_state(wrapped)
    report = load_official_aot(model, wrapped)
    assert report.ok and report.stripped_prefix == "module."
    assert (report.missing, report.unexpected, report.unused, report.mismatched) == ([], [], [], [])
    assert len(report.mapped) == len(official)
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in official.items())


def test_converter_names_every_problem_and_never_drops_silently(models):
    model = models["aot_t"]
    before = model.patch_wise_id_bank.weight.detach().clone()
    bad = synthetic_official("aott", seed=1)
    bad["LSTT.extra_gate.weight"] = torch.zeros(3)
    del bad["decoder.conv_out.bias"]
    with pytest.raises(CheckpointMismatchError) as error:
        load_official_aot(model, bad)
    assert "not used by the model: LSTT.extra_gate.weight" in str(error.value)
    assert "missing (not in checkpoint): decoder.conv_out.bias" in str(error.value)
    assert torch.equal(model.patch_wise_id_bank.weight, before)  # strict failure leaves the model untouched
    deeper = synthetic_official("aotb", seed=2)  # AOT-B weights into AOT-T
    with pytest.raises(CheckpointMismatchError, match="LSTT.layers.1.linear_Q.weight") as error:
        load_official_aot(model, deeper)
    assert "mis-shaped: decoder.conv_in.conv.weight model [256, 512, 1, 1] vs checkpoint [256, 1024, 1, 1]" in str(
        error.value
    )
    with pytest.warns(UserWarning, match="unexpected|not used"):
        report = load_official_aot(model, {**synthetic_official("aott"), "optimizer_lr": torch.zeros(1)}, strict=False)
    assert report.unexpected == ["optimizer_lr"]
    with pytest.raises(CheckpointMismatchError, match="not an official AOT checkpoint"):
        load_official_aot(model, {"module.KV_M_r4.Key.weight": torch.zeros(1)})


def test_voszoo_eval_loads_official_aot_weights(models, tmp_path):
    from voszoo.evaluate import load_weights

    model = models["aot_l"]
    official = synthetic_official("aotl", seed=3)
    path = tmp_path / "AOTL_PRE_YTB_DAV.pth"
    torch.save({"state_dict": official}, path)
    cfg = OmegaConf.create({"checkpoint": str(path), "model": compose_model_config("aot_l"), "use_ema": False})
    assert load_weights(model, cfg) == f"{path} (official AOT weights)"
    assert torch.equal(model.state_dict()["LSTT.layers.2.linear2.weight"], official["LSTT.layers.2.linear2.weight"])


def test_memory_policies_of_the_presets():
    cfg_t, cfg_l = compose_model_config("aot_t"), compose_model_config("aot_l")
    policy_t, policy_l = build_memory_policy(cfg_t), build_memory_policy(cfg_l)
    assert isinstance(policy_t, EveryN) and policy_t.n == 9999
    assert isinstance(policy_l, EveryN) and policy_l.n == 5
    assert (cfg_t.train_long_term_gap, cfg_l.train_long_term_gap) == (9999, 2)
    r50 = compose_model_config("r50_aot_l")
    assert r50.encoder.depth == 50 and r50.embed_scale == "s16" and r50.memory.n == 5
