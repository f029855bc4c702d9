"""Official AOT checkpoints -> voszoo AOT, strictly: every key is loaded or reported, none is silently dropped.

The official repository (github.com/yoxu515/aot-benchmark) saves ``{"state_dict": model.state_dict(), ...}``
(training checkpoints add the optimizer; DistributedDataParallel may prefix ``module.``); its loader keeps the keys
it can match and drops the rest, which is how users ended up with J&F 57 instead of 83 (issue #63). voszoo's
:class:`voszoo.models.aot.AOT` uses the official parameter names (``encoder.*``, ``encoder_projector.*``,
``LSTT.*``, ``decoder.*``, ``patch_wise_id_bank.*``) and the official frozen batch norms, so the conversion is the
identity on names: the work here is unwrapping, prefix stripping and the strict check. Every official key ends as
``mapped`` (same name), ``unexpected`` (not an AOT name), ``unused`` (an AOT name this model does not have, e.g. a
deeper LSTT or a DeAOT checkpoint) or ``mis-shaped``; model tensors nobody fills are ``missing``. The one exception
is ``num_batches_tracked`` of trainable batch norms (a model built with ``frozen_bn=False``): official checkpoints
have none, and the model keeps its own (it only matters for ``momentum=None``).

The report type and error are the STM converter's (:mod:`voszoo.models.convert`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from voszoo.models.convert import (
    CheckpointMismatchError,
    ConversionReport,
    load_converted,
    official_source,
    strip_prefix,
    unwrap_state_dict,
)

__all__ = ["AOT_PREFIXES", "convert_aot_state_dict", "is_official_aot_state", "load_official_aot"]

AOT_PREFIXES = ("encoder.", "encoder_projector.", "LSTT.", "decoder.", "patch_wise_id_bank.")
_SIGNATURE = "patch_wise_id_bank.weight"


def is_official_aot_state(state: object) -> bool:
    """Whether ``state`` (a state dict, or one wrapped as ``{"state_dict": ...}``, with or without ``module.``) has
    the official AOT identity bank key; voszoo checkpoints (with ``format_version``) are not."""
    if not isinstance(state, Mapping) or "format_version" in state:
        return False
    inner = state.get("state_dict", state)
    return isinstance(inner, Mapping) and any(str(k).split("module.")[-1] == _SIGNATURE for k in inner)


def convert_aot_state_dict(
    official: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Unwrap and strip an official AOT state dict; returns it with voszoo names and a report whose ``mapped`` and
    ``unexpected`` are filled (``missing``/``unused``/``mismatched`` need a model: see :func:`load_official_aot`).

    Raises :class:`CheckpointMismatchError` if no key has AOT's identity bank (a checkpoint of another model).
    """
    report = ConversionReport(source=source)
    state = strip_prefix(unwrap_state_dict(official, source), report)
    if _SIGNATURE not in state:
        raise CheckpointMismatchError(
            f"{source} is not an official AOT checkpoint: it has no {_SIGNATURE!r} (with or without 'module.'); "
            f"first keys: {list(state)[:5]}"
        )
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(AOT_PREFIXES):
            converted[key] = value
            report.mapped[key] = key
        else:
            report.unexpected.append(key)
    return converted, report


def load_official_aot(
    model: nn.Module, checkpoint: str | Path | Mapping[str, Tensor], *, strict: bool = True
) -> ConversionReport:
    """Load an official AOT checkpoint (a ``.pth`` path or the loaded object) into a voszoo AOT built with the same
    variant's preset (e.g. ``AOTL_PRE_YTB_DAV.pth`` into ``aot_l``).

    With ``strict=True`` (default) any unexpected, unused, missing or mis-shaped key raises
    :class:`CheckpointMismatchError` listing all of them, and the model is left untouched. With ``strict=False`` the
    tensors that fit are loaded and the rest is listed in the returned report and in a warning.
    """
    source, official = official_source(checkpoint, method="AOT")
    converted, report = convert_aot_state_dict(unwrap_state_dict(official, source), source=source)
    return load_converted(
        model,
        converted,
        report,
        method="AOT",
        strict=strict,
        ignore_missing=lambda key: key.endswith(".num_batches_tracked"),
    )
