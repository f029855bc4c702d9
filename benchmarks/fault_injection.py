"""Fault injection, end to end: kill -9, SIGTERM, concurrent writers and a full disk against real ``voszoo-train``
and ``voszoo-toyvos`` processes on a tiny ToyVOS, and what each leaves behind.

Every training case runs the same command (stm_r18, ToyVOS of 5 videos x 5 frames at 64x64, batch 1, one DataLoader
worker, ``--steps`` steps, a checkpoint every ``--every``, no evaluation) and is compared with an uninterrupted
reference run of that command: "bit-identical" means every tensor of the final ``last.pt`` (weights and optimizer
state) equals the reference's. "steps lost" counts the optimizer steps that were done and had to be redone.

- ``kill -9``: SIGKILL to the run's process group once it has logged a step past a checkpoint, then the same
  command again (it resumes: ``resume=auto``).
- ``SIGTERM``: as a scheduler preempting the job: SIGTERM to the process group (trainer and DataLoader worker);
  expected exit code 143 and a checkpoint of the step in progress; then the same command again.
- ``SIGTERM torchrun``: two gloo ranks under ``torchrun --standalone``; SIGTERM to the torchrun agent, which passes
  it to both ranks (only with ``--torchrun``: about a minute on 2 cores).
- ``concurrent writer``: a second identical command in the same run dir while the first trains.
- ``disk full``: once a checkpoint exists, the run's file-size limit (``RLIMIT_FSIZE``, set with ``prlimit``) drops
  below a checkpoint's size, so the next checkpoint write fails inside ``write()`` as on a full disk. The kernel
  reports EFBIG ("File too large") rather than ENOSPC; the code path (an OSError in the middle of the temporary
  file) is the same. Then the limit is gone and the same command runs again. This case runs without a DataLoader
  worker (``trainer.num_workers=0``): the worker's shared-memory batches are files too and would hit the limit.
- ``2 x voszoo-toyvos``: two generators with different parameters started together on one folder.

    python benchmarks/fault_injection.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/fault_injection.py --torchrun --json benchmarks/results/fault_injection.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

TOY = ["data.generate.videos=5", "data.generate.frames=5", "data.generate.size=[64,64]"]
TRAIN = [
    "model=stm_r18",
    "trainer=quick",
    "trainer.batch_size=1",
    "trainer.num_workers=1",
    "trainer.log_every=1",
    "schedule.warmup_steps=1",
    "data.train.transform.size=[64,64]",
    "data.train.max_objects=2",
    "evaluate=false",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Runs:
    """Builds and runs the training command of this benchmark in a scratch folder."""

    def __init__(self, work: Path, *, steps: int, every: int) -> None:
        self.work, self.steps, self.every = work, steps, every

    def run_dir(self, case: str) -> Path:
        """``<work>/<case>/run``: one parent per case, so ``resume=auto`` never picks another case's run."""
        return self.work / re.sub(r"\W+", "_", case).strip("_") / "run"

    def args(self, run_dir: Path) -> list[str]:
        return [
            *TRAIN,
            *TOY,
            f"trainer.max_steps={self.steps}",
            f"trainer.checkpoint_every={self.every}",
            f"data.root={self.work / 'toy'}",
            f"hydra.run.dir={run_dir}",
        ]

    def start(self, run_dir: Path, *, launcher: list[str] | None = None, extra: Sequence[str] = ()) -> subprocess.Popen:
        command = (launcher or [sys.executable, "-m", "voszoo.train"]) + self.args(run_dir) + list(extra)
        return subprocess.Popen(
            command,
            cwd=self.work,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: signals reach the run and its workers, not us
        )

    def run(self, run_dir: Path, *, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
        process = self.start(run_dir, extra=extra)
        out, err = process.communicate(timeout=600)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _logged_step(run_dir: Path) -> int:
    """The newest step in metrics.jsonl (0 if none)."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]
    return max(steps, default=0)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, *, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(
                f"the run ended (rc {process.returncode}) before the fault: {process.stderr.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not reach the fault point")
        time.sleep(0.05)


def _state(path: Path) -> dict[str, Any]:
    from voszoo.engine.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    tensors = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
    for index, values in checkpoint["optimizer"]["state"].items():
        tensors.update({f"opt.{index}.{k}": v for k, v in values.items() if hasattr(v, "shape")})
    return {"step": checkpoint["step"], "tensors": tensors}


def _identical(a: Path, b: Path) -> bool:
    import torch

    first, second = _state(a), _state(b)
    same_keys = first["tensors"].keys() == second["tensors"].keys()
    return (
        first["step"] == second["step"]
        and same_keys
        and all(torch.equal(first["tensors"][k], second["tensors"][k]) for k in first["tensors"])
    )


def _checkpoint_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint (read: a half-written one does not count)."""
    from voszoo.engine.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir)
    return int(found[1]["step"]) if found is not None else 0


