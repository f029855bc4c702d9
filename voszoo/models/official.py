"""Official checkpoints of the papers, declared by the presets they fit (typed weight metadata, as torchvision's
``Weights`` and timm's ``pretrained_cfg`` are declared per model variant).

A preset whose architecture is the official one declares its weights in its YAML (a reserved model key, not passed to
the constructor)::

    official_weights:
      format: aot                     # how the file is read: a key of WEIGHT_FORMATS (the strict converter)
      files: [AOTT_PRE_YTB_DAV.pth]   # the published file names
      source: github.com/yoxu515/aot-benchmark MODEL_ZOO.md
      parameters: 5734099             # of the converted model (tests/test_official_weights.py builds and counts)

A preset that extends one with other weights or none says so (``official_weights: null``, as ``stm_r18`` does). A
:class:`WeightFormat` is one converter (:mod:`voszoo.models.convert`, :mod:`voszoo.models.convert_aot`) and the key
that only its files have. ``voszoo-eval checkpoint=<file>`` and ``voszoo.create_model(name, weights=<file>)`` convert
a file in the preset's declared format strictly; a file in another format is an error naming the presets that declare
that format (the one whose ``files`` has this file name, if any), read from the presets, not from a list kept here.
Where each file is published: docs/methods/*.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "WEIGHT_FORMATS",
    "OfficialWeights",
    "WeightFormat",
    "article",
    "load_official_checkpoint",
    "official_weights",
    "presets_with_format",
]


def _load_stm(model: Any, state: object) -> Any:
    from voszoo.models.convert import load_official_stm

    return load_official_stm(model, state, strict=True)  # type: ignore[arg-type]


def _load_aot(model: Any, state: object) -> Any:
    from voszoo.models.convert_aot import load_official_aot

    return load_official_aot(model, state, strict=True)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WeightFormat:
    """One official checkpoint format: ``name`` (as messages say it), ``signature`` (a state-dict key, or the prefix
    of keys, that only this format's files have) and ``load(model, state)`` (the strict converter, which raises
    :class:`~voszoo.models.convert.CheckpointMismatchError` listing every key that does not fit)."""

    name: str
    signature: str
    load: Callable[[Any, object], Any]

    def matches(self, state: object) -> bool:
        """Whether ``state`` (a state dict, or one under ``state_dict``, with or without ``module.``) is in this
        format; voszoo checkpoints (with ``format_version``) never are."""
        if not isinstance(state, Mapping) or "format_version" in state:
            return False
        inner = state.get("state_dict", state)
        if not isinstance(inner, Mapping):
            return False
        keys = (str(key).removeprefix("module.") for key in inner)
        return any(key == self.signature or key.startswith(f"{self.signature}.") for key in keys)


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "stm": WeightFormat(name="STM", signature="KV_M_r4", load=_load_stm),
    "aot": WeightFormat(name="AOT", signature="patch_wise_id_bank.weight", load=_load_aot),
}
"""The official checkpoint formats voszoo converts; a preset names one in ``official_weights.format``."""


@dataclass(frozen=True)
class OfficialWeights:
    """A preset's ``official_weights`` node, checked: ``format`` (a key of :data:`WEIGHT_FORMATS`), ``files`` (the
    published file names), ``source`` (where they are published) and ``parameters`` (of the converted model)."""

    format: str
    files: tuple[str, ...]
    source: str
    parameters: int

    @property
    def weight_format(self) -> WeightFormat:
        return WEIGHT_FORMATS[self.format]


def official_weights(model_cfg: Any) -> OfficialWeights | None:
    """The official weights a model config node (a composed preset) declares, or None. Raises
    :class:`~voszoo.instantiate.ConfigError` naming the key for an unknown key, a missing one or an unknown format."""
    from omegaconf import DictConfig, OmegaConf

    from voszoo.instantiate import ConfigError

    node = model_cfg.get("official_weights") if isinstance(model_cfg, Mapping) else None
    if node is None:
        return None
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    where = f"model ({model_cfg.get('name', '<unnamed>')}).official_weights"
    names = [f.name for f in fields(OfficialWeights)]
    unknown, missing = sorted(set(values) - set(names)), [n for n in names if n not in values]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing keys {missing}; it takes {names}")
    if values["format"] not in WEIGHT_FORMATS:
        raise ConfigError(
            f"{where}.format: unknown format {values['format']!r}; valid formats: {sorted(WEIGHT_FORMATS)}"
        )
    files = values["files"]
    if isinstance(files, str) or not files or not all(isinstance(name, str) for name in files):
        raise ConfigError(f"{where}.files must be a non-empty list of file names, got {files!r}")
    if not isinstance(values["parameters"], int) or values["parameters"] < 1:
        raise ConfigError(f"{where}.parameters must be a positive integer, got {values['parameters']!r}")
    return OfficialWeights(
        format=str(values["format"]), files=tuple(files), source=str(values["source"]), parameters=values["parameters"]
    )


def presets_with_format(weight_format: str, *, config_dir: Any = None) -> dict[str, OfficialWeights]:
    """``{preset: its official weights}`` of every preset (``list_models()``) that declares ``weight_format``."""
    from voszoo.models.registry import compose_model_config, list_models

    found = {}
    for preset in list_models(config_dir=config_dir):
        declared = official_weights(compose_model_config(preset, config_dir=config_dir))
        if declared is not None and declared.format == weight_format:
            found[preset] = declared
    return found


def article(name: str) -> str:
    """``name`` with its article, read as the acronyms of the methods are ("an STM", "an AOT", "a BATMAN")."""
    return f"{'an' if name[:1] in 'AEFHILMNORSX' else 'a'} {name}"


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def load_official_checkpoint(
    model: Any, path: str | Path, *, model_cfg: Any, preset_argument: str = "model", config_dir: Any = None
) -> str | None:
    """Convert the official checkpoint at ``path`` strictly into ``model``, built from ``model_cfg``, and return a
    description of it; None (and ``model`` untouched) if the file is not in any official format (a voszoo
    checkpoint, or an unreadable file, whose error the checkpoint reader gives).

    Raises :class:`voszoo.engine.checkpoint.CheckpointError` if ``model_cfg`` does not declare the file's format
    (naming the presets that do, as ``preset_argument=...``), and
    :class:`voszoo.models.convert.CheckpointMismatchError` listing the keys if it does not fit ``model``'s sizes.
    """
    from voszoo.engine.checkpoint import CheckpointError, load_weights_file

    try:
        state = load_weights_file(path)
    except CheckpointError:  # see the docstring
        return None
    found = next((key for key, candidate in WEIGHT_FORMATS.items() if candidate.matches(state)), None)
    if found is None:
        return None
    weight_format = WEIGHT_FORMATS[found]
    declared = official_weights(model_cfg)
    if declared is None or declared.format != found:  # converting would list every key of both models
        presets = presets_with_format(found, config_dir=config_dir)
        named = [preset for preset, weights in presets.items() if Path(path).name in weights.files] or list(presets)
        fits = f"{preset_argument}={_one_of(named)}" if named else "no preset declares its format"
        said = ", as its file name says" if len(named) > 1 else ""
        raise CheckpointError(
            f"{path}: this is an official {weight_format.name} checkpoint: {fits}{said} (this run builds "
            f"{article(type(model).__name__)})",
            hint=f"rerun with {preset_argument}={_one_of(named)}" if named else None,
        )
    weight_format.load(model, state)
    return f"{path} (official {weight_format.name} weights)"
