"""Shared file safety (voszoo/fileio.py): every output gets the umask's mode, atomic writes leave nothing behind on
failure, and locks name their holder."""

from __future__ import annotations

import errno
import json
import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from voszoo.data.io import write_labels
from voszoo.engine.checkpoint import CHECKPOINT_KEYS, FORMAT_VERSION, read_checkpoint, write_checkpoint
from voszoo.engine.logging import MetricsWriter
from voszoo.evaluation.pipeline import write_metrics
from voszoo.evaluation.youtube_vos import pack_submission
from voszoo.fileio import FileLock, LockHeldError, atomic_write, atomic_write_bytes


@pytest.fixture(params=[0o022, 0o007], ids=["umask022", "umask007"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_output_gets_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    """mkstemp made these 0600 whatever the umask: unreadable by another user or a web server."""
    reference = tmp_path / "plain.txt"
    reference.write_text("made by open()")
    expected = 0o666 & ~umask
    assert mode(reference) == expected

    run = tmp_path / "run"
    checkpoint = {key: None for key in CHECKPOINT_KEYS} | {"step": 1, "state_dict": {"w": torch.zeros(2)}}
    numbered = write_checkpoint(checkpoint, run)
    writer = MetricsWriter(run / "metrics.jsonl")
    writer.write(1, {"loss": 1.0})
    writer.write(2, {"loss": 0.5})
    writer.truncate_after(1)  # rewritten atomically
    write_metrics(run, {"J&F": 0.5})
    write_labels(tmp_path / "pred" / "vid" / "00000.png", np.zeros((4, 5), dtype=np.uint8))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {"vid": {"objects": {"1": {"frames": ["00000"]}}}}}))
    submission = pack_submission(tmp_path / "pred", meta, tmp_path / "submission.zip", progress=False)
    atomic_write_bytes(tmp_path / "results.csv", b"a,b\n")

    outputs = [
        numbered,
        run / "last.pt",
        run / "metrics.jsonl",
        run / "metrics.json",
        tmp_path / "pred" / "vid" / "00000.png",
        submission,
        tmp_path / "results.csv",
    ]
    assert {str(p): oct(mode(p)) for p in outputs} == {str(p): oct(expected) for p in outputs}


def test_a_failed_atomic_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail_midway(handle) -> None:
        handle.write(b"new, but only half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail_midway)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_lock_names_its_holder_and_is_free_again_after_release(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with FileLock(path, what="run directory x"):
        with pytest.raises(LockHeldError, match=rf"run directory x is in use by process {os.getpid()} on host "):
            FileLock(path, what="run directory x").acquire()  # another descriptor conflicts, also in one process
    with FileLock(path, what="run directory x") as again:
        assert again.held
    assert not path.exists()  # released: nothing left behind


def test_waiting_for_a_lock_says_whom_it_waits_for_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    heard: list[str] = []
    with FileLock(path, what="dataset y"):
        with pytest.raises(LockHeldError, match="dataset y is in use by process"):
            FileLock(path, what="dataset y").acquire(timeout=0.3, on_wait=heard.append)
    assert len(heard) == 1 and heard[0].startswith(f"process {os.getpid()}")


def test_a_full_disk_during_a_checkpoint_raises_oserror_and_keeps_last_pt(tmp_path: Path) -> None:
    """torch.save turned the write error into 'RuntimeError: [enforce fail at inline_container.cc] ...'. The file
    size limit makes write() fail as a full disk does (EFBIG instead of ENOSPC; Python ignores SIGXFSZ)."""
    checkpoint = {key: None for key in CHECKPOINT_KEYS} | {"format_version": FORMAT_VERSION, "step": 1}
    write_checkpoint(checkpoint, tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError, match=r"File too large: .*checkpoint_00000002\.pt") as caught:
            write_checkpoint(checkpoint | {"step": 2, "state_dict": {"w": torch.zeros(100_000)}}, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == errno.EFBIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000001.pt", "last.pt"]
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 1
