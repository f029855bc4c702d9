"""The paper ablations of conf/experiment/ablation_*.yaml: every row of every table composes into a training config
whose model builds, and each row changes what its name says (against the row-free baseline of the same recipe)."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig, OmegaConf

from voszoo._paths import conf_dir
from voszoo.hydra_compose import compose_config
from voszoo.models.registry import build_model

ABLATIONS = sorted(p.stem for p in (conf_dir() / "experiment").glob("ablation_*.yaml"))


def compose_train(overrides: list[str], *, hydra_node: bool = False) -> DictConfig:
    return compose_config("train", overrides, return_hydra_config=hydra_node)


def sweep_rows(experiment: str) -> tuple[str, list[str]]:
    params = compose_train([f"experiment={experiment}"], hydra_node=True).hydra.sweeper.params
    ((key, rows),) = params.items()
    return key, rows.split(",")


def test_every_table_is_an_experiment_over_every_row_file() -> None:
    assert ABLATIONS == [
        "ablation_aot_table3",
        "ablation_batman_table3",
        "ablation_batman_table4",
        "ablation_mga_table2",
        "ablation_munet_table4",
        "ablation_sitvos_table3",
        "ablation_sitvos_table4",
    ]
    for experiment in ABLATIONS:
        key, rows = sweep_rows(experiment)
        group = key.removeprefix("+")
        assert group == "ablation/" + experiment.removeprefix("ablation_")
        assert sorted(rows) == sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", ABLATIONS)
def test_every_row_composes_and_builds(experiment: str) -> None:
    key, rows = sweep_rows(experiment)
    for row in rows:
        cfg = compose_train([f"experiment={experiment}", f"{key}={row}"])
        assert cfg.trainer.max_steps > 0 and cfg.data.name == "toyvos"
        if not experiment.startswith("ablation_batman"):  # RAFT + two encoders: built by the rows test below
            build_model(cfg.model)


def model_of(experiment: str, row: str) -> dict:
    key, _ = sweep_rows(experiment)
    return OmegaConf.to_container(compose_train([f"experiment={experiment}", f"{key}={row}"]), resolve=True)


def test_rows_change_what_they_say() -> None:
    aot = {row: model_of("ablation_aot_table3", row)["model"] for row in ("baseline", "identities_5", "layers_3")}
    assert aot["baseline"]["identity"]["num_identities"] == 10 and aot["baseline"]["lstt"]["num_layers"] == 1
    assert aot["identities_5"]["identity"]["num_identities"] == 5
    assert build_model(aot["identities_5"]).decoder.out_channels == 6  # M + 1, derived from the bank
    assert aot["layers_3"]["lstt"]["num_layers"] == 3 and aot["layers_3"]["encoder"]["weights"] == "toyvos"
    munet = {row: model_of("ablation_munet_table4", row) for row in ("a_baseline_ce", "f_addition")}
    assert munet["a_baseline_ce"]["model"].get("motion") is None
    assert munet["f_addition"]["model"]["motion"]["fusion"]["_target_"].endswith("AdditiveFusion")
    msam = model_of("ablation_munet_table4", "e_full")["model"]["motion"]["fusion"]["_target_"]
    assert msam.endswith("MotionSpatialAttention")
    mga = model_of("ablation_mga_table2", "motion_guided_sequence")
    assert mga["trainer"]["truncate_frames"] == 1 and mga["data"]["train"]["num_frames"] == 12
    assert mga["model"].get("prior") is not None
    assert model_of("ablation_mga_table2", "sequence")["model"].get("prior") is None
    assert model_of("ablation_sitvos_table3", "no_fim")["model"]["transformer"]["fim"] is False
    assert model_of("ablation_batman_table4", "raw_flow")["model"]["calibration"] is None
    spatial = model_of("ablation_batman_table3", "spatial_local")["model"]["transformer"]["attention"]
    assert spatial == "spatial_local"
