"""The shared error boundary of the command-line tools (voszoo.errors, voszoo.cli_common.guarded_task): a user
error prints one line and a hint and exits 1; --verbose / HYDRA_FULL_ERROR=1 and bugs keep the traceback; a multirun
job that fails does not stop the others."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voszoo.data.io import VOSDataError
from voszoo.errors import UserError, describe_user_error, run_command
from voszoo.instantiate import ConfigError

# A Hydra app on voszoo's eval config whose task raises what +kind= names (the real entry points' wrapper).
APP = """
import errno, sys
from pathlib import Path
from voszoo.cli_common import hydra_entry
from voszoo.instantiate import ConfigError

def task(cfg):
    if cfg.kind == "config":
        raise ConfigError("trainer.max_steps: expected an integer >= 1, got 'abc'", hint="e.g. trainer.max_steps=300")
    if cfg.kind == "disk":
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/metrics.json")
    if cfg.kind == "bug":
        raise RuntimeError("an internal bug")
    Path(cfg.mark).write_text("ran")

hydra_entry(task, "eval")
"""


def run_app(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "app.py"
    script.write_text(APP)
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run(
        [sys.executable, str(script), *args, f"hydra.run.dir={tmp_path / 'run'}", f"+mark={tmp_path / 'mark'}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment,
        cwd=tmp_path,
    )


def test_a_user_error_is_one_line_and_a_hint(tmp_path: Path) -> None:
    done = run_app(tmp_path, "+kind=config")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "voszoo-eval: error: trainer.max_steps: expected an integer >= 1, got 'abc'",
        "hint: e.g. trainer.max_steps=300",
    ]


def test_verbose_and_hydra_full_error_show_the_traceback(tmp_path: Path) -> None:
    for done in (
        run_app(tmp_path, "+kind=config", "--verbose"),
        run_app(tmp_path, "+kind=config", env={"HYDRA_FULL_ERROR": "1"}),
    ):
        assert done.returncode == 1
        assert "Traceback (most recent call last)" in done.stderr and "ConfigError: trainer.max_steps" in done.stderr


def test_a_full_disk_names_the_file(tmp_path: Path) -> None:
    done = run_app(tmp_path, "+kind=disk")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "voszoo-eval: error: no space left on device: /full/disk/metrics.json"


def test_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    done = run_app(tmp_path, "+kind=bug")
    assert done.returncode == 1 and "RuntimeError: an internal bug" in done.stderr and "Traceback" in done.stderr


def test_a_failed_multirun_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    done = run_app(tmp_path, "-m", "+kind=config,ok", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 1
    assert (tmp_path / "mark").read_text() == "ran"  # the second job ran after the first failed
    assert "voszoo-eval: error: trainer.max_steps" in done.stderr and "job failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_user_error_types_and_their_lines() -> None:
    assert isinstance(ConfigError("x"), UserError) and isinstance(VOSDataError("x"), UserError)
    from voszoo.engine.checkpoint import CheckpointError
    from voszoo.models.convert import CheckpointMismatchError

    assert isinstance(CheckpointError("x"), UserError) and isinstance(CheckpointMismatchError("x"), UserError)
    assert describe_user_error(VOSDataError("a\n  b", hint="do c")) == ("a b", "do c")
    full = OSError(errno.ENOSPC, "No space left on device", "/d/x.png")
    assert describe_user_error(full) == ("no space left on device: /d/x.png", describe_user_error(full)[1])
    assert describe_user_error(RuntimeError("bug")) is None and describe_user_error(ValueError("v")) is None
    assert describe_user_error(ValueError("v"), also=(ValueError,))[0] == "v"


def test_run_command_returns_1_after_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise VOSDataError("/data/x.png: unreadable image")

    assert run_command(fail, prog="voszoo-score") == 1
    assert capsys.readouterr().err.splitlines()[0] == "voszoo-score: error: /data/x.png: unreadable image"
    with pytest.raises(RuntimeError):
        run_command(lambda: (_ for _ in ()).throw(RuntimeError("bug")), prog="voszoo-score")
