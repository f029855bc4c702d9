"""Input protocols: how a video's frames become model inputs, how model outputs become full-size masks, and what is
memorised. Chosen by name per inference session (``protocol: official | voszoo``).

A protocol is a small strategy object: :meth:`InputProtocol.prepare` fixes the geometry of one video from its first
frame's size and returns a :class:`FrameTransform`, which the session calls for every frame. Three spaces are
involved: the *original* frame (H, W), the *model* input (hp, wp) and the *score* space (Hs, Ws) where the session
turns logits into probabilities, merges object groups and takes the argmax; what it memorises is mapped back to the
model space. The session's steps, per frame:

``image`` -> model input; model logits -> ``scores`` -> softmax -> merge groups (+ given masks from ``labels``) ->
``output`` (full-size probabilities, argmax = the saved PNG) and ``memory`` (what the model memorises).

- ``voszoo`` (:class:`VoszooProtocol`): the library's own: optional resize by ``short_side`` (bilinear), zero-pad
  right/bottom of the *normalised* frame to the stride (:class:`~voszoo.inference.preprocess.FrameGeometry`); scores
  live at the model size (the soft probabilities are memorised there) and are cropped and bilinearly resized back.
- ``official`` resolves per method (``model.official_protocol``) to the input protocol of the method's official
  evaluator:

  - ``"aot"`` (:class:`AOTOfficialProtocol`, github.com/yoxu515/aot-benchmark): ``MultiRestrictSize`` snaps each
    side so that side - 1 is a multiple of 16 (480x854 -> 481x849), the image is resized bicubically (OpenCV
    ``INTER_CUBIC``: a = -0.75, half-pixel centres, replicated border, the same kernel as torch's ``bicubic``) in
    0..255 then divided by 255 and normalised (``MultiToTensor``); the reference label is resized with torch
    ``nearest``; the stride-4 logits are bilinearly upsampled with ``align_corners=True`` straight to the original
    size (``decode_current_logits``), softmax, argmax; the argmax label map is resized back to the model size
    (``nearest``) and memorised as a one-hot mask (``update_memory``).
  - ``"stm"`` (:class:`STMOfficialProtocol`, github.com/seoungwugoh/STM; also SITVOS's official code): the frame in
    [0, 1] is zero-padded to a multiple of 16 split on both sides (``pad_divide_by``: 480x854 -> 480x864, 5 px left and
    5 px right), *then* normalised (inside the official encoders, so the padding is black); the logits are cropped
    back; the memorised probabilities are the cropped ones padded with zeros in every channel (background included).

  docs/evaluation.md writes out each step with the official file and function.

Unknown names raise ``ValueError`` naming the ``protocol`` key and the valid names; ``official`` for a model whose
paper has no official inference code raises one that says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from voszoo.inference.preprocess import FrameGeometry, image_to_tensor
from voszoo.models.base import argmax_labels
from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "AOTOfficialProtocol",
    "FrameTransform",
    "InputProtocol",
    "OFFICIAL_PROTOCOLS",
    "PROTOCOL_NAMES",
    "STMOfficialProtocol",
    "VoszooProtocol",
    "aot_official_size",
    "resolve_protocol",
    "stm_official_padding",
]

PROTOCOL_NAMES = ("official", "voszoo")
"""The values of the ``protocol`` key."""

AOT_DAVIS_MAX_LONG_EDGE = 480 * 1.3 * 800.0 / 480.0
"""``tools/eval.py``: ``TEST_MAX_LONG_EDGE = max_resolution * 800 / 480`` with ``--max_resolution`` 480 * 1.3 (its
default; ``TEST_MAX_SHORT_EDGE`` is None without multi-scale testing), i.e. 1040 pixels."""


def _tensor_image(image: np.ndarray, *, device: torch.device | str) -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in 0..255 (not normalised)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if not image.flags.writeable or not image.flags.c_contiguous:  # e.g. np.asarray(PIL image): torch warns on it
        image = np.array(image, order="C")
    return torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()


def _normalise(unit: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
    return (unit - mean) / std


class FrameTransform(ABC):
    """One video's mapping between the original frame (H, W), the model input (hp, wp) and the score space (Hs, Ws).

    Attributes: ``original`` (H, W), ``model_size`` (hp, wp), ``score_size`` (Hs, Ws).
    """

    original: tuple[int, int]
    model_size: tuple[int, int]
    score_size: tuple[int, int]

    @abstractmethod
    def image(self, image: np.ndarray, *, device: torch.device | str) -> Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, hp, wp) float32 model input, normalised."""

    @abstractmethod
    def labels(self, labels: Tensor) -> Tensor:
        """Given label map (H, W) int64 -> (Hs, Ws) int64 in the score space."""

    @abstractmethod
    def scores(self, logits: Tensor) -> Tensor:
        """Model logits (B, C, hp, wp) -> (B, C, Hs, Ws), before the softmax."""

    @abstractmethod
    def output(self, probs: Tensor) -> Tensor:
        """Probabilities (B, C, Hs, Ws) -> (B, C, H, W) at the original size."""

    @abstractmethod
    def memory(self, probs: Tensor) -> Tensor:
        """Merged probabilities (B, C, Hs, Ws), background first -> what the model memorises, (B, C, hp, wp)."""


