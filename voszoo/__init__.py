"""voszoo: a modular benchmark library of semi-supervised video object segmentation architectures.

Importing this package is light: it imports no model file, initialises nothing and touches no file. The registry
functions below read the config tree (``conf/model``) when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_components", "list_models"]


def list_models(*, config_dir: Any = None) -> list[str]:
    """Names of the model presets (``conf/model/<name>.yaml``, and ``<config_dir>/model/<name>.yaml``)."""
    from voszoo.models.registry import list_models as _list_models

    return _list_models(config_dir=config_dir)


def list_components(slot: str, *, config_dir: Any = None) -> list[str]:
    """Components registered for a slot (``conf/model/<slot>/<name>.yaml``), e.g. ``list_components("memory")``."""
    from voszoo.models.registry import list_components as _list_components

    return _list_components(slot, config_dir=config_dir)


def create_model(
    name: str,
    *,
    weights: Any = None,
    overrides: list[str] | tuple[str, ...] = (),
    config_dir: Any = None,
    **values: Any,
) -> Any:
    """Build model preset ``name``; ``weights``: None (random), ``"toyvos"`` (the ToyVOS pre-trained ResNet encoders)
    or a checkpoint path (an official STM/AOT checkpoint, converted strictly, or a voszoo one); ``config_dir``: a
    folder of your own presets (``<config_dir>/model/<name>.yaml``, as ``--config-dir`` on the command line). See
    :func:`voszoo.models.registry.create_model`."""
    from voszoo.models.registry import create_model as _create_model

    return _create_model(name, weights=weights, overrides=overrides, config_dir=config_dir, **values)
