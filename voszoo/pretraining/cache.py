"""The pre-trained weights cache: ``weights: toyvos`` resolves to an encoder pre-trained by ``voszoo-pretrain``.

Layout, under ``$VOSZOO_CACHE`` (default ``~/.cache/voszoo``)::

    pretrained/toyvos-<architecture>-<key>.pt    the encoder's state dict + what made it (one file, written atomically)
    runs/toyvos-<architecture>-<key>/            the pre-training run (checkpoints, metrics.jsonl): resumes exactly

A missing entry whose key matches an entry shipped in the package (:func:`bundled_dir`, the default recipe's
result as ``voszoo-pretrain`` wrote it) is installed from there after the same checks; any other missing entry is
pre-trained (``voszoo-pretrain``, or ``voszoo-train`` on first use).

``<key>`` is the first 16 hex digits of the SHA-256 of the *recipe*: every setting of ``conf/pretrain.yaml`` that
changes the weights (encoder, objective, data, optimiser, schedule, steps, batch, seed), not the ones that do not
(workers, logging, checkpoint cadence). Changing the recipe therefore changes the file name: an entry made by an
older recipe is never picked up for a newer one. An entry file is checked on every load: its format, its stored
architecture and key against the requested ones, and a SHA-256 digest of its tensors; any mismatch (a stale file
copied over, a truncated download of the cache, a bit flip) raises :class:`PretrainedCacheError` naming the file,
what is wrong and the command that rebuilds it. Nothing is used silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from voszoo.data.io import VOSDataError

__all__ = [
    "ENTRY_FORMAT",
    "PretrainedCacheError",
    "bundled_dir",
    "bundled_entry_path",
    "cache_dir",
    "entry_path",
    "read_entry",
    "recipe_key",
    "run_dir",
    "tensor_digest",
    "write_entry",
]

logger = logging.getLogger(__name__)

ENTRY_FORMAT = "voszoo-pretrained-encoder/1"
TOYVOS_SOURCE = "toyvos"
"""The ``weights:`` value that names the cached ToyVOS pre-training of a backbone."""


class PretrainedCacheError(VOSDataError):
    """A cache entry is missing, unreadable, stale or corrupt; the message names the file and how to rebuild it."""


def cache_dir() -> Path:
    """``$VOSZOO_CACHE`` if set, else ``~/.cache/voszoo``."""
    return Path(os.environ.get("VOSZOO_CACHE") or "~/.cache/voszoo").expanduser()


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``recipe`` as canonical JSON (sorted keys): equal recipes, equal keys."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bundled_dir() -> Path:
    """Entries shipped inside the package (``voszoo/pretraining/bundled/``): the default recipe's result, so that a
    fresh install skips the half-hour pre-training. Used only when their key is the one asked for."""
    return Path(__file__).resolve().parent / "bundled"


def bundled_entry_path(architecture: str, key: str) -> Path:
    return bundled_dir() / f"toyvos-{architecture}-{key}.pt"


def entry_path(architecture: str, key: str) -> Path:
    return cache_dir() / "pretrained" / f"toyvos-{architecture}-{key}.pt"


def run_dir(architecture: str, key: str) -> Path:
    return cache_dir() / "runs" / f"toyvos-{architecture}-{key}"


def tensor_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_entry(
    path: Path,
    *,
    state_dict: Mapping[str, Tensor],
    architecture: str,
    key: str,
    recipe: Mapping[str, Any],
    steps: int,
    metrics: Mapping[str, Any],
) -> Path:
    """Write a cache entry atomically (a crash leaves the old entry or none, never a partial one)."""
    from voszoo.engine.checkpoint import atomic_save  # local: the engine imports torch.distributed machinery

    state = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()}
    entry = {
        "format": ENTRY_FORMAT,
        "architecture": architecture,
        "key": key,
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "steps": int(steps),
        "metrics": json.loads(json.dumps(dict(metrics), default=str)),
        "digest": tensor_digest(state),
        "state_dict": state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(entry, path)


def _pretrain_command(architecture: str) -> str:
    depth = architecture.removeprefix("resnet")
    return "voszoo-pretrain" if architecture == "resnet18" else f"voszoo-pretrain encoder.depth={depth}"


def _rebuild_hint(architecture: str) -> str:
    command = _pretrain_command(architecture)
    return f"delete it and run `{command}` (or `voszoo-train` with weights: toyvos) to rebuild it"


def read_entry(path: Path, *, architecture: str, key: str) -> dict[str, Any]:
    """The checked entry at ``path`` (see the module docstring); :class:`PretrainedCacheError` if anything is off."""
    hint = _rebuild_hint(architecture)
    if not path.is_file():
        raise PretrainedCacheError(
            f"{path}: no ToyVOS pre-trained {architecture} in the cache ($VOSZOO_CACHE={cache_dir()}); build it with "
            f"`{_pretrain_command(architecture)}` (about 30 minutes on 2 CPU cores), or let `voszoo-train` build it "
            "on first use"
        )
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a corrupt file
        summary = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedCacheError(f"{path}: unreadable cache entry ({summary}); {hint}") from error
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
        raise PretrainedCacheError(f"{path}: not a {ENTRY_FORMAT} cache entry (format {found!r}); {hint}")
    for field, expected in (("architecture", architecture), ("key", key)):
        if entry.get(field) != expected:
            raise PretrainedCacheError(
                f"{path}: stale cache entry: its {field} is {entry.get(field)!r}, the recipe asks for "
                f"{expected!r}; {hint}"
            )
    state = entry.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedCacheError(f"{path}: cache entry has no tensor state_dict; {hint}")
    if tensor_digest(state) != entry.get("digest"):
        raise PretrainedCacheError(f"{path}: corrupt cache entry: its tensors do not match the stored digest; {hint}")
    return entry