class InputProtocol(ABC):
    """A named input protocol; :meth:`prepare` returns the :class:`FrameTransform` of one video."""

    name: str

    @abstractmethod
    def prepare(self, original: tuple[int, int], *, stride: int) -> FrameTransform:
        """The transform of a video whose frames are ``original`` = (H, W), for a model of ``stride``; raises
        ``ValueError`` if the frames are too small for the model."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# -- voszoo ---------------------------------------------------------------------------------------------------------
class _VoszooTransform(FrameTransform):
    def __init__(self, geometry: FrameGeometry) -> None:
        self.geometry = geometry
        self.original = geometry.original
        self.model_size = geometry.padded
        self.score_size = geometry.padded

    def image(self, image: np.ndarray, *, device: torch.device | str) -> Tensor:
        return self.geometry.to_model(image_to_tensor(image, device=device))

    def labels(self, labels: Tensor) -> Tensor:
        return self.geometry.to_model(labels[None, None].float(), mode="nearest")[0, 0].long()

    def scores(self, logits: Tensor) -> Tensor:
        return logits

    def output(self, probs: Tensor) -> Tensor:
        return self.geometry.from_model(probs)

    def memory(self, probs: Tensor) -> Tensor:
        return probs


class VoszooProtocol(InputProtocol):
    """voszoo's own protocol (:class:`~voszoo.inference.preprocess.FrameGeometry`): resize so the shorter side is
    ``short_side`` (None: as stored), zero-pad the normalised frame right/bottom to the stride, soft probabilities
    memorised at the model size, cropped and bilinearly resized (``align_corners=False``) back."""

    name = "voszoo"

    def __init__(self, *, short_side: int | None = None) -> None:
        self.short_side = short_side

    def prepare(self, original: tuple[int, int], *, stride: int) -> FrameTransform:
        return _VoszooTransform(FrameGeometry.create(tuple(original), stride=stride, short_side=self.short_side))


# -- AOT (aot-benchmark) --------------------------------------------------------------------------------------------
def aot_official_size(
    original: tuple[int, int],
    *,
    max_short_edge: float | None = None,
    max_long_edge: float | None = AOT_DAVIS_MAX_LONG_EDGE,
    stride: int = 16,
) -> tuple[int, int]:
    """The model input size (h, w) that aot-benchmark's ``MultiRestrictSize`` (``dataloaders/video_transforms.py``,
    scale 1, ``align_corners=True``) gives a frame of ``original`` = (H, W).

    The shorter side is limited to ``max_short_edge``, then the longer to ``max_long_edge`` (both by scaling, the
    sizes kept as floats and truncated by ``int``), then each side s with (s - 1) % stride != 0 becomes
    round((s - 1) / stride) * stride + 1 (``np.around``: halves to even). 480x854 -> 481x849.
    """
    height, width = float(original[0]), float(original[1])
    if max_short_edge is not None and min(height, width) > max_short_edge:
        scale = float(max_short_edge) / min(height, width)
        height, width = scale * height, scale * width
    if max_long_edge is not None and max(height, width) > max_long_edge:
        scale = float(max_long_edge) / max(height, width)
        height, width = scale * height, scale * width
    sides = []
    for side in (int(height), int(width)):
        if (side - 1) % stride != 0:
            side = int(np.around((side - 1) / stride) * stride + 1)
        sides.append(side)
    return sides[0], sides[1]


class _AOTOfficialTransform(FrameTransform):
    def __init__(self, original: tuple[int, int], model_size: tuple[int, int]) -> None:
        self.original = tuple(original)
        self.model_size = model_size
        self.score_size = self.original

    def image(self, image: np.ndarray, *, device: torch.device | str) -> Tensor:
        pixels = _tensor_image(image, device=device)  # 0..255 float, as cv2.imread + np.float32
        if tuple(pixels.shape[-2:]) != self.model_size:
            pixels = F.interpolate(pixels, size=self.model_size, mode="bicubic", align_corners=False)
        return _normalise(pixels / 255.0)

    def labels(self, labels: Tensor) -> Tensor:
        return labels  # the score space is the original frame

    def scores(self, logits: Tensor) -> Tensor:
        return F.interpolate(logits, size=self.original, mode="bilinear", align_corners=True)

    def output(self, probs: Tensor) -> Tensor:
        return probs

    def memory(self, probs: Tensor) -> Tensor:
        one_hot = F.one_hot(argmax_labels(probs, 1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        return F.interpolate(one_hot, size=self.model_size, mode="nearest")


class AOTOfficialProtocol(InputProtocol):
    """aot-benchmark's evaluator (``networks/managers/evaluator.py``): see the module docstring and
    :func:`aot_official_size` (its arguments are this constructor's)."""

    name = "official"

    def __init__(
        self,
        *,
        max_short_edge: float | None = None,
        max_long_edge: float | None = AOT_DAVIS_MAX_LONG_EDGE,
        size_stride: int = 16,
    ) -> None:
        self.max_short_edge = max_short_edge
        self.max_long_edge = max_long_edge
        self.size_stride = size_stride

    def prepare(self, original: tuple[int, int], *, stride: int) -> FrameTransform:
        size = aot_official_size(
            original, max_short_edge=self.max_short_edge, max_long_edge=self.max_long_edge, stride=self.size_stride
        )
        if min(size) < 2 * stride + 1:
            raise ValueError(
                f"a frame of {original[0]}x{original[1]} (AOT official model input {size[0]}x{size[1]}) is too small "
                f"for a model of stride {stride}: each side must reach at least {2 * stride + 1} pixels"
            )
        return _AOTOfficialTransform(tuple(original), size)


# -- STM (and SITVOS) -----------------------------------------------------------------------------------------------
def stm_official_padding(original: tuple[int, int], *, divisor: int = 16) -> tuple[int, int, int, int]:
    """The ``F.pad`` tuple (left, right, top, bottom) of STM's ``pad_divide_by(in_list, divisor, (H, W))``
    (``helpers.py``): each side padded up to a multiple of ``divisor``, floor(extra / 2) before and the rest after.
    480x854 -> (5, 5, 0, 0)."""
    pads = []
    for side in original:
        extra = (divisor - side % divisor) % divisor
        pads.append((extra // 2, extra - extra // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class _STMOfficialTransform(FrameTransform):
    def __init__(self, original: tuple[int, int], padding: tuple[int, int, int, int]) -> None:
        self.original = tuple(original)
        self.padding = padding
        left, right, top, bottom = padding
        self.model_size = (original[0] + top + bottom, original[1] + left + right)
        self.score_size = self.original

    def image(self, image: np.ndarray, *, device: torch.device | str) -> Tensor:
        unit = _tensor_image(image, device=device) / 255.0  # the official loader's np.array(...) / 255.
        return _normalise(F.pad(unit, self.padding))  # black padding, normalised afterwards (inside the encoders)

    def labels(self, labels: Tensor) -> Tensor:
        return labels

    def scores(self, logits: Tensor) -> Tensor:
        left, _, top, _ = self.padding
        return logits[..., top : top + self.original[0], left : left + self.original[1]]

    def output(self, probs: Tensor) -> Tensor:
        return probs

    def memory(self, probs: Tensor) -> Tensor:
        return F.pad(probs, self.padding)  # zeros in every channel, background included


class STMOfficialProtocol(InputProtocol):
    """STM's ``pad_divide_by`` (also SITVOS's ``utils/helpers.py``): see the module docstring and
    :func:`stm_official_padding`."""

    name = "official"

    def __init__(self, *, divisor: int = 16) -> None:
        self.divisor = divisor

    def prepare(self, original: tuple[int, int], *, stride: int) -> FrameTransform:
        if self.divisor % stride != 0:
            raise ValueError(f"STM official protocol: divisor {self.divisor} is not a multiple of the stride {stride}")
        padding = stm_official_padding(original, divisor=self.divisor)
        transform = _STMOfficialTransform(tuple(original), padding)
        if min(transform.model_size) < 2 * stride:
            raise ValueError(
                f"a frame of {original[0]}x{original[1]} (model input {transform.model_size[0]}x"
                f"{transform.model_size[1]}) is too small for a model of stride {stride}: each side must reach at "
                f"least {2 * stride} pixels"
            )
        return transform


OFFICIAL_PROTOCOLS: dict[str, type[InputProtocol]] = {"aot": AOTOfficialProtocol, "stm": STMOfficialProtocol}
"""``model.official_protocol`` -> the official evaluator's protocol."""


def resolve_protocol(
    protocol: str | InputProtocol | None,
    *,
    model: Any,
    short_side: int | None = None,
    model_name: str | None = None,
) -> InputProtocol:
    """The :class:`InputProtocol` named ``protocol`` (``"voszoo"`` when None) for ``model``.

    ``"official"`` is the official evaluator's protocol of the model's method (``model.official_protocol``, a key of
    :data:`OFFICIAL_PROTOCOLS`); a model without one raises ``ValueError`` saying to use ``protocol=voszoo``.
    ``short_side`` belongs to the voszoo protocol; given with ``"official"`` it raises ``ValueError`` (the official
    evaluators fix the frame size themselves). An :class:`InputProtocol` instance is returned as is.
    """
    if isinstance(protocol, InputProtocol):
        return protocol
    name = "voszoo" if protocol is None else protocol
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"protocol: unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOL_NAMES)}")
    if name == "voszoo":
        return VoszooProtocol(short_side=short_side)
    described = f"model {model_name!r} ({type(model).__name__})" if model_name else f"model {type(model).__name__}"
    official = getattr(model, "official_protocol", None)
    if official is None:
        raise ValueError(
            f"protocol=official: {described} has no official inference code to follow (its paper has none, or the "
            "model adds a module its official code lacks); use protocol=voszoo"
        )
    if official not in OFFICIAL_PROTOCOLS:
        raise ValueError(
            f"protocol=official: {described} names official protocol {official!r}; known: "
            f"{', '.join(sorted(OFFICIAL_PROTOCOLS))}"
        )
    if short_side is not None:
        raise ValueError(
            f"protocol=official fixes the frame size as the official evaluator does; short_side={short_side} belongs "
            "to protocol=voszoo (set short_side=null, or protocol=voszoo)"
        )
    return OFFICIAL_PROTOCOLS[official]()