def _numbered_step(run_dir: Path) -> int:
    """The newest ``checkpoint_<step>.pt`` by name (cheap, for polling)."""
    from voszoo.engine.checkpoint import checkpoint_files

    steps = [int(p.stem.split("_")[1]) for p in checkpoint_files(run_dir) if p.name.startswith("checkpoint_")]
    return max(steps, default=0)


def _last_line(text: str, pattern: str) -> str:
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    return lines[-1].strip() if lines else "(no such line)"


def _interrupt_and_resume(runs: Runs, name: str, reference: Path, *, signum: int) -> dict[str, Any]:
    """Send ``signum`` to a run's process group one step past a checkpoint, then run the same command again."""
    run_dir = runs.run_dir(name)
    process = runs.start(run_dir)
    target = runs.every + 1
    _wait_for(lambda: _logged_step(run_dir) >= target, process)
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=600)
    reached, saved = _logged_step(run_dir), _checkpoint_step(run_dir)
    leftovers = sorted(p.name for p in run_dir.glob(".*.tmp"))
    again = runs.run(run_dir)
    resumed = _last_line(again.stderr, r"resumed from")
    same = again.returncode == 0 and _identical(run_dir / "last.pt", reference)
    return {
        "case": name,
        "rc": process.returncode,
        "outcome": (
            f"rc {process.returncode}; checkpoint at step {saved}; {len(leftovers)} temp file(s) left; rerun rc "
            f"{again.returncode}, {'bit-identical' if same else 'DIFFERENT'}"
        ),
        "steps_lost": max(reached - saved, 0),
        "detail": {"stderr_tail": _last_line(err, r"SIGTERM|Killed|Error"), "resume": resumed},
    }


