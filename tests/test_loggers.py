"""The metric loggers (voszoo/engine/loggers.py) with the real wandb (offline) and tensorboard packages: what reaches
each destination, resume, several loggers at once through voszoo-train, and the errors a user meets.

wandb runs in offline mode under tmp dirs (tests/conftest.py points every WANDB_* dir there); an offline run is read
back from its transaction log, ``run-<id>.wandb``.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_toys import RandomClips, ToyVOS
from wandb.proto import wandb_internal_pb2

from voszoo.engine import CsvHook, EvalHook, TensorBoardHook, Trainer, WandbHook, build_optimizer
from voszoo.types import collate_clips


def make_trainer(output_dir: Path, *, max_steps: int, hooks: list[Any], **overrides: Any) -> Trainer:
    """The tiny ToyVOS run of tests/test_trainer.py, one record per step."""
    torch.manual_seed(0)
    model = ToyVOS()
    arguments: dict[str, Any] = dict(
        model=model,
        data=RandomClips(length=4),
        optimizer=build_optimizer(model, lr=0.05),
        output_dir=output_dir,
        max_steps=max_steps,
        checkpoint_every=0,
        log_every=1,
        device="cpu",
        model_name="toy",
        progress=False,
        collate_fn=collate_clips,
        hooks=hooks,
    )
    arguments.update(overrides)
    return Trainer(**arguments)


def fixed_scores(model: torch.nn.Module) -> dict[str, float]:
    return {"J&F": 0.5, "J": 0.4, "F": 0.6}


# -- reading what the packages wrote ------------------------------------------------------------------------------
def wandb_records(run_dir: Path, *, timeout: float = 30.0) -> list[Any]:
    """The records of a finished offline wandb run, once its ``exit`` record is on disk: ``run.finish()`` returns
    before wandb's service process has written everything."""
    deadline = time.monotonic() + timeout
    while True:
        records = _read_transaction_log(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _read_transaction_log(run_dir: Path) -> list[Any]:
    """An offline run's ``run-<id>.wandb``: a LevelDB-style log (7-byte file header; 32 KiB blocks of chunks, each
    ``crc32 | length (2 bytes) | type (1 = full, 2 = first, 3 = middle, 4 = last)``) of serialised
    ``wandb_internal_pb2.Record`` messages."""
    (path,) = run_dir.glob("run-*.wandb")
    raw, block = path.read_bytes(), 32 * 1024
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if pos + 7 + length > len(raw):  # a chunk still being written
            break
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records: list[Any]) -> dict[int, dict[str, Any]]:
    """{step: {key: value}} of the run's history rows."""
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            rows[row["_step"]] = row
    return rows


def wandb_of_kind(records: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, round(event.value, 6)) for event in events.Scalars(tag)]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- tests --------------------------------------------------------------------------------------------------------
def test_wandb_records_config_metrics_final_scores_and_checkpoint_then_resumes_the_same_run(tmp_path: Path) -> None:
    hook = WandbHook(project="voszoo-test", tags=["ci"], close_after_train=False)
    trainer = make_trainer(
        tmp_path, max_steps=2, hooks=[hook, EvalHook(fixed_scores, every=1, at_end=False)], config={"lr": 0.05}
    )
    trainer.fit()
    assert hook.is_open  # left open for the owner's final scores
    trainer.log({"eval/J&F": 0.75})  # what voszoo-train does after fit()
    hook.log_checkpoint(trainer, tmp_path / "last.pt")
    hook.close(success=True)

    run_id = (tmp_path / "wandb_run_id").read_text()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    records = wandb_records(run_dir)
    (run,) = wandb_of_kind(records, "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.project == "voszoo-test" and list(run.tags) == ["ci"] and config["lr"] == 0.05
    history = wandb_history(records)
    assert history[1]["eval/J&F"] == 0.5 and "loss" in history[1]  # periodic evaluation and training metrics
    assert history[2]["eval/J&F"] == 0.75 and "loss" in history[2]  # the final score reaches the run
    (artifact,) = wandb_of_kind(records, "artifact")
    assert artifact.type == "model" and artifact.name == f"checkpoint-{run_id}"
    assert [entry.ref for entry in artifact.manifest.contents] == [(tmp_path / "last.pt").resolve().as_uri()]
    assert [e.exit_code for e in wandb_of_kind(records, "exit")] == [0]

    resumed = make_trainer(tmp_path, max_steps=3, hooks=[WandbHook(project="voszoo-test")])
    resumed.fit()  # closes after training by default
    assert (tmp_path / "wandb_run_id").read_text() == run_id  # the same wandb run goes on
    (second,) = set((tmp_path / "wandb").glob(f"offline-run-*-{run_id}")) - {run_dir}
    assert sorted(wandb_history(wandb_records(second))) == [3]


def test_wandb_and_tensorboard_say_which_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"WandbHook needs the optional dependency wandb: pip install 'voszoo\[wandb"):
        WandbHook()
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"TensorBoardHook needs .* pip install 'voszoo\[tensorboard\]'"):
        TensorBoardHook()
    monkeypatch.delitem(sys.modules, "wandb")  # installed again
    with pytest.raises(ValueError, match="WandbHook: mode must be one of offline, online, disabled, got 'upload'"):
        WandbHook(mode="upload")


