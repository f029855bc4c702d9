"""Official checkpoints -> voszoo state dicts, strictly: every official key is mapped, merged or accounted for.

A loader that silently drops keys it cannot match gives users a model that runs but scores far below the paper
(aot-benchmark issue #63). Here every key of the official checkpoint ends in exactly one of: loaded into a voszoo
parameter or buffer (``mapped``), merged with others into one voszoo tensor (``merged``), accounted for with a stated
reason (``accounted``), or reported as ``unexpected`` (no rule) or ``unused`` (renamed, but the model has no such
tensor); voszoo tensors nobody fills are ``missing``, shape conflicts ``mismatched``. ``strict=True`` raises
:class:`CheckpointMismatchError` listing them.

STM (Oh et al., ICCV 2019; github.com/seoungwugoh/STM, weights ``STM_weights.pth``, saved from
``nn.DataParallel(STM())``, so keys start with ``module.``). Official -> voszoo names:

==============================  =================================================================
``Encoder_M.conv1``             ``memory_encoder.conv1``
``Encoder_M.conv1_m``/``_o``    ``memory_encoder.conv1_extra`` (weights concatenated: mask, other)
``Encoder_{M,Q}.bn1``           ``{memory,query}_encoder.bn1``
``Encoder_{M,Q}.res2/3/4``      ``{memory,query}_encoder.layer1/2/3``
``Encoder_{M,Q}.mean/std``      accounted: must be the ImageNet constants (voszoo normalises inputs)
``KV_M_r4.Key/Value``           ``memory_key_value.key/value``
``KV_Q_r4.Key/Value``           ``query_key_value.key/value``
``Decoder.convFM``              ``decoder.fuse``
``Decoder.ResMM``               ``decoder.res``
``Decoder.RF3``/``RF2``         ``decoder.refines.0``/``decoder.refines.1``
  ``.convFS/.ResFS/.ResMM``       ``.conv_skip/.res_skip/.res_out``
``Decoder.pred2``               ``decoder.pred``
==============================  =================================================================
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from voszoo.engine.checkpoint import load_weights_file
from voszoo.errors import UserError
from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CheckpointMismatchError",
    "ConversionReport",
    "convert_stm_state_dict",
    "load_converted",
    "load_official_stm",
    "official_source",
    "strip_prefix",
    "unwrap_state_dict",
]


_STM_PREFIXES = ("Encoder_M.", "Encoder_Q.", "KV_M_r4.", "KV_Q_r4.", "Decoder.")
_STM_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Encoder_M\.(conv1|bn1)\.(.+)$"), r"memory_encoder.\1.\2"),
    (re.compile(r"^Encoder_Q\.(conv1|bn1)\.(.+)$"), r"query_encoder.\1.\2"),
    (re.compile(r"^Encoder_M\.res([234])\.(.+)$"), "memory_encoder.layer{}.{}"),
    (re.compile(r"^Encoder_Q\.res([234])\.(.+)$"), "query_encoder.layer{}.{}"),
    (re.compile(r"^KV_M_r4\.Key\.(.+)$"), r"memory_key_value.key.\1"),
    (re.compile(r"^KV_M_r4\.Value\.(.+)$"), r"memory_key_value.value.\1"),
    (re.compile(r"^KV_Q_r4\.Key\.(.+)$"), r"query_key_value.key.\1"),
    (re.compile(r"^KV_Q_r4\.Value\.(.+)$"), r"query_key_value.value.\1"),
    (re.compile(r"^Decoder\.convFM\.(.+)$"), r"decoder.fuse.\1"),
    (re.compile(r"^Decoder\.ResMM\.(.+)$"), r"decoder.res.\1"),
    (re.compile(r"^Decoder\.RF3\.convFS\.(.+)$"), r"decoder.refines.0.conv_skip.\1"),
    (re.compile(r"^Decoder\.RF3\.ResFS\.(.+)$"), r"decoder.refines.0.res_skip.\1"),
    (re.compile(r"^Decoder\.RF3\.ResMM\.(.+)$"), r"decoder.refines.0.res_out.\1"),
    (re.compile(r"^Decoder\.RF2\.convFS\.(.+)$"), r"decoder.refines.1.conv_skip.\1"),
    (re.compile(r"^Decoder\.RF2\.ResFS\.(.+)$"), r"decoder.refines.1.res_skip.\1"),
    (re.compile(r"^Decoder\.RF2\.ResMM\.(.+)$"), r"decoder.refines.1.res_out.\1"),
    (re.compile(r"^Decoder\.pred2\.(.+)$"), r"decoder.pred.\1"),
]
_STM_MERGES = {
    "memory_encoder.conv1_extra.weight": ("Encoder_M.conv1_m.weight", "Encoder_M.conv1_o.weight"),
}
_STM_NORMALISATION = {
    f"{encoder}.{name}": values
    for encoder in ("Encoder_M", "Encoder_Q")
    for name, values in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD))
}


class CheckpointMismatchError(UserError, ValueError):
    """An official checkpoint does not fit the voszoo model; the message lists every key at fault."""


@dataclass
class ConversionReport:
    """What happened to every key. ``mapped``: official -> voszoo name; ``merged``: voszoo name -> official keys;
    ``accounted``: official key -> why it has no voszoo tensor; ``unexpected``: official keys with no rule;
    ``unused``: official keys whose voszoo name the model does not have (a differently built model);
    ``missing``: voszoo keys not filled; ``mismatched``: (voszoo key, model shape, checkpoint shape);
    ``conflicts``: human-readable value problems (e.g. normalisation buffers that are not ImageNet's)."""

    source: str = "<state dict>"
    stripped_prefix: str | None = None
    mapped: dict[str, str] = field(default_factory=dict)
    merged: dict[str, tuple[str, ...]] = field(default_factory=dict)
    accounted: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    num_parameters: int | None = None

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.unused or self.missing or self.mismatched or self.conflicts)

    def problems(self) -> str:
        """One line per problem, empty if none."""
        lines = [f"unexpected (no voszoo name): {key}" for key in self.unexpected]
        lines += [f"not used by the model: {key}" for key in self.unused]
        lines += [f"missing (not in checkpoint): {key}" for key in self.missing]
        lines += [f"mis-shaped: {key} model {list(a)} vs checkpoint {list(b)}" for key, a, b in self.mismatched]
        lines += [f"conflict: {text}" for text in self.conflicts]
        return "\n".join(lines)

    def __str__(self) -> str:
        summary = (
            f"{self.source}: {len(self.mapped)} keys mapped, {len(self.merged)} merged, {len(self.accounted)} "
            f"accounted, {len(self.unexpected)} unexpected, {len(self.unused)} unused, {len(self.missing)} missing, "
            f"{len(self.mismatched)} mis-shaped, {len(self.conflicts)} conflicts"
        )
        if self.num_parameters is not None:
            summary += f"; model parameters {self.num_parameters:,}"
        problems = self.problems()
        return summary if not problems else f"{summary}\n{problems}"


