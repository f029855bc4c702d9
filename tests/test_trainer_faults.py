"""The trainer under faults: a second writer in the run directory, SIGTERM (one process, a process group with a
DataLoader worker, two gloo ranks), a crash between writing a checkpoint and linking last.pt, and leftovers of a
killed writer. The trainer set-up and the 6-step reference come from tests/test_trainer.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_trainer import assert_identical, make_trainer, snapshot, straight  # noqa: F401 - straight: fixture

import voszoo.engine.checkpoint as ckpt
from voszoo.engine import Hook, Trainer, TrainingTerminated, read_checkpoint
from voszoo.fileio import LockHeldError

TESTS = Path(__file__).parent


def child_env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ concurrent writers
def test_a_second_training_in_the_same_run_dir_fails_naming_the_holder(tmp_path: Path) -> None:
    """Run B used to 'resume' from A's in-progress last.pt and both wrote metrics.jsonl, last.pt, metrics.json."""
    errors: list[str] = []

    class StartAnotherRun(Hook):
        def after_step(self, trainer: Trainer, metrics: dict) -> None:
            if trainer.step == 2:
                with pytest.raises(LockHeldError) as caught:
                    make_trainer(tmp_path, checkpoint_every=1).fit()
                errors.append(str(caught.value))

    first = make_trainer(tmp_path, max_steps=3, checkpoint_every=1, log_every=1, hooks=[StartAnotherRun()])
    first.fit()
    assert len(errors) == 1
    assert f"run directory {tmp_path} is in use by process {os.getpid()} on host" in errors[0]
    assert "wait for that run to end, stop it, or train in another directory" in errors[0]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and read_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert not (tmp_path / ".voszoo-run.lock").exists()  # released at the end
    make_trainer(tmp_path, max_steps=3).fit()  # and free for the next run


# ------------------------------------------------------------------------------------------------- crash leftovers
def crash_linking_last_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after checkpoint_<step>.pt is renamed into place, before last.pt points at it."""
    point_last = ckpt._point_last

    def dying(directory: Path, target: Path) -> None:
        if target.name == f"checkpoint_{step:08d}.pt":
            raise KeyboardInterrupt  # stands for kill -9: nothing after this line runs
        point_last(directory, target)

    monkeypatch.setattr(ckpt, "_point_last", dying)


@pytest.mark.parametrize("crash_step", [2, 4], ids=["first_checkpoint", "later_checkpoint"])
def test_resume_takes_the_newest_complete_checkpoint_even_if_last_pt_misses_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    straight: tuple[Path, dict[str, torch.Tensor]],  # noqa: F811
    crash_step: int,
) -> None:
    """A crash at the first checkpoint used to restart silently from step 0; a later one resumed an older step."""
    crash_linking_last_at(crash_step, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, checkpoint_every=2).fit()
    monkeypatch.undo()
    assert (tmp_path / f"checkpoint_{crash_step:08d}.pt").is_file()
    resumed = make_trainer(tmp_path, init_seed=11, checkpoint_every=2)
    with caplog.at_level(logging.WARNING, logger="voszoo.engine.trainer"):
        resumed.fit()
    said = f"resuming from {tmp_path / f'checkpoint_{crash_step:08d}.pt'} (step {crash_step})"
    assert said in caplog.text
    assert_identical(snapshot(resumed), straight[1])


def test_temporary_files_of_a_killed_writer_are_removed_at_start(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=2).fit()
    leftovers = [".checkpoint_00000003.pt.a1b2c3.tmp", ".last.pt.123.deadbeef.tmp", ".metrics.jsonl.99.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / ".notes.tmp").write_text("not ours")
    make_trainer(tmp_path, max_steps=3).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".notes.tmp",
        "checkpoint_00000003.pt",
        "last.pt",
        "metrics.jsonl",
    ]


# ---------------------------------------------------------------------------------------------------------- SIGTERM
def test_sigterm_saves_the_step_raises_143_and_restores_the_handler(
    tmp_path: Path,
    straight: tuple[Path, dict[str, torch.Tensor]],  # noqa: F811
) -> None:
    """In-process: before the fix the handler below ran (SIGTERM's default would have killed the run unsaved)."""

    def unhandled(signum: int, frame: object) -> None:
        pytest.fail("SIGTERM reached the previous handler: the trainer did not take it")

    class Preempt(Hook):
        def after_step(self, trainer: Trainer, metrics: dict) -> None:
            if trainer.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(TrainingTerminated) as stopped:
            make_trainer(tmp_path, hooks=[Preempt()]).fit()
        assert signal.getsignal(signal.SIGTERM) is unhandled  # fit gives SIGTERM back when it ends
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143 and stopped.value.step == 2
    assert stopped.value.checkpoint == tmp_path / "checkpoint_00000002.pt"
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 2
    resumed = make_trainer(tmp_path, init_seed=5)
    resumed.fit()
    assert_identical(snapshot(resumed), straight[1])


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from test_trainer import make_trainer
    from voszoo.engine import Hook

    class Preempt(Hook):  # the scheduler signals the whole process group: the trainer and its DataLoader worker
        def after_step(self, trainer, metrics):
            if trainer.step == 2:
                os.killpg(0, signal.SIGTERM)

    make_trainer(sys.argv[1], num_workers=1, hooks=[Preempt()]).fit()
    print("fit returned")
    """
)


@pytest.mark.slow
def test_sigterm_to_the_process_group_spares_the_dataloader_worker_and_exits_143(
    tmp_path: Path,
    straight: tuple[Path, dict[str, torch.Tensor]],  # noqa: F811
) -> None:
    """A scheduler signals every process of the job: the DataLoader worker must not die first and fail the run."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(script), str(run)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # its own process group, so that killpg spares pytest
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert "fit returned" not in done.stdout
    assert "SIGTERM received: stopped after step 2 of 6" in done.stderr
    assert "DataLoader worker" not in done.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 2
    resumed = make_trainer(run, init_seed=5)
    resumed.fit()
    assert_identical(snapshot(resumed), straight[1])


RANK = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from trainer_toys import RandomClips, ToyVOS
    from voszoo.engine import Hook, Trainer, TrainingTerminated

    class Preempt(Hook):  # only rank 1 hears the signal, one step before the end
        def after_step(self, trainer, metrics):
            if trainer.step == 2 and trainer.dist.rank == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    trainer = Trainer(
        model=model, data=RandomClips(length=8, void=False), optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        output_dir=sys.argv[1], max_steps=5, batch_size=1, device="cpu", seed=0, freeze_bn=True,
        checkpoint_every=0, log_every=1, progress=False, hooks=[Preempt()],
    )
    try:
        trainer.fit()
    except TrainingTerminated as stop:
        print(f"rank {trainer.dist.rank} stopped at step {stop.step}", flush=True)
        raise
    """
)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    """Two gloo processes (started as torchrun starts them); the flag travels with the loss all-reduce."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29_500 + os.getpid() % 2000)}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "run")],
            env=child_env() | world | {"RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in ranks]
    assert [process.returncode for process in ranks] == [143, 143], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    # rank 1 heard it after step 2's all-reduce: step 3's carries the flag to rank 0
    assert [out.strip() for out, _ in outputs] == ["rank 0 stopped at step 3", "rank 1 stopped at step 3"]
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] == 3 and len(checkpoint["rng"]) == 2  # a collective save: exact resume
