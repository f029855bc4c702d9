"""Models are registered by their config files: ``conf/model/<name>.yaml``. Nothing registers at import.

Your own presets live in a folder of yours laid out like ``conf/`` (``<dir>/model/my_stm.yaml``, which may extend a
voszoo preset through its defaults list): the command-line tools find it through Hydra's ``--config-dir <dir>`` (or
``hydra.searchpath``), the functions below through ``config_dir=<dir>``. See docs/own_presets.md.

A model config node is the constructor node of the model (``_target_`` plus keyword arguments, nested nodes for the
built submodules) with reserved keys that are not constructor arguments:

- ``name``: the preset's name (e.g. ``stm``), reported in metrics and checkpoints;
- ``memory``: the inference memory policy node (``_target_`` a :class:`voszoo.memory.MemoryPolicy`),
  chosen from the group ``model/memory``;
- ``protocol`` (optional, default ``voszoo``): the inference input protocol, ``official`` or ``voszoo``
  (:mod:`voszoo.inference.protocols`); ``voszoo-eval protocol=...`` overrides it;
- ``official_weights`` (optional): the official checkpoint the preset's architecture loads, typed metadata
  (:mod:`voszoo.models.official`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, ListConfig, OmegaConf

from voszoo.instantiate import ConfigError, build

__all__ = [
    "RESERVED_MODEL_KEYS",
    "build_model",
    "build_memory_policy",
    "compose_model_config",
    "create_model",
    "list_components",
    "list_models",
    "search_path_overrides",
    "user_config_dirs",
    "weights_nodes",
    "without_weights",
]

RESERVED_MODEL_KEYS = ("name", "memory", "protocol", "official_weights")

ConfigDirs = str | os.PathLike | Sequence[str | os.PathLike] | None
"""A folder of one's own configs, several, or None (voszoo's own only)."""


def user_config_dirs(config_dir: ConfigDirs) -> list[Path]:
    """``config_dir`` as a list of absolute folders, each checked to exist."""
    if config_dir is None:
        return []
    given = [config_dir] if isinstance(config_dir, (str, os.PathLike)) else list(config_dir)
    folders = [Path(folder).expanduser().resolve() for folder in given]
    for original, folder in zip(given, folders, strict=True):
        if not folder.is_dir():
            raise ValueError(f"config_dir {str(original)!r}: no such folder ({folder})")
    return folders


def search_path_overrides(config_dir: ConfigDirs) -> list[str]:
    """The Hydra override that adds ``config_dir`` to the config search path (what ``--config-dir`` does)."""
    folders = user_config_dirs(config_dir)
    return [f"hydra.searchpath=[{','.join(repr(f'file://{folder}') for folder in folders)}]"] if folders else []


def _model_dirs(config_dir: ConfigDirs) -> list[Path]:
    from voszoo._paths import conf_dir

    return [conf_dir() / "model", *(folder / "model" for folder in user_config_dirs(config_dir))]


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


def list_models(*, config_dir: ConfigDirs = None) -> list[str]:
    """Names of the model presets: the files ``conf/model/<name>.yaml``, and ``<config_dir>/model/<name>.yaml``."""
    return sorted({path.stem for root in _model_dirs(config_dir) for path in root.glob("*.yaml")})


def list_components(slot: str, *, config_dir: ConfigDirs = None) -> list[str]:
    """Names of the components that can fill ``slot`` (a folder of ``conf/model``, e.g. ``"memory"``), with those
    in ``<config_dir>/model/<slot>``."""
    roots = _model_dirs(config_dir)
    slots = sorted({path.name for root in roots if root.is_dir() for path in root.iterdir() if path.is_dir()})
    if slot not in slots:
        raise ValueError(f"unknown component slot {slot!r}; valid slots: {', '.join(slots)}")
    return sorted({path.stem for root in roots for path in (root / slot).glob("*.yaml")})


def compose_model_config(
    name: str, overrides: list[str] | tuple[str, ...] = (), *, config_dir: ConfigDirs = None
) -> DictConfig:
    """The composed config node of model preset ``name`` with Hydra overrides relative to the model node
    (``"decoder.mid_channels=128"``, ``"memory=fixed_count"``, ``"backbone@model.query_encoder=resnet18"``);
    ``config_dir``: folder(s) of one's own configs, searched as ``--config-dir`` would be.

    Uses Hydra's compose API without leaving global state behind, and restores a caller's own Hydra instance.
    """
    from voszoo.hydra_compose import compose_config

    valid = list_models(config_dir=config_dir)
    if name not in valid:
        hint = "" if config_dir is not None else " (a preset of your own: pass config_dir=<the folder holding model/>)"
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(valid)}{hint}")
    hydra_overrides = [*search_path_overrides(config_dir), f"+model={name}"]
    model_dirs = _model_dirs(config_dir)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} must have the form key=value")
        group_key = key.split("@")[0]
        is_group = "." not in group_key and any((root / group_key).is_dir() for root in model_dirs)
        hydra_overrides.append(f"model/{key}={value}" if is_group else f"model.{key}={value}")
    try:
        cfg = compose_config(None, hydra_overrides)
    except ConfigCompositionException as error:
        _raise_missing_slot(name, error)
        raise
    return cfg.model


def presets_with_slot(slot: str) -> list[str]:
    """Model presets whose defaults list fills ``slot`` (a folder of ``conf/model``), directly or through the preset
    they extend."""
    from voszoo._paths import conf_dir

    root = conf_dir() / "model"
    defaults = {path.stem: OmegaConf.load(path).get("defaults", []) for path in sorted(root.glob("*.yaml"))}

    def has(preset: str, seen: frozenset[str] = frozenset()) -> bool:
        for entry in defaults.get(preset, []):
            if isinstance(entry, str) and entry in defaults and entry not in seen and has(entry, seen | {preset}):
                return True
            keys = entry.keys() if isinstance(entry, DictConfig | dict) else []
            if any(str(key).removeprefix("override ").split("@")[0] == slot for key in keys):
                return True
        return False

    return [preset for preset in defaults if has(preset)]


def _raise_missing_slot(name: str, error: Exception) -> None:
    """Turn Hydra's "Could not override 'model/<slot>'" into an error that says which presets have the slot."""
    match = re.search(r"Could not override 'model/([\w]+)", str(error))
    if match is None:
        return
    slot = match.group(1)
    having = presets_with_slot(slot)
    raise ConfigError(
        f"model {name!r} has no {slot!r} slot, so `{slot}=...` cannot fill it; presets with a {slot!r} slot: "
        f"{', '.join(having) if having else 'none'}"
    ) from error


