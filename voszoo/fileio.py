"""Files that other processes and other users can rely on: atomic writes with the umask's mode, and locks that name
their holder.

Atomic writes go to a temporary file in the target's folder, are flushed (and, if ``durable``, fsynced) and renamed
over the target, so a reader sees the old file or the new one, never half of one. The temporary file is created
with ``os.open(..., 0o666)``, so the kernel gives it the mode any ``open()`` would (``0o666 & ~umask``, and a
folder's default ACL); ``tempfile.mkstemp`` would make every output ``0o600``, unreadable by a web server or a
colleague. Temporary names are ``.<target name>.<random>.tmp``.

:class:`FileLock` is an exclusive ``fcntl.flock`` on a lock file that records the holder (pid, host, start time).
The kernel drops the lock when the holder exits, even after ``kill -9``, so a stale lock file never blocks anyone.
The holder removes the file on release; a process that then gets the lock on the removed file sees that the path
names another file (or none) and starts over, so two processes never both hold it. Where ``fcntl`` does not exist
(Windows) locking is a no-op, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from voszoo.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_directory", "temp_name_pattern", "FileLock", "LockHeldError"]

logger = logging.getLogger(__name__)

_FILE_MODE = 0o666  # the kernel applies the umask, as for open(path, "w")


class LockHeldError(UserError, RuntimeError):
    """Another process holds a :class:`FileLock`; the message names the path and the holder."""


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name_pattern(name: str) -> str:
    """The glob of the temporary files :func:`atomic_write` makes for a target called ``name``."""
    return f".{name}.*.tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``path``: (fd, path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _FILE_MODE), tmp
        except FileExistsError:  # 48 random bits: practically never
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, then rename it into place.

    The file gets the umask's mode. ``durable``: fsync the file and the folder, so that the new content survives a
    power cut (checkpoints); without it the rename is still atomic for other processes (prediction PNGs, CSVs).
    On any error, the temporary file is removed and ``path`` is untouched. Returns ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda handle: handle.write(data), durable=durable)


class FileLock:
    """An exclusive, advisory lock on the file ``path`` (created if needed) for ``what`` (e.g. "run directory x").

    ``acquire()`` fails at once with :class:`LockHeldError` naming the holder, or, with ``timeout`` seconds, polls
    until then (``on_wait(holder)`` is called once, e.g. to say whom it waits for). Use as a context manager for
    an immediate attempt. Not re-entrant: a second FileLock on the same path conflicts, also in one process.
    The lock file exists while the lock is held and records the holder.
    """

    def __init__(self, path: str | os.PathLike, *, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds the lock, from the lock file: ``"process 123 on host h (since 2025-01-01 12:00:00)"``."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["time"])))
            return f"process {int(record['pid'])} on host {record['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):  # being written right now, or not ours
            return "another process"

    def acquire(self, *, timeout: float = 0.0, on_wait: Callable[[str], None] | None = None) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this FileLock")
        if fcntl is None:
            logger.warning("%s: no fcntl on this platform; %s is not locked", self.path, self.what)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            fd = self._try_lock()
            if fd is not None:
                break
            if time.monotonic() >= deadline:
                raise LockHeldError(f"{self.what} is in use by {self.holder()} (lock file {self.path})")
            if not waited and on_wait is not None:
                on_wait(self.holder())
            waited = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)

    def _try_lock(self) -> int | None:
        """A locked descriptor of the lock file, or None if another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if not self._is_current(fd):  # the holder removed this file while we waited on it: lock the new one
            os.close(fd)
            return self._try_lock()
        return fd

    def _is_current(self, fd: int) -> bool:
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Give the lock up and remove the lock file; a no-op if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._is_current(fd):
                self.path.unlink()  # while still locked, so waiters on this file notice and start over
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: forked children (DataLoader workers) share the descriptor
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
