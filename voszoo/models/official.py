"""Official checkpoints of the papers (STM's ``STM_weights.pth``, AOT's ``AOT*_*.pth``): recognise one by its keys and
load it into a voszoo model through the strict converters (:mod:`voszoo.models.convert`,
:mod:`voszoo.models.convert_aot`). Used by ``voszoo-eval checkpoint=...`` and ``voszoo.create_model(name,
weights=...)``; where each file is published: docs/methods/*.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["OFFICIAL_KINDS", "article", "load_official_checkpoint", "official_kind"]

# Official checkpoint kind -> (the voszoo class its weights fit, the presets to name).
OFFICIAL_KINDS = {
    "stm": ("voszoo.models.stm.STM", "model=stm"),
    "aot": ("voszoo.models.aot.AOT", "model=aot_t, aot_s, aot_b, aot_l or r50_aot_l, as its file name says"),
}


def article(name: str) -> str:
    """``name`` with its article, read as the acronyms of the methods are ("an STM", "an AOT", "a BATMAN")."""
    return f"{'an' if name[:1] in 'AEFHILMNORSX' else 'a'} {name}"


def official_kind(path: str | Path) -> tuple[str, dict] | None:
    """``("stm" | "aot", contents)`` if the file is an official STM checkpoint (a plain state dict with its memory
    key/value head names) or an official AOT one (its ``patch_wise_id_bank``, plain or under ``state_dict``), else
    None (voszoo checkpoints, and unreadable files, which get their error from the checkpoint reader)."""
    from voszoo.engine.checkpoint import CheckpointError, load_weights_file
    from voszoo.models.convert_aot import is_official_aot_state

    try:
        state = load_weights_file(path)
    except CheckpointError:  # see the docstring
        return None
    if isinstance(state, dict) and any(str(k).split("module.")[-1].startswith("KV_M_r4.") for k in state):
        return "stm", state
    return ("aot", state) if is_official_aot_state(state) else None


def load_official_checkpoint(model: Any, path: str | Path, *, preset_argument: str = "model") -> str | None:
    """Convert the official checkpoint at ``path`` strictly into ``model`` and return a description of it; None (and
    ``model`` untouched) if the file is not an official checkpoint.

    Raises :class:`voszoo.engine.checkpoint.CheckpointError` if it is the official checkpoint of another method than
    ``model``'s (naming the presets it fits, as ``preset_argument=...``), and
    :class:`voszoo.models.convert.CheckpointMismatchError` listing the keys if it does not fit ``model``'s sizes.
    """
    from voszoo.engine.checkpoint import CheckpointError, model_class_path

    found = official_kind(path)
    if found is None:
        return None
    kind, state = found
    fits, presets = OFFICIAL_KINDS[kind]
    presets = presets.replace("model=", f"{preset_argument}=")
    if model_class_path(model) != fits:  # converting would list every key of both models: hundreds of lines
        builds = article(type(model).__name__)
        raise CheckpointError(
            f"{path}: this is an official {kind.upper()} checkpoint: {presets} (this run builds {builds})",
            hint=f"rerun with {presets}",
        )
    if kind == "stm":
        from voszoo.models.convert import load_official_stm

        load_official_stm(model, state, strict=True)
    else:
        from voszoo.models.convert_aot import load_official_aot

        load_official_aot(model, state, strict=True)
    return f"{path} (official {kind.upper()} weights)"
