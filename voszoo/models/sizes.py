"""Sizes that follow from other parts are derived from the built parts, not restated in each preset.

A model's constructor takes its submodules built. A submodule whose input or output size follows from another part
(a decoder's skip channels from the encoder, AOT's FPN output from the identity bank) may instead come as a
*partial*: a config node with ``_partial_: true`` that leaves those sizes out or null, which Hydra builds into a
``functools.partial``. The model calls :func:`complete` on it with the sizes read off the built parts, so
``model/backbone@encoder=resnet18`` is one override. A size the config does set must agree with the derived one, so
an explicit override still works when it is right and fails with the key named when it is not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["complete", "complete_from_s16", "s16_size", "scale_channels"]


def complete(part: Any, *, key: str, sizes: Mapping[str, tuple[Any, str]]) -> Any:
    """``part`` built (or None): returned as it is (the model checks its sizes where they matter). ``part`` a
    ``functools.partial`` (``_partial_: true``): called with ``sizes`` (argument -> (value, where it comes from)),
    after checking that each size it already sets (not None) equals the derived value; ``key`` names it in errors
    (``"decoder"``)."""
    if not isinstance(part, functools.partial):
        return part
    given = {name: value for name, value in part.keywords.items() if value is not None}  # null: derive it
    for name, (value, source) in sizes.items():
        if name in given and _plain(given[name]) != _plain(value):
            raise ValueError(
                f"{key}.{name}={part.keywords[name]!r} disagrees with {_plain(value)!r}, {source}; leave {key}.{name} "
                "out of the config to have it derived"
            )
    return part(**{name: value for name, (value, _) in sizes.items() if name not in given})


def scale_channels(encoder: nn.Module, scales: Sequence[str], *, key: str) -> tuple[int, ...]:
    """The channels of ``encoder``'s feature maps ``scales`` (its ``channels`` dict, scale -> C); ``key`` names the
    encoder in errors."""
    channels = dict(getattr(encoder, "channels", {}))
    missing = [scale for scale in scales if scale not in channels]
    if missing:
        raise ValueError(f"{key}: its `channels` must name the scales {missing}; it has {sorted(channels)}")
    return tuple(int(channels[scale]) for scale in scales)


def s16_size(encoder: nn.Module, *, key: str) -> tuple[int, str]:
    """(``encoder``'s s16 channels, where they come from): a size for :func:`complete`."""
    return scale_channels(encoder, ("s16",), key=key)[0], f"the {key}'s s16 channels"


def complete_from_s16(part: Any, *, key: str, encoder: nn.Module, encoder_key: str, size: str = "in_channels") -> Any:
    """:func:`complete` with one size, ``size``, = ``encoder``'s s16 channels; a built ``part`` is returned as it is
    (the encoder's channels are then not read)."""
    if not isinstance(part, functools.partial):
        return part
    return complete(part, key=key, sizes={size: s16_size(encoder, key=encoder_key)})


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
