"""Every ``conf/experiment/*_quick.yaml`` is the shared CPU budget (experiment=cpu_quick_base) on its preset plus the
differences it declares, so the rows of the ToyVOS board differ only in the method."""

from typing import Any

import pytest
from omegaconf import OmegaConf

from voszoo._paths import conf_dir
from voszoo.hydra_compose import compose_config

QUICK = sorted(p.stem for p in (conf_dir() / "experiment").glob("*_quick.yaml"))
BUDGET = ("data", "schedule", "optim", "trainer")

# what each recipe changes of the shared budget (the reasons are in its YAML)
DIFFERS = {
    "aot_quick": {"optim.lr", "optim.weight_decay"},
    "batman_quick": {"optim.lr", "optim.weight_decay", "trainer.ema_decay"},
    "munet_quick": {"trainer.max_steps", "data.train.max_gap"},
}


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}.{key}" if prefix else key).items()}


def test_there_are_quick_experiments_and_the_base_is_not_one() -> None:
    assert {"stm_quick", "aot_quick", "batman_quick", "mga_quick", "munet_quick", "sitvos_quick"} <= set(QUICK)
    assert "cpu_quick_base" not in QUICK  # the leaderboard and bench_train_throughput train every *_quick file


def test_the_base_is_a_cpu_budget() -> None:
    base = compose_config("train", ["experiment=cpu_quick_base"])
    assert (base.trainer.device, base.trainer.batch_size, base.trainer.max_steps) == ("cpu", 4, 400)
    assert base.data.train_source == "stream" and list(base.data.train.transform.size) == [96, 96]


@pytest.mark.parametrize("name", QUICK)
def test_quick_experiment_is_the_shared_budget_plus_its_declared_differences(name: str) -> None:
    quick = compose_config("train", [f"experiment={name}"])
    base = compose_config("train", ["experiment=cpu_quick_base", f"model={quick.model.name}"])
    got, shared = ({key: OmegaConf.to_container(cfg[key], resolve=True) for key in BUDGET} for cfg in (quick, base))
    got, shared = leaves(got), leaves(shared)
    assert got.keys() == shared.keys()
    assert {key for key in got if got[key] != shared[key]} == DIFFERS.get(name, set())