def create_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    config_dir: ConfigDirs = None,
    **values: Any,
) -> Any:
    """Build model preset ``name``; keyword ``values`` override model config keys (``create_model("stm",
    **{"decoder.mid_channels": 128})``), ``overrides`` are Hydra override strings relative to the model node,
    ``config_dir`` a folder of your own configs (``create_model("my_stm", config_dir="myconf")`` reads
    ``myconf/model/my_stm.yaml``).

    ``weights``:

    - None: what the preset says (the shipped presets: random initialisation);
    - ``"toyvos"``: every ResNet encoder of the preset starts from the ToyVOS pre-training (docs/pretraining.md; the
      ResNet-18 one ships with voszoo, others come from ``voszoo-pretrain``), the rest is random;
    - a path to an official checkpoint (STM's ``STM_weights.pth``, AOT's ``AOT*_*.pth``; where they are published:
      docs/methods/*.md), converted strictly into the preset (every key mapped and every shape matching, else
      :class:`voszoo.models.convert.CheckpointMismatchError` naming the keys), or to a voszoo checkpoint of this
      preset (``last.pt`` of a run).
    """
    from voszoo.backbones.weights import TOYVOS_WEIGHTS
    from voszoo.hydra_compose import override_value

    extra = [f"{key}={override_value(value)}" for key, value in values.items()]
    cfg = compose_model_config(name, [*overrides, *extra], config_dir=config_dir)
    if weights is None:
        return build_model(cfg)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"create_model: weights must be None, 'toyvos' or a checkpoint path, got {type(weights).__name__}"
        )
    if weights == TOYVOS_WEIGHTS:
        encoders = [node for node in weights_nodes(cfg) if _is_resnet(node)]
        if not encoders:
            raise ValueError(
                f"create_model: weights='toyvos' needs a ResNet encoder (the ToyVOS pre-training trains ResNets), but "
                f"preset {name!r} has none; presets with one: {', '.join(_presets_with_resnet(config_dir))}"
            )
        for node in encoders:
            node.weights = TOYVOS_WEIGHTS
        return build_model(cfg)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(
            f"create_model: weights={str(weights)!r} is neither 'toyvos' nor an existing checkpoint file (an official "
            "STM/AOT .pth or a voszoo checkpoint; docs/methods/*.md say where the official ones are published)"
        )
    from voszoo.engine.checkpoint import load_model_weights
    from voszoo.models.official import load_official_checkpoint

    model = build_model(without_weights(cfg))  # every weight is overwritten: load no encoder weights first
    if load_official_checkpoint(model, path, model_cfg=cfg, preset_argument="name", config_dir=config_dir) is None:
        load_model_weights(model, path, model_name=name, use_ema=False)
    return model


def _is_resnet(node: DictConfig) -> bool:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] in ("ResNetBackbone", "FreezableResNetBackbone")


def _presets_with_resnet(config_dir: ConfigDirs) -> list[str]:
    return [
        preset
        for preset in list_models(config_dir=config_dir)
        if any(_is_resnet(node) for node in weights_nodes(compose_model_config(preset, [], config_dir=config_dir)))
    ]


def weights_nodes(cfg: Any) -> list[DictConfig]:
    """Every config node under ``cfg`` (a model node, lists included) that has a ``weights`` key: the modules that
    may load pretrained weights (backbones, flow networks)."""
    found: list[DictConfig] = []

    def visit(node: Any) -> None:
        if isinstance(node, DictConfig):
            if "weights" in node:
                found.append(node)
            for key in node.keys():
                if key != "weights":
                    visit(node.get(key))
        elif isinstance(node, ListConfig):
            for item in node:
                visit(item)

    visit(cfg)
    return found


def without_weights(cfg: DictConfig) -> DictConfig:
    """A copy of model config ``cfg`` with every ``weights`` key set to null: nothing is loaded, downloaded or
    pre-trained when it is built. For a model whose every weight is then overwritten (a checkpoint) or irrelevant
    (speed and memory benchmarks)."""
    cfg = cfg.copy()
    for node in weights_nodes(cfg):
        node.weights = None
    return cfg


def random_weights_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config of preset ``name`` with every ``weights`` key set to null, so that nothing is loaded or
    downloaded and every module starts from random initialisation (benchmarks of speed and memory)."""
    return without_weights(compose_model_config(name, overrides))
