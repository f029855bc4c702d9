"""The one place where Hydra's ``instantiate`` is called, so that errors name the config key at fault and only
allowed ``_target_`` callables are ever built.

A config's ``_target_`` names a callable that Hydra imports and calls, so a config (or a command-line override such
as ``+model.x._target_=builtins.open``) could otherwise call anything. Every ``_target_`` of a tree is checked by
:func:`check_targets` before anything is built: it must be a class under one of :data:`ALLOWED_TARGET_MODULES`, or a
callable named exactly in :data:`ALLOWED_TARGET_CALLABLES`. Users' own components are allowed by the environment
variable ``VOSZOO_ALLOWED_TARGETS`` (comma-separated: module prefixes, whose classes become allowed, and exact
dotted names, for functions), see docs/configs_and_sweeps.md. It is an environment setting, not a config key, so
that a config cannot widen its own permissions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from voszoo.errors import UserError

__all__ = [
    "ALLOWED_TARGETS_ENV",
    "ALLOWED_TARGET_CALLABLES",
    "ALLOWED_TARGET_MODULES",
    "ConfigError",
    "build",
    "check_targets",
]

ALLOWED_TARGETS_ENV = "VOSZOO_ALLOWED_TARGETS"
ALLOWED_TARGET_MODULES: tuple[str, ...] = ("voszoo", "torch.nn", "torchvision.models", "torchvision.ops")
"""Module prefixes whose classes a ``_target_`` may name (what voszoo's configs build)."""
ALLOWED_TARGET_CALLABLES: tuple[str, ...] = ("voszoo.decoders.fpn.stacked_input_channels",)
"""Functions a ``_target_`` may name: only by their exact dotted name, since a module's functions include file
writers (``voszoo.data.io.atomic_write_bytes``) where its classes are components."""


class ConfigError(UserError, ValueError):
    """A config names an unknown component or passes arguments its constructor does not take."""


def build(cfg: DictConfig | dict[str, Any], *, key: str = "<root>", **overrides: Any) -> Any:
    """Build the object described by ``cfg`` (its ``_target_`` and keyword arguments, nested objects first).

    ``key`` is the config path of ``cfg`` (e.g. ``"model.matcher"``) and appears in every error message. Every
    ``_target_`` in ``cfg`` is checked (:func:`check_targets`) before anything is built.
    """
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        shown = OmegaConf.to_yaml(cfg) if cfg is not None else None
        raise ConfigError(f"config {key!r} has no _target_; got {shown!r}")
    check_targets(cfg, key=key)
    try:
        return instantiate(cfg, _convert_="partial", **overrides)
    except InstantiationException as error:
        raise ConfigError(f"cannot build config {key!r} (_target_: {cfg._target_}): {error}") from error


def check_targets(cfg: DictConfig | ListConfig, *, key: str = "<root>") -> None:
    """Raise :class:`ConfigError` naming the config key of the first ``_target_`` in ``cfg`` (the whole tree) that
    is not allowed (see the module docstring). A target outside the allowed modules is rejected without importing
    it; one inside is imported (voszoo's modules do nothing at import) to see that it is a class."""
    modules, callables = _allowed()
    for path in _target_paths(OmegaConf.to_container(cfg, resolve=False), prefix=""):
        target = OmegaConf.select(cfg, path)  # resolves an interpolated target
        if not isinstance(target, str) or _is_allowed(target, modules=modules, callables=callables):
            continue  # a callable object passed from Python was chosen by code, not by a config
        where = path if key == "<root>" else f"{key}.{path}"
        raise ConfigError(
            f"{where}={target!r} is not an allowed _target_ (allowed: classes under {', '.join(modules)}; "
            f"functions {', '.join(callables)})",
            hint=f"to build your own components, list their modules in the environment variable "
            f"{ALLOWED_TARGETS_ENV}=mypackage (see docs/configs_and_sweeps.md)",
        )


def _allowed() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(module prefixes, exact callables): the defaults plus ``$VOSZOO_ALLOWED_TARGETS``, whose entries are both."""
    extra = tuple(entry.strip() for entry in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if entry.strip())
    return ALLOWED_TARGET_MODULES + extra, ALLOWED_TARGET_CALLABLES + extra


def _is_allowed(target: str, *, modules: tuple[str, ...], callables: tuple[str, ...]) -> bool:
    if target in callables:
        return True
    if not any(target.startswith(f"{module}.") for module in modules):
        return False
    from hydra.utils import get_object

    try:
        found = get_object(target)
    except Exception:  # noqa: BLE001 - an unknown name: instantiate reports it with the key, as before
        return True
    return isinstance(found, type)


def _target_paths(node: Any, *, prefix: str) -> Iterator[str]:
    """Dotted paths (``"a.b[0]._target_"``) of every ``_target_`` key in a plain container."""
    if isinstance(node, dict):
        for name, value in node.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            if name == "_target_":
                yield path
            else:
                yield from _target_paths(value, prefix=path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _target_paths(value, prefix=f"{prefix}[{index}]")
