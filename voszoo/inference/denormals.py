"""Flush-to-zero for the duration of an inference step, on every intra-op thread, restored afterwards.

Why: subnormal floats (|x| < 1.2e-38 in float32) take a slow microcode path on Intel CPUs. A softmax over sharp
affinities produces many of them (exp of a logit far below the row maximum): in STM's memory read with random
weights 20 % of the probabilities are subnormal and the read ran twice as fast with them flushed to zero. Flushing
changes a result only by terms below 1.2e-38 (relative to the largest term of a softmax: below exp(-87)), far under
float32 rounding of anything the models compute.

Why not simply ``torch.set_flush_denormal(True)``: it sets the FTZ/DAZ bits of the CPU's MXCSR register of the
*calling thread only*. torch's intra-op OpenMP threads keep their own MXCSR, which a new thread copies from its
creator. So (measured on this 2-core machine, torch 2.x): with the thread pool already running, the call flushes
only the main thread's share of a parallel op (half of it); and when the pool is created while the flag is on,
the workers keep flushing for the rest of the process, after the caller has turned the flag off in its own thread,
silently changing results of user code. :func:`flush_denormals` therefore sets the flag in every thread of the
calling thread's OpenMP team and restores each one.

How the state is saved and restored (torch has no getter for the flag): on entering, every team thread (OpenMP's
``GOMP_parallel`` called through ctypes on the libgomp/libiomp5 that torch has loaded; thread 0 is the calling
thread) *probes* its own state, by multiplying a subnormal by 1.0 and checking for zero, records it under its OpenMP
thread number, then turns the flag on. On leaving (also on an exception), every team thread sets its recorded state
back; a thread that joined the team inside the block (the thread count grew) gets the calling thread's previous
state, which it would have copied at creation outside the block. The first use checks with a parallel probe that
every thread really flushes; where that fails, or where torch uses no OpenMP that can be found (another parallel
backend, no ``/proc/self/maps``), the block only runs with one thread's flag set if torch uses one thread, and
otherwise does nothing (one log line): a flag on some threads only would give little speed and could leak.

Forked processes: GNU libgomp's thread pool does not survive ``fork`` (measured: after the parent ran a parallel
op, a forked child hangs in its next parallel op, torch's own included). A process forked after this module reached
the OpenMP runtime therefore never calls it: there the block flushes only if torch uses one thread (as in
DataLoader workers, where torch sets one thread) and otherwise does nothing (one log line). Spawned processes
(pytest-xdist workers, ``spawn`` DataLoader workers) start afresh.

Reentrancy and threads: the saved states live in a ``threading.local``; a nested block in the same thread does
nothing and the outermost one restores. Another Python thread is unaffected: it has its own MXCSR and its own
OpenMP team (libgomp keeps a pool per master thread). A block must be left in the thread that entered it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["denormals_flushed", "flush_denormals", "flush_denormals_available", "resolve_flush_denormal"]

logger = logging.getLogger(__name__)

_SUBNORMAL_BITS = 0x00100000  # a float32 bit pattern: 1.47e-39, built without a float operation that could flush it
_PROBE_PER_THREAD = 1 << 16  # elements per thread of the parallel probe (above ATen's 32768-element grain size)
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_local = threading.local()


def _subnormals(count: int) -> torch.Tensor:
    return torch.full((count,), _SUBNORMAL_BITS, dtype=torch.int32).view(torch.float32)


def _this_thread_flushes() -> bool:
    """Whether the calling thread flushes subnormals (a one-element op: never split across threads)."""
    return int((_subnormals(1) * 1.0).view(torch.int32)[0]) == 0


def denormals_flushed() -> float:
    """Fraction of a parallel op's elements that the intra-op threads flushed to zero: 1.0 when every thread
    flushes, 0.0 when none does, in between when only some do (for tests and diagnostics)."""
    product = _subnormals(_PROBE_PER_THREAD * max(1, torch.get_num_threads())) * 1.0
    return float((product.view(torch.int32) == 0).float().mean())


class _OpenMPTeam:
    """Runs a Python function once in every thread of the calling thread's OpenMP team (``GOMP_parallel``)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library
        self.library.omp_get_thread_num.restype = ctypes.c_int
        self.library.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self.library.GOMP_parallel.restype = None

    def run(self, fn: Callable[[int], None], *, threads: int) -> None:
        """``fn(thread_number)`` in each of ``threads`` team threads; returns when all have finished. ``fn`` must
        not raise (ctypes would print and drop the error)."""

        def body(_: object) -> None:
            try:
                fn(self.library.omp_get_thread_num())
            except BaseException:  # noqa: BLE001 - an exception cannot cross the C frame; the restore covers gaps
                logger.debug("flush_denormal: a team thread failed", exc_info=True)

        callback = _CALLBACK(body)
        self.library.GOMP_parallel(callback, None, threads, 0)  # ctypes releases the GIL; each callback re-takes it


