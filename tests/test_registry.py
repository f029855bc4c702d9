"""Registration is the config tree: listing, building, errors, and no Hydra state left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import voszoo
from voszoo._paths import conf_dir
from voszoo.hydra_compose import compose_config, override_value
from voszoo.memory import EveryN, FixedCount
from voszoo.models.registry import build_memory_policy, compose_model_config


def test_lists_read_the_config_tree() -> None:
    assert {"stm", "stm_r18"} <= set(voszoo.list_models())
    assert set(voszoo.list_models()) == {p.stem for p in (conf_dir() / "model").glob("*.yaml")}
    assert {"every_n", "fixed_count", "first_and_previous"} <= set(voszoo.list_components("memory"))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid models: .*stm"):
        voszoo.create_model("stn")
    with pytest.raises(ValueError, match="valid slots: .*memory"):
        voszoo.list_components("matcherz")


def test_overrides_swap_components_and_values() -> None:
    cfg = compose_model_config("stm_r18", ["memory=fixed_count", "memory.count=5"])
    policy = build_memory_policy(cfg)
    assert isinstance(policy, FixedCount) and policy.count == 5
    assert isinstance(build_memory_policy(compose_model_config("stm")), EveryN)
    model = voszoo.create_model("stm_r18", **{"decoder.hidden_channels": 32})
    assert model.decoder is not None and sum(p.numel() for p in model.parameters()) < 9_336_578


@pytest.mark.parametrize(
    "value", [None, True, 3, 1e-4, "cuda:0", "null", "1", "a,b", "it's", "", [1, "a", None], {"a": 1, "b": [1, 2]}]
)
def test_override_value_reads_back_as_the_value(value: object) -> None:
    # create_model(**values) and voszoo-eval's "rerun with:" hint both spell values this way; Hydra must read the
    # same value back (a string that looks like a number, null or a sweep stays a string)
    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}")
    assert not parsed.is_sweep_override() and parsed.value() == value


def test_create_model_leaves_a_callers_hydra_untouched() -> None:
    assert not GlobalHydra.instance().is_initialized()
    voszoo.create_model("stm_r18")
    assert not GlobalHydra.instance().is_initialized()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        mine = GlobalHydra.instance().hydra
        voszoo.create_model("stm_r18")
        assert GlobalHydra.instance().hydra is mine
        assert compose(config_name="eval").model.name == "stm"


def test_importing_voszoo_is_light() -> None:
    code = "import sys, voszoo; print(any(m.startswith(('torch', 'hydra', 'voszoo.models')) for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_quick_experiment_only_changes_what_it_says() -> None:
    base = compose_config("train", ["model=stm_r18", "trainer=quick"])
    quick = compose_config("train", ["experiment=stm_quick"])
    for encoder in ("query_encoder", "memory_encoder"):  # the architecture is the preset's; only the init differs
        assert quick.model[encoder].weights == "toyvos" and base.model[encoder].weights is None
        base.model[encoder].weights = "toyvos"
    assert quick.model.tie_initial_weights is True  # an init choice of the constructor, not another architecture
    OmegaConf.set_struct(base.model, False)
    base.model.tie_initial_weights = True
    assert quick.model == base.model
    assert (quick.optim.lr, quick.optim.encoder_lr_mult, quick.trainer.max_steps) == (3e-4, 0.1, 400)
    assert quick.data.train_source == "stream" and base.data.train_source == "folder"
    assert list(quick.data.train.transform.size) == [96, 96] and quick.data.eval == base.data.eval
