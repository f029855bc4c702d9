"""Models are registered by their config files: ``conf/model/<name>.yaml``. Nothing registers at import.

A model config node is the constructor node of the model (``_target_`` plus keyword arguments, nested nodes for the
built submodules) with reserved keys that are not constructor arguments:

- ``name``: the preset's name (e.g. ``stm``), reported in metrics and checkpoints;
- ``memory``: the inference memory policy node (``_target_`` a :class:`voszoo.inference.memory.MemoryPolicy`),
  chosen from the group ``model/memory``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from voszoo.instantiate import ConfigError, build

__all__ = ["RESERVED_MODEL_KEYS", "build_model", "build_memory_policy"]

RESERVED_MODEL_KEYS = ("name", "memory")


def build_model(cfg: DictConfig | dict[str, Any]) -> Any:
    """Build the model described by a model config node (reserved keys are not passed to the constructor)."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    constructor = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k not in RESERVED_MODEL_KEYS])
    name = cfg.get("name", "<unnamed>")
    model = build(constructor, key=f"model ({name})")
    from voszoo.models.base import VOSModel  # local: keep importing this module light

    if not isinstance(model, VOSModel):
        raise ConfigError(f"model config {name!r} built a {type(model).__name__}, which is not a voszoo VOSModel")
    return model


def build_memory_policy(cfg: DictConfig | dict[str, Any], **overrides: Any) -> Any:
    """Build the inference memory policy of a model config node (``cfg.memory``), e.g. ``max_frames=100``."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if "memory" not in cfg:
        raise ConfigError(f"model config {cfg.get('name', '<unnamed>')!r} has no 'memory' policy node")
    return build(cfg.memory, key="model.memory", **overrides)
