"""voszoo-train's resume UX: ``resume=auto`` finds the latest interrupted run of the same config beside the new
Hydra run dir, and the exact resume command is spelled out."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from voszoo.engine.trainer import RUN_LOCK_NAME
from voszoo.fileio import FileLock
from voszoo.hydra_compose import compose_config
from voszoo.train import find_interrupted_run, resume_command

OVERRIDES = ["model=stm_r18", "trainer=quick", "trainer.max_steps=7"]


@pytest.fixture(scope="module")
def cfg() -> DictConfig:
    return compose_config("train", OVERRIDES)


def earlier_run(parent: Path, name: str, cfg: DictConfig, *, step: int = 2, finished: bool = False) -> Path:
    """A run folder as voszoo-train leaves it: .hydra/config.yaml, a checkpoint (not read here), metrics.json once
    finished."""
    run = parent / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / f"checkpoint_{step:08d}.pt").write_bytes(b"")
    if finished:
        (run / "metrics.json").write_text("{}")
    return run


def test_resume_auto_finds_the_latest_interrupted_run_of_the_same_config(tmp_path: Path, cfg: DictConfig) -> None:
    """Re-running the quickstart command used to start from step 0 in a new folder."""
    new = tmp_path / "2025-01-03_10-00-00"
    (new / ".hydra").mkdir(parents=True)
    assert find_interrupted_run(cfg, new) is None  # nothing to continue

    older = earlier_run(tmp_path, "2025-01-01_10-00-00", cfg)
    latest = earlier_run(tmp_path, "2025-01-02_10-00-00", cfg)
    os.utime(latest / "checkpoint_00000002.pt", (2e9, 2e9))  # its checkpoint is the newest
    earlier_run(tmp_path, "2025-01-02_11-00-00", cfg, finished=True)  # completed: not resumed
    other = compose_config("train", [*OVERRIDES, "optim.lr=0.5"])
    os.utime(earlier_run(tmp_path, "2025-01-02_12-00-00", other) / "checkpoint_00000002.pt", (3e9, 3e9))
    assert find_interrupted_run(cfg, new) == latest
    assert find_interrupted_run(compose_config("train", [*OVERRIDES, "resume=auto"]), new) == latest  # not a change

    with FileLock(latest / RUN_LOCK_NAME, what="run"):  # still training: leave it alone
        assert find_interrupted_run(cfg, new) == older
    (new / "last.pt").write_bytes(b"")
    assert find_interrupted_run(cfg, new) is None  # a run dir with a checkpoint resumes itself


def test_the_resume_command_repeats_the_overrides_and_names_the_run_dir(tmp_path: Path) -> None:
    command = resume_command(tmp_path / "run a", overrides=[*OVERRIDES, "resume=false", "optim.lr=1e-4"])
    assert shlex.split(command) == [
        "voszoo-train",
        *OVERRIDES,
        "optim.lr=1e-4",
        f"hydra.run.dir={(tmp_path / 'run a').resolve()}",
    ]
