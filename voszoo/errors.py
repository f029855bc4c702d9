"""The errors a user can fix (a bad value, a bad file, an unknown name), and how the command-line tools report them.

Every voszoo command (``voszoo-train``, ``-eval``, ``-bench``, ``-pretrain``, ``-score``, ``-toyvos``, ...) reports
errors through :func:`report_user_error` (the Hydra apps through ``voszoo.cli_common.guarded_task``, the argparse ones
through :func:`run_command`): a :class:`UserError`, a file-system error that names its file (missing, not allowed, no
space left) prints one line ``<prog>: error: <message>`` and one ``hint:`` line, and the command exits 1. Any other
exception is a bug and keeps its traceback. ``--verbose`` or ``HYDRA_FULL_ERROR=1`` shows the traceback of user
errors too. This module imports only the standard library: it is light enough for every reader to depend on.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = [
    "UserError",
    "add_verbose_flag",
    "describe_user_error",
    "full_errors_requested",
    "naming_file",
    "report_user_error",
    "request_full_errors",
    "run_command",
    "take_verbose_flag",
]

VERBOSE_FLAG = "--verbose"
_TRACEBACK_HINT = f"{VERBOSE_FLAG} or HYDRA_FULL_ERROR=1 shows the full traceback"
# errno values whose OSError is the user's environment, not voszoo: said in one line with the file.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free some space, or write elsewhere (e.g. hydra.run.dir=...)"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or write elsewhere (e.g. hydra.run.dir=...)"),
    errno.EROFS: ("read-only file system", "write elsewhere (e.g. hydra.run.dir=...)"),
    errno.EACCES: ("permission denied", "check the file's permissions, or write elsewhere"),
    errno.EPERM: ("operation not permitted", "check the file's permissions, or write elsewhere"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EISDIR: ("is a directory, not a file", "check the path"),
    errno.ENOTDIR: ("not a directory", "check the path"),
}


class UserError(Exception):
    """An error the user can fix (a bad value, file or name); the message names the key, file or argument at fault.

    ``hint`` (optional) says the way out; the command-line tools print it on a second line. Library exceptions that
    are user errors derive from this class (``ConfigError``, ``VOSDataError`` and its ``CheckpointError``, ...), so
    that the tools catch them all as one type.
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Give an OSError raised inside (a write to a file descriptor, e.g. a full disk) the ``path`` it was writing,
    if it names none, so that the user reads which file (and so which disk) it was."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = os.fspath(path)
        raise


def full_errors_requested() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1``; ``--verbose`` sets it)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def describe_user_error(error: BaseException, *, also: tuple[type[Exception], ...] = ()) -> tuple[str, str] | None:
    """``(message, hint)`` of a user error (or of an instance of ``also``: types a command's inputs alone can cause),
    None for any other exception (a bug: it keeps its traceback)."""
    if isinstance(error, (UserError, *also)):
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message held
        return message, getattr(error, "hint", None) or _TRACEBACK_HINT
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        what, hint = _ENVIRONMENT_ERRNOS[error.errno]
        path = error.filename if error.filename is not None else error.filename2
        return (f"{what}: {path}" if path is not None else f"{what} ({error})"), hint
    return None


def report_user_error(error: BaseException, *, prog: str, also: tuple[type[Exception], ...] = ()) -> bool:
    """Print ``error`` as ``<prog>: error: ...`` plus a hint line on stderr if it is a user error and the user did
    not ask for tracebacks; returns whether it was printed (if not, the caller re-raises)."""
    described = describe_user_error(error, also=also)
    if described is None or full_errors_requested():
        return False
    message, hint = described
    sys.stderr.write(f"{prog}: error: {message}\nhint: {hint}\n")
    sys.stderr.flush()
    return True


def take_verbose_flag(argv: list[str]) -> bool:
    """Remove ``--verbose`` from ``argv`` (in place: Hydra does not know it); if it was there, ask for full
    tracebacks (``HYDRA_FULL_ERROR=1``, which Hydra's own error printing also honours). Returns whether it was."""
    if VERBOSE_FLAG not in argv:
        return False
    while VERBOSE_FLAG in argv:
        argv.remove(VERBOSE_FLAG)
    request_full_errors()
    return True


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Give an argparse command the ``--verbose`` flag (see :func:`request_full_errors`)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", help="print the full traceback of every error")


def request_full_errors() -> None:
    """Ask for full tracebacks for the rest of the process (``HYDRA_FULL_ERROR=1``, which Hydra honours too)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"


def run_command(body: Callable[[], int], *, prog: str, also: tuple[type[Exception], ...] = ()) -> int:
    """``body()`` (an argparse command's work, returning its exit code) behind the boundary: 1 after a reported user
    error (or an ``also`` error)."""
    try:
        return body()
    except Exception as error:
        if not report_user_error(error, prog=prog, also=also):
            raise
        return 1
