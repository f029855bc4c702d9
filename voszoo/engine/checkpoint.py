"""Training checkpoints: atomic writes, a ``last.pt`` entry point, and loading with errors that say what is wrong.

A checkpoint is a dict saved with ``torch.save`` holding only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``:

======================  ==================================================================================
``format_version``      :data:`FORMAT_VERSION`
``model_name``          the preset name (e.g. ``"stm"``); ``model_class``: ``"module.QualifiedName"``
``state_dict``          model weights; ``ema``: :meth:`ModelEMA.state_dict` or None
``optimizer``           optimizer state; ``scaler``: GradScaler state; ``schedule``: schedule state (or None)
``step`` / ``epoch``    optimizer steps taken / current data epoch
``position``            ``{"epoch", "batch_in_epoch", "epoch_start_step", "world_size", "batch_size"}``: where the
                        data stream resumes (micro-batches already consumed in the epoch, per process)
``rng``                 one :func:`voszoo.engine.seed.get_rng_state` per process, in rank order
``config``              the run's configuration as a plain dict (or None)
======================  ==================================================================================

Files in a run directory: ``checkpoint_<step:08d>.pt`` (the newest ``keep`` of them) and ``last.pt``, a hard link
to (or, where links are unsupported, a copy of) the newest; a resume loads the newest complete one of them
(:func:`latest_checkpoint`). Every file is written to a temporary file in the same directory, flushed, fsynced and
renamed over the target (:func:`voszoo.fileio.atomic_write`, with the umask's mode), so a crash leaves either the
old or the new checkpoint, never a partial one; the temporary files a killed writer leaves behind are removed by
the next run in that directory (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import logging
import numbers
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from voszoo.data.io import VOSDataError
from voszoo.fileio import atomic_write, fsync_directory

__all__ = [
    "FORMAT_VERSION",
    "CHECKPOINT_KEYS",
    "LAST_NAME",
    "CheckpointError",
    "model_class_path",
    "plain_config",
    "atomic_save",
    "write_checkpoint",
    "find_last_checkpoint",
    "checkpoint_files",
    "latest_checkpoint",
    "remove_stale_temporaries",
    "load_weights_file",
    "read_checkpoint",
    "check_model_identity",
    "load_model_state",
    "load_model_weights",
]

FORMAT_VERSION = 1
CHECKPOINT_KEYS = (
    "format_version",
    "model_name",
    "model_class",
    "state_dict",
    "ema",
    "optimizer",
    "scaler",
    "schedule",
    "step",
    "epoch",
    "position",
    "rng",
    "config",
)
LAST_NAME = "last.pt"
_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.(checkpoint_\d+\.pt|last\.pt|metrics\.jsonl?)\..+\.tmp$")  # atomic_write's (and older)
_SHOWN_KEYS = 5

logger = logging.getLogger(__name__)


class CheckpointError(VOSDataError):
    """A checkpoint file is missing, unreadable, or does not fit the model being built."""


def model_class_path(model: nn.Module) -> str:
    """``"package.module.ClassName"`` of a model, as stored in ``model_class``."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def plain_config(config: Any, *, key: str = "config") -> Any:
    """A copy of ``config`` made of dicts, lists, str, int, float, bool and None (safe for ``weights_only``).

    Paths become strings, tuples and other sequences lists, numpy scalars Python numbers, mappings (also OmegaConf
    nodes, resolved) dicts; anything else raises a ValueError naming the key.
    """
    if config is None or isinstance(config, (str, bool)):
        return config
    if isinstance(config, numbers.Integral):
        return int(config)
    if isinstance(config, numbers.Real):
        return float(config)
    if isinstance(config, os.PathLike):
        return os.fspath(config)
    if isinstance(config, Mapping):
        return {str(k): plain_config(v, key=f"{key}.{k}") for k, v in config.items()}
    if isinstance(config, Sequence) and not isinstance(config, bytes):  # lists, tuples, OmegaConf ListConfig
        return [plain_config(v, key=f"{key}[{i}]") for i, v in enumerate(config)]
    raise ValueError(
        f"{key}: a checkpoint config holds only dicts, lists and scalars, got {type(config).__name__} "
        "(convert an OmegaConf node with OmegaConf.to_container(cfg, resolve=True))"
    )


