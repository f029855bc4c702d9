"""Compose a config of voszoo's tree from Python without leaving Hydra state behind."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

__all__ = ["compose_config"]


def compose_config(config_name: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """``config_name`` (e.g. ``"train"``; None: an empty primary config) of conf/ with Hydra ``overrides``.

    Uses Hydra's compose API and restores a caller's own Hydra instance (inside a Hydra app, e.g. voszoo-bench), so it
    can be called from anywhere. Composition errors propagate (``hydra.errors.ConfigCompositionException``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from voszoo._paths import conf_dir

    global_hydra = GlobalHydra.instance()
    saved = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="voszoo"):
            return compose(config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
