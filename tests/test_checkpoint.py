"""Checkpoint files: atomic writes, last.pt, pruning, and loading errors that name the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from voszoo.engine import checkpoint as ckpt
from voszoo.engine.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    check_model_identity,
    load_model_state,
    load_model_weights,
    plain_config,
    read_checkpoint,
    write_checkpoint,
)


class Small(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(2, width)


def make_checkpoint(step: int, model: nn.Module | None = None) -> dict:
    model = model if model is not None else Small()
    checkpoint = {key: None for key in CHECKPOINT_KEYS}
    checkpoint.update(
        format_version=ckpt.FORMAT_VERSION,
        model_name="small",
        model_class=ckpt.model_class_path(model),
        state_dict=model.state_dict(),
        step=step,
        epoch=0,
        rng=[],
        config={"lr": 0.1, "size": [2, 3]},
    )
    return checkpoint


def test_write_read_last_and_pruning(tmp_path: Path) -> None:
    for step in (3, 6, 9):
        write_checkpoint(make_checkpoint(step), tmp_path, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_00000006.pt", "checkpoint_00000009.pt", "last.pt"]  # no temporary files left
    last = read_checkpoint(tmp_path / "last.pt")
    assert last["step"] == 9 and last["config"] == {"lr": 0.1, "size": [2, 3]}
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "checkpoint_00000009.pt").read_bytes()
    write_checkpoint(make_checkpoint(2), tmp_path, keep=2)  # a restarted run: later checkpoints are stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000002.pt", "last.pt"]
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 2


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(make_checkpoint(1), tmp_path)
    before = (tmp_path / "last.pt").read_bytes()

    def dying_save(obj: object, handle) -> None:  # writes half a file, then the process "dies"
        handle.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(make_checkpoint(2), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000001.pt", "last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == before
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 1


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    write_checkpoint(make_checkpoint(1), tmp_path)
    data = (tmp_path / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"^{truncated} is not a readable voszoo checkpoint: "):
        read_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=rf"^{garbage} is not a readable voszoo checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match=r"missing\.pt: file not found"):
        read_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": Small().state_dict()}, foreign)
    with pytest.raises(CheckpointError, match=r"no 'format_version' \(found \['model'\]\)"):
        read_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({**make_checkpoint(1), "config": np.arange(3)}, unsafe)  # not loadable with weights_only=True
    with pytest.raises(CheckpointError, match="is not a readable voszoo checkpoint: .*weights_only.*numpy"):
        read_checkpoint(unsafe)
    assert issubclass(CheckpointError, ValueError)


def test_other_model_and_mismatched_weights(tmp_path: Path) -> None:
    write_checkpoint(make_checkpoint(5), tmp_path)
    path = tmp_path / "last.pt"
    checkpoint = read_checkpoint(path)
    message = (
        f"checkpoint {path} was saved from model small (class {__name__}.Small); "
        f"this run builds big (class {__name__}.Small)"
    )
    with pytest.raises(CheckpointError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        check_model_identity(checkpoint, path=path, model=Small(), model_name="big")
    with pytest.raises(CheckpointError, match=r"class torch.nn.modules.linear.Linear"):
        check_model_identity(checkpoint, path=path, model=nn.Linear(2, 3), model_name="small")
    with pytest.raises(CheckpointError, match=r"shape mismatch \['fc.weight: checkpoint \(3, 2\) vs model \(4, 2\)'"):
        load_model_state(Small(width=4), checkpoint["state_dict"], path=path)

    class Renamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 3)

    with pytest.raises(CheckpointError, match=r"missing keys \['head.weight', 'head.bias'\]; unexpected keys \['fc"):
        load_model_state(Renamed(), checkpoint["state_dict"], path=path)
    model = Small()
    load_model_weights(model, path, model_name="small")
    assert torch.equal(model.fc.weight, checkpoint["state_dict"]["fc.weight"])
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        load_model_weights(model, path, use_ema=True)


def test_plain_config() -> None:
    config = {"a": (1, np.float64(0.5)), "b": {"c": Path("/x"), "d": None, "e": np.int64(3), "f": True}}
    assert plain_config(config) == {"a": [1, 0.5], "b": {"c": "/x", "d": None, "e": 3, "f": True}}
    assert type(plain_config(config)["b"]["e"]) is int
    node = OmegaConf.create({"optim": {"lr": "${base}", "betas": [0.9, 0.99]}, "base": 0.1})
    assert plain_config(node) == {"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "base": 0.1}
    with pytest.raises(ValueError, match=r"config.b.bad: .*got object"):
        plain_config({"b": {"bad": object()}})
