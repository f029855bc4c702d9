"""The sweep launchers of docs/configs_and_sweeps.md compose with voszoo-train's config and instantiate without a
cluster: SLURM through submitit (its job parameters reach the launcher) and local parallel jobs through joblib."""

from __future__ import annotations

from hydra.utils import instantiate

from voszoo.hydra_compose import compose_config


def launcher_config(*overrides: str):
    return compose_config("train", overrides, return_hydra_config=True).hydra.launcher


def test_submitit_slurm_launcher_instantiates_with_the_documented_options() -> None:
    cfg = launcher_config(
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.gpus_per_node=1",
        "hydra.launcher.timeout_min=600",
        "hydra.launcher.partition=gpu",
        "model=aot_s",
    )
    assert cfg._target_.endswith("SlurmLauncher")
    launcher = instantiate(cfg)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert params["gpus_per_node"] == 1 and params["timeout_min"] == 600 and params["partition"] == "gpu"


def test_joblib_launcher_instantiates_with_n_jobs() -> None:
    cfg = launcher_config("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    launcher = instantiate(cfg)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 2