def strip_prefix(official: Mapping[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """The state dict without the ``module.`` prefix DistributedDataParallel adds when every key carries it
    (recorded in ``report.stripped_prefix``); otherwise a copy of ``official``."""
    keys = list(official)
    if keys and all(key.startswith("module.") for key in keys):
        report.stripped_prefix = "module."
        return {key[len("module.") :]: value for key, value in official.items()}
    return dict(official)


def unwrap_state_dict(checkpoint: object, source: str) -> Mapping[str, Tensor]:
    """The state dict of ``checkpoint``: itself, or its ``{"state_dict": ...}`` or ``{"model": ...}`` entry.

    Raises :class:`CheckpointMismatchError` naming ``source`` when there is no mapping of names to tensors.
    """
    if isinstance(checkpoint, Mapping):
        if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
            return checkpoint  # type: ignore[return-value]
        for wrapper in ("state_dict", "model"):
            inner = checkpoint.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return inner  # type: ignore[return-value]
    raise CheckpointMismatchError(
        f"{source}: not a state dict (a mapping of parameter names to tensors); got {type(checkpoint).__name__}"
        + (f" with keys {list(checkpoint)[:8]}" if isinstance(checkpoint, Mapping) else "")
    )


def official_source(checkpoint: str | Path | Mapping[str, Tensor], *, method: str) -> tuple[str, object]:
    """``(source, loaded object)`` of an official ``method`` checkpoint given as a ``.pth`` path (read on the CPU by
    :func:`voszoo.engine.checkpoint.load_weights_file`, which raises ``CheckpointError`` naming a missing or
    unreadable file) or as an already loaded object (source ``"<state dict>"``)."""
    if isinstance(checkpoint, (str, Path)):
        return str(checkpoint), load_weights_file(checkpoint, what=f"official {method} checkpoint")
    return "<state dict>", checkpoint


def load_converted(
    model: nn.Module,
    converted: Mapping[str, Tensor],
    report: ConversionReport,
    *,
    method: str,
    strict: bool,
    describe_unused: Callable[[str], str] = str,
    ignore_missing: Callable[[str], bool] = lambda key: False,
) -> ConversionReport:
    """Load a converted state dict into ``model`` and complete ``report``: converted keys the model lacks are
    ``unused`` (named by ``describe_unused``), shape differences ``mismatched``, model keys nobody fills ``missing``
    (except those ``ignore_missing`` accepts). If the report is not ok: ``strict`` raises
    :class:`CheckpointMismatchError` (``"official <method> checkpoint does not fit ..."``) before anything is loaded;
    otherwise a warning names the problems and the tensors that fit are loaded."""
    own = model.state_dict()
    loadable: dict[str, Tensor] = {}
    for key, value in converted.items():
        if key not in own:
            report.unused.append(describe_unused(key))
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(own[key].shape), tuple(value.shape)))
        else:
            loadable[key] = value
    report.missing = [key for key in own if key not in converted and not ignore_missing(key)]
    report.num_parameters = sum(p.numel() for p in model.parameters())
    if not report.ok:
        message = f"official {method} checkpoint does not fit {type(model).__name__}:\n{report}"
        if strict:
            raise CheckpointMismatchError(message)
        warnings.warn(message, stacklevel=3)  # the caller of load_official_<method>
    model.load_state_dict(loadable, strict=False)
    return report