def _concurrent_writer(runs: Runs, reference: Path) -> dict[str, Any]:
    """Two identical commands started together on one run dir: one trains, the other must fail at once."""
    run_dir = runs.run_dir("concurrent writer")
    processes = [runs.start(run_dir) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    codes = [process.returncode for process in processes]
    winner = codes.index(0) if 0 in codes else None
    loser = None if winner is None else 1 - winner
    message = _last_line(outputs[loser][1], r"is in use by") if loser is not None else "(no loser)"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ok = winner is not None and _identical(run_dir / "last.pt", reference) and len(steps) == len(set(steps))
    named = (
        "names the winner's pid" if winner is not None and f"process {processes[winner].pid} " in message else message
    )
    return {
        "case": "concurrent writer",
        "rc": max(codes),
        "outcome": (
            f"rc {codes}: the second fails at start ({named}); the first "
            f"{'bit-identical, no duplicate records' if ok else 'CORRUPTED'}"
        ),
        "steps_lost": 0,
        "detail": {"message": message},
    }


def _disk_full(runs: Runs, reference: Path) -> dict[str, Any]:
    run_dir = runs.run_dir("disk full")
    # no DataLoader worker: its shared-memory batches are files too and would hit the limit (a full /dev/shm is
    # another failure); the data, hence the weights, do not depend on the number of workers
    serial = ["trainer.num_workers=0"]
    process = runs.start(run_dir, extra=serial)
    _wait_for(lambda: _numbered_step(run_dir) >= runs.every, process)
    limit = 64 * 1024  # bytes per file: metrics lines and logs fit, a checkpoint (MBs) does not
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    out, err = process.communicate(timeout=600)
    reached, saved = _logged_step(run_dir), _checkpoint_step(run_dir)
    last_ok = _checkpoint_step(run_dir) == _state(run_dir / "last.pt")["step"]
    leftovers = sorted(p.name for p in run_dir.glob(".*.tmp"))
    again = runs.run(run_dir, extra=serial)
    same = again.returncode == 0 and _identical(run_dir / "last.pt", reference)
    return {
        "case": "disk full (RLIMIT_FSIZE)",
        "rc": process.returncode,
        "outcome": (
            f"rc {process.returncode} ({_last_line(err, r'Error')[:70]}); last.pt {'intact' if last_ok else 'BROKEN'} "
            f"at step {saved}; {len(leftovers)} temp file(s) left; rerun rc {again.returncode}, "
            f"{'bit-identical' if same else 'DIFFERENT'}"
        ),
        "steps_lost": max(reached - saved, 0),
        "detail": {"error": _last_line(err, r"Error")},
    }


def _torchrun_sigterm(runs: Runs) -> dict[str, Any]:
    run_dir = runs.run_dir("torchrun")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["-m", "voszoo.train", "trainer.device=cpu"]
    process = runs.start(run_dir, launcher=launcher)
    _wait_for(lambda: _logged_step(run_dir) >= runs.every + 1, process)
    os.kill(process.pid, signal.SIGTERM)  # the agent only, as a scheduler would; it passes SIGTERM to the ranks
    out, err = process.communicate(timeout=600)
    reached, saved = _logged_step(run_dir), _checkpoint_step(run_dir)
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    stopped = re.findall(r"SIGTERM received: stopped after step (\d+)", log)  # each rank logs it
    from voszoo.engine.checkpoint import read_checkpoint

    ranks = len(read_checkpoint(run_dir / "last.pt")["rng"]) if saved else 0
    steps = ",".join(sorted(set(stopped)))
    return {
        "case": "SIGTERM torchrun (2 ranks)",
        "rc": process.returncode,
        "outcome": (
            f"agent rc {process.returncode}; {len(stopped)} rank(s) logged 'stopped after step {steps}'; "
            f"checkpoint at step {saved} with the RNG states of {ranks} ranks"
        ),
        "steps_lost": max(reached - saved, 0),
        "detail": {"stderr_tail": _last_line(err, r"SIGTERM")},
    }


def _toyvos_race(work: Path) -> dict[str, Any]:
    folder = work / "race"
    base = [sys.executable, "-m", "voszoo.data.toy", "--out", str(folder), "--size", "64", "64", "--workers", "1"]
    runs = [
        subprocess.Popen(
            [*base, "--videos", str(videos), "--frames", "6", "--no-progress"],
            env=_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for videos in (6, 7)
    ]
    results = [process.communicate(timeout=600) for process in runs]
    codes = [process.returncode for process in runs]
    record = json.loads((folder / "toyvos.json").read_text())
    loser = next((err.strip().splitlines()[-1] for (_, err), code in zip(results, codes, strict=True) if code), "")
    winner = [6, 7][codes.index(0)] if 0 in codes else None
    made = record["parameters"]["videos"]
    consistent = winner is not None and made == winner
    return {
        "case": "2 x voszoo-toyvos",
        "rc": max(codes),
        "outcome": (
            f"rc {codes}; dataset {'= the winner' if consistent else 'INCONSISTENT'} (videos={made}); "
            f"loser: {loser[:90]}"
        ),
        "steps_lost": None,
        "detail": {"loser": loser},
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | outcome | steps lost |", "| --- | --- | --- |"]
    for row in rows:
        lost = "n/a" if row["steps_lost"] is None else str(row["steps_lost"])
        lines.append(f"| {row['case']} | {row['outcome']} | {lost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    parser.add_argument("--every", type=int, default=3, help="checkpoint_every (default 3)")
    parser.add_argument("--torchrun", action="store_true", help="also the two-rank torchrun SIGTERM case")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="voszoo-faults-"))
    runs = Runs(work, steps=args.steps, every=args.every)
    started = time.perf_counter()
    reference = runs.run_dir("reference")
    done = runs.run(reference)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    rows = [
        _interrupt_and_resume(runs, "kill -9", reference / "last.pt", signum=signal.SIGKILL),
        _interrupt_and_resume(runs, "SIGTERM", reference / "last.pt", signum=signal.SIGTERM),
    ]
    if args.torchrun:
        rows.append(_torchrun_sigterm(runs))
    rows += [_concurrent_writer(runs, reference / "last.pt"), _disk_full(runs, reference / "last.pt")]
    rows.append(_toyvos_race(work))
    print(table(rows))
    print(
        f"\n{args.steps} steps, checkpoint every {args.every}; {time.perf_counter() - started:.0f} s; work dir {work}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "every": args.every, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
