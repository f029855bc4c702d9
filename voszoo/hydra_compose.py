"""Compose a config of voszoo's tree from Python without leaving Hydra state behind, and spell values as overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

__all__ = ["compose_config", "override_value"]


def compose_config(
    config_name: str | None, overrides: Sequence[str] = (), *, return_hydra_config: bool = False
) -> DictConfig:
    """``config_name`` (e.g. ``"train"``; None: an empty primary config) of conf/ with Hydra ``overrides``; with
    ``return_hydra_config``, the ``hydra`` node too (launcher, sweeper params, callbacks).

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
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def override_value(value: Any) -> str:
    """The right-hand side of a Hydra override setting a plain config value, as Hydra's override parser reads it
    back: ``None`` -> ``null``, booleans -> ``true``/``false``, lists and tuples -> ``[a,b]``, dicts -> ``{k:v}``, and
    strings bare where they read back as the same string, else quoted (``'1'``, ``'null'``, ``'a,b'``).

    The text is what Hydra parses (``create_model(**values)``, compose overrides); printed for a shell, quote the
    whole ``key=value`` (:func:`shlex.quote`), since brackets, braces and spaces mean something there too.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str):
        return value if _reads_back(value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"override_value: no Hydra override spelling for a {type(value).__name__} ({value!r})")


def _reads_back(text: str) -> bool:
    """Whether Hydra's override parser reads ``key=<text>`` as the string ``text`` itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"key={text}")
    except HydraException:
        return False
    return not parsed.is_sweep_override() and parsed.value() == text