class _WriteErrors:
    """A file wrapper for ``torch.save`` that keeps the OSError a write raised: torch's zip writer turns it into an
    opaque ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _save(obj: Any, handle: BinaryIO, path: Path) -> None:
    writer = _WriteErrors(handle)
    try:
        torch.save(obj, writer)
    except RuntimeError as error:
        if writer.error is None:
            raise
        cause = writer.error  # e.g. ENOSPC: the disk is full; EFBIG: the file-size limit
        raise OSError(cause.errno, f"{cause.strerror}: {path}", str(path)) from error


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in the same directory, fsync, rename), with the
    umask's mode. A failed write (full disk) raises the OSError, naming ``path``; ``path`` is left untouched."""
    path = Path(path)
    return atomic_write(path, lambda handle: _save(obj, handle, path))


def _point_last(directory: Path, target: Path) -> None:
    """Make ``directory/last.pt`` a hard link to ``target`` (a copy where links fail), atomically."""
    last = directory / LAST_NAME
    tmp_name = directory / f".{LAST_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(target, tmp_name)
        os.replace(tmp_name, last)
    except OSError:
        Path(tmp_name).unlink(missing_ok=True)
        with open(target, "rb") as source:
            atomic_write(last, lambda handle: shutil.copyfileobj(source, handle))
        return
    fsync_directory(directory)