def _loaded_openmp_paths() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux), torch's own first. Only libraries already
    loaded are candidates: loading a second OpenMP runtime would create a second thread pool."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in lines if line.count("/") and ("libgomp" in line or "libiomp5" in line)}
    torch_lib = str(Path(torch.__file__).parent)
    return sorted(paths, key=lambda path: (not path.startswith(torch_lib), path))


_teams: dict[int, _OpenMPTeam | None] = {}  # process id -> the team found there (None: none usable)


def _team() -> _OpenMPTeam | None:
    """The OpenMP runtime torch's intra-op threads run on, if it can be reached and really sets every thread;
    None in a process forked after this one reached it (module docstring)."""
    pid = os.getpid()
    if pid not in _teams:
        if _teams:
            logger.info("flush_denormal: forked process with more than one thread; subnormals are not flushed")
            _teams[pid] = None
        else:
            _teams[pid] = _find_team()
    return _teams[pid]


def _find_team() -> _OpenMPTeam | None:
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        logger.info("flush_denormal: torch's parallel backend is not OpenMP; subnormals are not flushed")
        return None
    for path in _loaded_openmp_paths():
        try:
            library = ctypes.CDLL(path)
            team = _OpenMPTeam(library)
        except (OSError, AttributeError):
            continue
        if _works(team):
            return team
    logger.info("flush_denormal: cannot reach torch's OpenMP threads; subnormals are not flushed")
    return None


def _works(team: _OpenMPTeam) -> bool:
    """Whether setting the flag through ``team`` flushes every element of a parallel op (restores the flag)."""
    threads = torch.get_num_threads()
    saved = _apply(team, threads=threads)
    try:
        return denormals_flushed() == 1.0
    finally:
        _restore(team, saved, threads=threads)


def flush_denormals_available() -> bool:
    """Whether :func:`flush_denormals` can flush on every intra-op thread here (x86 CPU; OpenMP reachable, or one
    thread)."""
    return _flag_supported() and (torch.get_num_threads() == 1 or _team() is not None)


@functools.cache
def _flag_supported() -> bool:
    """torch.set_flush_denormal works here (x86 with SSE3); checked once, leaving the calling thread's state."""
    before = _this_thread_flushes()
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(before)
    return bool(supported)


def _apply(team: _OpenMPTeam | None, *, threads: int) -> dict[int, bool]:
    """Turn the flag on in every team thread (or the calling thread alone); returns each one's previous state."""
    previous: dict[int, bool] = {}

    def turn_on(number: int) -> None:
        previous[number] = _this_thread_flushes()
        torch.set_flush_denormal(True)

    if team is None:
        turn_on(0)
    else:
        team.run(turn_on, threads=threads)
    return previous


def _restore(team: _OpenMPTeam | None, previous: dict[int, bool], *, threads: int) -> None:
    """Set every team thread back to its recorded state; a thread that joined later gets thread 0's."""

    def put_back(number: int) -> None:
        torch.set_flush_denormal(previous.get(number, previous.get(0, False)))

    if team is None:
        put_back(0)
    else:
        team.run(put_back, threads=max(threads, torch.get_num_threads(), len(previous)))


def resolve_flush_denormal(setting: bool | str | None, *, device: torch.device | str) -> bool:
    """The ``flush_denormal`` inference setting -> whether to flush: ``"auto"`` (or None): on for a CPU device;
    True/``"on"``/``"true"``: on (where available); False/``"off"``/``"false"``: off."""
    if isinstance(setting, str):
        text = setting.strip().lower()
        choices = {"auto": None, "on": True, "true": True, "off": False, "false": False}
        if text not in choices:
            raise ValueError(f"flush_denormal must be auto, on/true or off/false, got {setting!r}")
        setting = choices[text]
    if setting is None:
        return torch.device(device).type == "cpu"
    return bool(setting)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormal floats to zero on every intra-op thread inside the block; yields whether it does.

    The previous state of each thread is restored on leaving, exceptions included (module docstring: how, and
    where it cannot be done, in which case the block runs unchanged and yields False). Nested blocks in one thread
    are no-ops; the outermost restores. ``enabled=False`` leaves every flag as it is (it does not turn off an outer
    block's flushing) and yields False.
    """
    if not enabled:
        yield False
        return
    depth = getattr(_local, "depth", 0)
    if depth > 0:
        _local.depth = depth + 1
        try:
            yield _local.active
        finally:
            _local.depth = depth
        return
    threads = torch.get_num_threads()
    team = _team() if threads > 1 and _flag_supported() else None
    active = _flag_supported() and (team is not None or threads == 1)
    previous = _apply(team, threads=threads) if active else {}
    _local.depth, _local.active = 1, active
    try:
        yield active
    finally:
        _local.depth, _local.active = 0, False
        if active:
            _restore(team, previous, threads=threads)
