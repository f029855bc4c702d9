"""The one place where Hydra's ``instantiate`` is called, so that errors name the config key at fault."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from voszoo.errors import UserError

__all__ = ["build", "ConfigError"]


class ConfigError(UserError, ValueError):
    """A config names an unknown component or passes arguments its constructor does not take."""


def build(cfg: DictConfig | dict[str, Any], *, key: str = "<root>", **overrides: Any) -> Any:
    """Build the object described by ``cfg`` (its ``_target_`` and keyword arguments, nested objects first).

    ``key`` is the config path of ``cfg`` (e.g. ``"model.matcher"``) and appears in every error message.
    """
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        shown = OmegaConf.to_yaml(cfg) if cfg is not None else None
        raise ConfigError(f"config {key!r} has no _target_; got {shown!r}")
    try:
        return instantiate(cfg, _convert_="partial", **overrides)
    except InstantiationException as error:
        raise ConfigError(f"cannot build config {key!r} (_target_: {cfg._target_}): {error}") from error
