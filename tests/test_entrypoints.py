"""The Hydra entry points end to end on a tiny ToyVOS: train -> checkpoint -> eval -> scores, the leaderboard,
a multirun sweep, and the errors a user sees for a wrong checkpoint or an unknown component."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

TINY_DATA = ["data.generate.videos=5", "data.generate.frames=5", "data.generate.size=[64,64]"]
QUICK = [
    "model=stm_r18",
    "trainer=quick",
    "trainer.max_steps=2",
    "trainer.batch_size=1",
    "trainer.num_workers=0",
    "trainer.checkpoint_every=1",
    "schedule.warmup_steps=1",
    "data.train.transform.size=[64,64]",
    "data.train.max_objects=2",
]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step stm_r18 run on a 5-video ToyVOS; returns (work dir, run dir)."""
    work = tmp_path_factory.mktemp("entry")
    run_dir = work / "run"
    done = run("voszoo.train", *QUICK, *TINY_DATA, f"data.root={work / 'toy'}", f"hydra.run.dir={run_dir}", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, run_dir


def test_train_writes_checkpoint_and_metrics(trained: tuple[Path, Path]) -> None:
    _, run_dir = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "stm_r18" and metrics["steps"] == 2
    assert 0.0 <= metrics["J&F"] <= 1.0 and metrics["J&F"] == pytest.approx((metrics["J"] + metrics["F"]) / 2)
    assert Path(metrics["checkpoint"]).is_file()
    assert (run_dir / "eval_final" / "global_results-val.csv").is_file()
    assert (run_dir / "eval_final" / "predictions" / "toy_val_000" / "00004.png").is_file()


def test_eval_reproduces_the_training_run_scores(trained: tuple[Path, Path]) -> None:
    work, run_dir = trained
    out = work / "eval"
    done = run(
        "voszoo.evaluate",
        "model=stm_r18",
        *TINY_DATA,
        f"data.root={work / 'toy'}",
        f"checkpoint={run_dir / 'last.pt'}",
        f"hydra.run.dir={out}",
        cwd=work,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((out / "metrics.json").read_text())
    trained_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert scored["J&F"] == pytest.approx(trained_metrics["J&F"], abs=1e-9)
    assert "J&F-Mean" in done.stdout
    # stderr is a pipe, as in a batch job: no progress bar, but the log says how far it got, video by video
    log = (out / "evaluate.log").read_text()
    assert re.search(r"predict stm_r18: video 1/\d+ toy_val_000: 5 frames, [\d.]+ FPS", log)


def test_eval_rejects_a_checkpoint_of_another_model(trained: tuple[Path, Path]) -> None:
    work, run_dir = trained
    common = [*TINY_DATA, f"data.root={work / 'toy'}", f"hydra.run.dir={work / 'bad'}"]
    done = run("voszoo.evaluate", "model=stm", f"checkpoint={run_dir / 'last.pt'}", *common, cwd=work)
    assert done.returncode != 0
    assert "stm_r18" in done.stderr and "last.pt" in done.stderr
    corrupt = work / "corrupt.pt"
    corrupt.write_bytes((run_dir / "last.pt").read_bytes()[:1000])
    done = run("voszoo.evaluate", "model=stm_r18", f"checkpoint={corrupt}", *common, cwd=work)
    assert done.returncode != 0 and "corrupt.pt" in done.stderr


def test_eval_error_names_the_model_settings_the_checkpoint_was_trained_with(trained: tuple[Path, Path]) -> None:
    from voszoo.engine.checkpoint import CheckpointError
    from voszoo.evaluate import load_weights
    from voszoo.hydra_compose import compose_config
    from voszoo.models.registry import build_model

    _, run_dir = trained
    overrides = ["model=stm_r18", "model.decoder.hidden_channels=96", f"checkpoint={run_dir / 'last.pt'}"]
    cfg = compose_config("eval", overrides)
    with pytest.raises(CheckpointError, match=r"rerun with: model\.decoder\.hidden_channels=128$"):
        load_weights(build_model(cfg.model), cfg)


def test_unknown_component_lists_the_valid_ones(tmp_path: Path) -> None:
    done = run("voszoo.train", "model/memory=nope", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert done.returncode != 0
    assert "nope" in done.stderr and "every_n" in done.stderr


def test_eval_protocol_errors_name_the_key_before_predicting(trained: tuple[Path, Path]) -> None:
    work, _ = trained
    common = [*TINY_DATA, f"data.root={work / 'toy'}"]
    done = run(
        "voszoo.evaluate", "model=stm_r18", "protocol=offical", *common, f"hydra.run.dir={work / 'p1'}", cwd=work
    )
    assert done.returncode == 1
    assert "protocol: unknown protocol 'offical'; valid protocols: official, voszoo" in done.stderr
    done = run(
        "voszoo.evaluate", "model=mga_r18", "protocol=official", *common, f"hydra.run.dir={work / 'p2'}", cwd=work
    )
    assert done.returncode == 1 and "protocol=official: model 'mga_r18' (MGA)" in done.stderr
    assert "use protocol=voszoo" in done.stderr and not (work / "p2" / "predictions").exists()


def test_multirun_sweep_writes_one_metrics_file_per_job(trained: tuple[Path, Path]) -> None:
    work, _ = trained
    sweep = work / "sweep"
    done = run(
        "voszoo.train",
        "-m",
        *QUICK,
        "trainer.max_steps=1",
        "optim.lr=1e-4,3e-4",
        "evaluate=false",
        *TINY_DATA,
        f"data.root={work / 'toy'}",
        f"hydra.sweep.dir={sweep}",
        cwd=work,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    lrs = sorted(OmegaConf.load(sweep / j / ".hydra" / "config.yaml").optim.lr for j in jobs)
    assert lrs == [1e-4, 3e-4]


def test_bench_prints_the_board_and_reports_failed_entries(trained: tuple[Path, Path]) -> None:
    work, _ = trained
    out = work / "bench"
    entries = "entries=[{name: copy_first_frame, baseline: copy_first_frame}, {name: broken, baseline: nope}]"
    done = run("voszoo.benchmark", entries, *TINY_DATA, f"data.root={work / 'toy'}", f"hydra.run.dir={out}", cwd=work)
    assert done.returncode == 1  # a failed row makes the run fail, after the others finished
    assert "| copy_first_frame | ok |" in done.stdout
    assert "| broken | failed: entry 'broken': unknown baseline 'nope'" in done.stdout
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert rows[0]["status"] == "ok" and 0.0 <= rows[0]["J&F"] <= 1.0
    assert (out / "leaderboard.md").read_text().count("\n|") == 4  # header, rule, two rows


def test_bench_scores_a_given_checkpoint_and_profiles_cost_only_presets(trained: tuple[Path, Path]) -> None:
    work, run_dir = trained
    out = work / "bench_kinds"
    entries = (
        f"entries=[{{name: given, evaluate: ['model=stm_r18', 'checkpoint={run_dir / 'last.pt'}']}},"
        " {name: costs, cost_only: stm_r18, overrides: ['decoder.hidden_channels=32']},"
        " {name: trained_here, train: [" + ", ".join(f"'{o}'" for o in QUICK) + "]},"
        " {name: no_weights, evaluate: ['model=stm_r18']},"
        " {name: two_kinds, cost_only: stm_r18, baseline: copy_first_frame}]"
    )
    tiny_profile = ["profile.size=[64,64]", "profile.frames=2", "profile.device=cpu", "plot=false"]
    done = run(
        "voszoo.benchmark",
        entries,
        *tiny_profile,
        *TINY_DATA,
        f"data.root={work / 'toy'}",
        f"hydra.run.dir={out}",
        cwd=work,
    )
    assert done.returncode == 1, done.stderr[-3000:]  # the two bad entries fail, after the others finished
    rows = {row["entry"]: row for row in json.loads((out / "leaderboard.json").read_text())["rows"]}
    # the given checkpoint is scored exactly as its training run scored it, and profiled
    trained_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert rows["given"]["status"] == "ok" and rows["given"]["train data"] == "checkpoint"
    assert rows["given"]["J&F"] == pytest.approx(trained_metrics["J&F"], abs=1e-9)
    assert rows["given"]["params"] > 0 and rows["given"]["fps"] > 0
    # a training entry on the same tiny ToyVOS (the child gets the board's generation parameters) trains the same run
    assert rows["trained_here"]["status"] == "ok" and rows["trained_here"]["train steps"] == 2
    assert rows["trained_here"]["J&F"] == pytest.approx(trained_metrics["J&F"], abs=1e-9)
    # cost only: the preset with its overrides is profiled, no score is invented
    assert rows["costs"]["status"] == "ok (cost only)" and rows["costs"]["J&F"] is None
    assert 0 < rows["costs"]["params"] < rows["given"]["params"]  # the narrower decoder has fewer parameters
    assert "needs a checkpoint=<path>" in rows["no_weights"]["status"]
    assert (
        "needs exactly one of baseline, train, evaluate, cost_only (found: baseline, cost_only)"
        in (rows["two_kinds"]["status"])
    )