def test_tensorboard_and_csv_log_every_record_once_across_a_resume(tmp_path: Path) -> None:
    def hooks() -> list[Any]:
        return [TensorBoardHook(), CsvHook(), EvalHook(fixed_scores, every=2)]

    first = make_trainer(tmp_path, max_steps=4, hooks=hooks(), checkpoint_every=2, keep_checkpoints=2)
    first.fit()
    # an interrupted run resumed from its step-2 checkpoint re-logs steps 3 and 4: each must appear once
    second = make_trainer(tmp_path, max_steps=4, hooks=hooks(), checkpoint_every=2, keep_checkpoints=2)
    second.fit(resume=tmp_path / "checkpoint_00000002.pt")

    assert [step for step, _ in tensorboard_scalars(tmp_path / "tensorboard", "loss")] == [1, 2, 3, 4]
    assert tensorboard_scalars(tmp_path / "tensorboard", "eval/J&F") == [(2, 0.5), (4, 0.5)]
    rows = csv_rows(tmp_path / "metrics.csv")
    assert [row["step"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["eval/J&F"] for row in rows] == ["", "0.5", "", "0.5"]  # a column added by the first evaluation
    assert all(float(row["loss"]) > 0 for row in rows)


def test_train_sends_the_final_scores_to_every_logger(tmp_path: Path) -> None:
    """voszoo-train with logger=[console,wandb,tensorboard,csv]: periodic and final J&F, the config and the
    checkpoint reach each logger; the final score is the one in metrics.json."""
    from voszoo.hydra_compose import compose_config
    from voszoo.train import train

    cfg = compose_config(
        "train",
        [
            "model=stm_r18",
            "trainer=quick",
            "trainer.max_steps=2",
            "trainer.eval_every=1",
            "trainer.num_workers=0",
            "trainer.batch_size=1",
            "schedule.warmup_steps=1",
            "data.train.transform.size=[64,64]",
            "data.train.max_objects=2",
            "data.generate.videos=3",
            "data.generate.frames=4",
            "data.generate.size=[64,64]",
            f"data.root={tmp_path / 'toy'}",
            "eval.max_videos=1",
            "logger=[console,wandb,tensorboard,csv]",
        ],
    )
    out = tmp_path / "run"
    metrics = train(cfg, out)

    final = round(metrics["J&F"], 6)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    history = wandb_history(records)
    assert sorted(history) == [1, 2] and round(history[2]["eval/J&F"], 6) == final
    assert history[2]["eval/fps"] == pytest.approx(metrics["fps"])
    (run,) = wandb_of_kind(records, "run")
    assert any(item.key == "model" for item in run.config.update)
    assert wandb_of_kind(records, "artifact")[0].manifest.contents[0].ref == (out / "last.pt").resolve().as_uri()
    assert tensorboard_scalars(out / "tensorboard", "eval/J&F")[-1] == (2, final)
    last_row = csv_rows(out / "metrics.csv")[-1]
    assert last_row["step"] == "2" and round(float(last_row["eval/J&F"]), 6) == final


def test_a_logger_entry_must_build_a_logger_hook() -> None:
    from omegaconf import OmegaConf

    from voszoo.instantiate import ConfigError
    from voszoo.train import build_loggers

    assert build_loggers(OmegaConf.create({"console": {}})) == []
    with pytest.raises(ConfigError, match="logger.mine built a ConsoleHook, which is not a voszoo LoggerHook"):
        build_loggers(OmegaConf.create({"mine": {"_target_": "voszoo.engine.hooks.ConsoleHook"}}))