def convert_stm_state_dict(
    official: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official STM state dict (with or without DataParallel's ``module.`` prefix) to voszoo's names.

    Returns the voszoo state dict and a report whose ``mapped``, ``merged``, ``accounted``, ``unexpected`` and
    ``conflicts`` are filled (``missing``/``mismatched`` need a model: see :func:`load_official_stm`). Raises
    :class:`CheckpointMismatchError` if no key at all is an STM key (a checkpoint of another model).
    """
    report = ConversionReport(source=source)
    state = strip_prefix(unwrap_state_dict(official, source), report)
    if not any(key.startswith(_STM_PREFIXES) for key in state):
        raise CheckpointMismatchError(
            f"{source} is not an official STM checkpoint: none of its {len(state)} keys starts with "
            f"{', '.join(_STM_PREFIXES)} (with or without 'module.'); first keys: {list(state)[:5]}"
        )
    converted: dict[str, Tensor] = {}
    merged_sources = {key for keys in _STM_MERGES.values() for key in keys}
    for target, parts in _STM_MERGES.items():
        present = [key for key in parts if key in state]
        if len(present) == len(parts):
            converted[target] = torch.cat([state[key] for key in parts], dim=1)
            report.merged[target] = parts
        # an incomplete merge leaves its parts unexpected (below) and its target missing (at load)
    for key, value in state.items():
        if key in merged_sources and any(key in parts for parts in report.merged.values()):
            continue
        if key in _STM_NORMALISATION:
            expected = torch.tensor(_STM_NORMALISATION[key], dtype=torch.float64)
            got = value.detach().to(torch.float64).flatten().cpu()
            if got.shape == expected.shape and torch.allclose(got, expected, atol=1e-6):
                report.accounted[key] = "ImageNet normalisation constant; voszoo inputs are normalised beforehand"
            else:
                report.conflicts.append(
                    f"{key} is {got.tolist()}, but voszoo normalises inputs with {list(_STM_NORMALISATION[key])}"
                )
            continue
        target = _map_key(key)
        if target is None:
            report.unexpected.append(key)
            continue
        converted[target] = value
        report.mapped[key] = target
    return converted, report


def _map_key(key: str) -> str | None:
    for pattern, replacement in _STM_RULES:
        match = pattern.match(key)
        if match is None:
            continue
        if "{}" in replacement:
            return replacement.format(int(match.group(1)) - 1, match.group(2))
        return match.expand(replacement)
    return None


def load_official_stm(
    model: nn.Module, checkpoint: str | Path | Mapping[str, Tensor], *, strict: bool = True
) -> ConversionReport:
    """Load an official STM checkpoint (a path to ``STM_weights.pth`` or its state dict) into a voszoo STM.

    With ``strict=True`` (default) any unexpected, missing or mis-shaped key, or a normalisation buffer that is not
    ImageNet's, raises :class:`CheckpointMismatchError` listing all of them, and the model is left untouched. With
    ``strict=False`` the tensors that fit are loaded, the rest is listed in the returned report and in a warning.
    """
    source, official = official_source(checkpoint, method="STM")
    converted, report = convert_stm_state_dict(unwrap_state_dict(official, source), source=source)

    def describe_unused(key: str) -> str:
        origin = report.merged.get(key) or [k for k, v in report.mapped.items() if v == key]
        return f"{', '.join(origin)} (-> {key})"

    return load_converted(model, converted, report, method="STM", strict=strict, describe_unused=describe_unused)