def write_checkpoint(checkpoint: Mapping[str, Any], directory: str | os.PathLike, *, keep: int = 1) -> Path:
    """Save ``checkpoint`` as ``directory/checkpoint_<step>.pt``, point ``last.pt`` at it, keep the newest ``keep``.

    Numbered checkpoints of later steps (left by an earlier run that this one restarted) are removed.

    Returns the path of the numbered file.
    """
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"write_checkpoint: the checkpoint lacks {missing}")
    if keep < 1:
        raise ValueError(f"write_checkpoint: keep must be >= 1, got {keep}")
    directory = Path(directory)
    path = atomic_save(dict(checkpoint), directory / f"checkpoint_{int(checkpoint['step']):08d}.pt")
    _point_last(directory, path)
    step = int(checkpoint["step"])
    numbered = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NUMBERED.match(p.name)) is not None)
    stale = [p for s, p in numbered if s > step]  # from an earlier run this one restarted or diverged from
    older = [p for s, p in numbered if s <= step]
    for old in stale + older[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def find_last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """``directory/last.pt`` if it exists, else None (see :func:`latest_checkpoint` for what a resume loads)."""
    last = Path(directory) / LAST_NAME
    return last if last.is_file() else None


def _numbered(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the numbered checkpoints in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = ((m, p) for p in directory.iterdir() if (m := _NUMBERED.match(p.name)) is not None)
    return sorted(((int(m.group(1)), p) for m, p in found), reverse=True)


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """The numbered checkpoints of ``directory`` (newest first), then ``last.pt`` if present; not read."""
    last = find_last_checkpoint(directory)
    return [p for _, p in _numbered(Path(directory))] + ([last] if last is not None else [])


def latest_checkpoint(
    directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of ``directory`` and its content (read once), or None if there is none.

    Candidates are the numbered checkpoints, newest first, and ``last.pt`` where it is not a link to one of them (a
    copy on file systems without hard links). ``last.pt`` alone is not enough: a crash between renaming
    ``checkpoint_<step>.pt`` into place and linking ``last.pt`` leaves the newer file only as the numbered one. A
    file that does not read as a checkpoint is skipped with a warning naming it.
    """
    directory = Path(directory)
    numbered = [p for _, p in _numbered(directory)]
    last = directory / LAST_NAME
    candidates = list(numbered)
    if last.is_file() and not any(os.path.samefile(last, p) for p in numbered):
        candidates.insert(0, last)  # its step is only known once read
    best: tuple[Path, dict[str, Any]] | None = None
    for path in candidates:
        try:
            checkpoint = read_checkpoint(path, map_location=map_location)
        except CheckpointError as error:
            logger.warning("skipping %s", error)
            continue
        if best is None or int(checkpoint["step"]) > int(best[1]["step"]):
            best = (path, checkpoint)
        if path != last:  # numbered files come newest first: the first complete one wins
            break
    return best


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed writer left in a run directory; returns them.

    Only call it while holding the run directory's lock: a running writer's temporary file looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _load_error_summary(error: Exception) -> str:
    """One line of a ``torch.load`` error; for ``weights_only`` refusals, the line naming the refused object."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(error).__name__
    refused = [line for line in lines if "WeightsUnpickler error" in line]
    if "Weights only load failed" in lines[0] and refused:
        return f"it holds objects that weights_only loading refuses ({refused[0]})"
    return lines[0]


def load_weights_file(
    path: str | os.PathLike, *, what: str = "checkpoint", map_location: str | torch.device = "cpu"
) -> Any:
    """The object saved in the torch file at ``path``, loaded with ``weights_only=True`` (tensors and plain values
    only: loading never runs code from the file). :class:`CheckpointError` if the file is missing (``"<what> <path>:
    file not found"``) or unreadable (``"<path> is not a readable <what>: <why>"``); what it holds is the caller's
    to check. The one reader of voszoo checkpoints (:func:`read_checkpoint`) and official ones
    (:mod:`voszoo.models.convert`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, pickled objects outside the allow-list, ...
        raise CheckpointError(f"{path} is not a readable {what}: {_load_error_summary(error)}") from error


def read_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a voszoo checkpoint with ``weights_only=True``; :class:`CheckpointError` if missing or not one."""
    path = Path(path)
    checkpoint = load_weights_file(path, what="voszoo checkpoint", map_location=map_location)
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a readable voszoo checkpoint: no 'format_version' (found {found}); "
            "official checkpoints are converted with voszoo.models.convert"
        )
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not a readable voszoo checkpoint: format_version {version!r}, this voszoo reads "
            f"{FORMAT_VERSION}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a readable voszoo checkpoint: it lacks {missing}")
    return checkpoint


def check_model_identity(
    checkpoint: Mapping[str, Any], *, path: str | os.PathLike, model: nn.Module, model_name: str
) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint was saved from the same preset and class."""
    saved_name, saved_class = checkpoint.get("model_name"), checkpoint.get("model_class")
    this_class = model_class_path(model)
    if saved_name != model_name or saved_class != this_class:
        raise CheckpointError(
            f"checkpoint {path} was saved from model {saved_name} (class {saved_class}); "
            f"this run builds {model_name} (class {this_class})"
        )


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return f"{keys[:_SHOWN_KEYS]}{more}"


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, path: str | os.PathLike, what: str = "state_dict"
) -> None:
    """``model.load_state_dict(state_dict)`` after checking every key and shape; the error lists the first few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_shown(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_shown(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch {_shown(mismatched)}")
        raise CheckpointError(f"checkpoint {path}: {what} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


def load_model_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    use_ema: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load the weights (or, with ``use_ema``, the EMA weights) of checkpoint ``path`` into ``model``, strictly.

    If ``model_name`` is given, the checkpoint must come from that preset and the same class. Returns the
    checkpoint (e.g. for its ``step`` and ``config``).
    """
    checkpoint = read_checkpoint(path, map_location=map_location)
    if model_name is not None:
        check_model_identity(checkpoint, path=path, model=model, model_name=model_name)
    if use_ema:
        if checkpoint["ema"] is None:
            raise CheckpointError(f"checkpoint {path} has no EMA weights (trained without ema_decay)")
        load_model_state(model, checkpoint["ema"]["module"], path=path, what="EMA state_dict")
    else:
        load_model_state(model, checkpoint["state_dict"], path=path)
    return checkpoint
