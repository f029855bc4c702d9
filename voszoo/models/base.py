"""The contract every voszoo model implements, so that one trainer and one inference session serve all methods.

A model answers four calls (DESIGN.md, section 3):

- ``encode(image) -> FrameFeatures``: per-frame features, computed once per frame and reused by the two calls below
  (SITVOS's Siamese feature reuse, BATMAN's flow input and MUNet's previous-frame features all come from here).
- ``memorize(memory, feats, probs, frame_index)``: write the frame and its soft mask into the memory bank.
- ``segment(memory, feats) -> logits``: read the memory and decode the frame, (B, N+1, H, W), background first.
- ``multi_object``: ``"joint"`` (all objects at once through identities, e.g. AOT, BATMAN; at most ``max_objects``
  per pass, the session groups larger sets) or ``"per_object"`` (objects batched inside the model, then soft
  aggregation, e.g. STM, SITVOS, MUNet, MGA).

Training runs the same calls: :meth:`VOSModel.forward` unrolls a clip frame by frame (sequence training: the first
frame is memorised with its ground truth, every later frame with the model's own soft prediction) and returns the
losses. The trainer only ever sees ``out = model(clip); out["loss"].backward()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.memory import KeepAll, MemoryBank, MemoryPolicy

if TYPE_CHECKING:
    from voszoo.types import Clip

__all__ = ["FrameFeatures", "VOSModel", "argmax_labels", "detach_memory", "labels_to_probs"]

IGNORE_LABEL = 255


@dataclass
class FrameFeatures:
    """Features of one frame.

    ``image`` is the (B, 3, H, W) normalised input; ``maps`` holds named feature maps (e.g. ``"s4"``, ``"s8"``,
    ``"s16"`` for strides 4, 8, 16, each (B, C_s, H/s, W/s)); ``cache`` holds method-specific tensors computed on
    the way (e.g. the query key and value) so that ``memorize`` can reuse what ``segment`` already computed.
    """

    image: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    cache: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def labels_to_probs(labels: Tensor, num_objects: int) -> Tensor:
    """One-hot probabilities of a label map: (B, H, W) int -> (B, N+1, H, W) float, background first.

    Ignore pixels (255) and ids above ``num_objects`` count as background: a memory frame must be a distribution.
    """
    labels = labels.long()
    clean = torch.where((labels == IGNORE_LABEL) | (labels > num_objects), torch.zeros_like(labels), labels)
    return F.one_hot(clean, num_objects + 1).permute(0, 3, 1, 2).float()


def argmax_labels(scores: Tensor, dim: int) -> Tensor:
    """``scores.argmax(dim)``, the first maximum on ties, as ``max(dim).indices``: on CPU, torch's argmax over a
    non-innermost dimension (the class dimension of (B, C, H, W) maps) is about 10x slower than ``max`` (69 vs 7 ms
    for 3 x 480 x 854, benchmarks/bench_roofline.py's census), which returns the same indices."""
    return scores.max(dim=dim).indices


def detach_memory(memory: MemoryBank) -> None:
    """Cut every tensor a model stored in ``memory`` (entries and state) from the autograd graph, in place."""

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach()
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(cut(item) for item in value)
        return value

    entries = list(memory.long_term) + ([memory.short_term] if memory.short_term is not None else [])
    for entry in {id(entry): entry for entry in entries}.values():
        entry.tensors = cut(entry.tensors)
    memory.state = cut(memory.state)


class VOSModel(nn.Module, ABC):
    """Base class of every voszoo model; see the module docstring for the contract.

    Subclasses set ``multi_object`` and ``stride`` (inputs must be multiples of it: the session pads), implement
    ``encode``, ``memorize`` and ``segment``, and receive a built ``criterion`` (a module mapping logits and labels
    to a dict of named losses with the total under ``"loss"``).
    """

    multi_object: ClassVar[Literal["joint", "per_object"]]
    stride: ClassVar[int] = 16
    max_objects: int | None = None

    # -- capabilities the engine reads, declared by each model (no code elsewhere lists model classes) ---------------
    hot_modules: tuple[str, ...] | None = None
    """Attribute names of the submodules where inference spends its time (image encoders, matcher, decoder): what
    :func:`voszoo.inference.fast_paths.compile_hot_modules` compiles. An attribute set to None on an instance (an
    optional part the preset leaves out) is skipped. None: not declared, so compiling needs explicit names."""
    encoder_modules: tuple[str, ...] | None = None
    """The image encoders among ``hot_modules`` (``(B, C, H, W) -> feature maps``): channels-last on the CPU
    (:func:`voszoo.inference.fast_paths.channels_last_encoders`). ``()``: none; None: not declared (channels-last
    then leaves the model as it is and logs that it did)."""
    decoder_module: str = "decoder"
    """The submodule whose first call inside ``segment`` ends the matching stage (:mod:`voszoo.stage_timing`)."""

    @property
    def official_protocol(self) -> str | None:
        """The input protocol of this method's official evaluator, a key of
        :data:`voszoo.inference.protocols.OFFICIAL_PROTOCOLS` (``"aot"``, ``"stm"``), or None where the paper has no
        official inference code (``protocol=official`` then raises)."""
        return None

    def __init__(self, *, criterion: nn.Module | None = None) -> None:
        super().__init__()
        self.criterion = criterion

    # -- the contract -------------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, image: Tensor) -> FrameFeatures:
        """image: (B, 3, H, W) normalised, H and W multiples of ``stride``."""

    @abstractmethod
    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Write frame ``frame_index`` into ``memory``. probs: (B, N+1, H, W), background first, summing to 1."""

    @abstractmethod
    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        """Read ``memory`` for the frame of ``feats``.

        Returns logits (B, N+1, H, W) with N = ``memory.state["num_objects"]``, background first.
        """

    def new_memory(self, policy: MemoryPolicy, *, num_objects: int) -> MemoryBank:
        """An empty memory bank for a video with ``num_objects`` objects (the largest count in the batch)."""
        if self.max_objects is not None and num_objects > self.max_objects:
            raise ValueError(
                f"{type(self).__name__} segments at most {self.max_objects} objects jointly, got {num_objects}; "
                "the inference session splits larger sets into groups"
            )
        return MemoryBank(policy=policy, state={"num_objects": num_objects})

    # -- training -----------------------------------------------------------------------------------------------
    def forward(self, clip: Clip) -> dict[str, Tensor]:
        """Unroll a training clip through encode / segment / memorize and compute the losses.

        Returns ``{"loss": total, <named losses>..., "logits": (B, T-1, N+1, H, W)}`` for frames 1..T-1.
        """
        (out,) = self.training_chunks(clip, chunk_frames=None)
        return out

    def new_training_memory(self, clip: Clip, *, num_objects: int, memory_frames: int | None) -> MemoryBank:
        """The memory a training unroll writes into: every frame (capped at ``memory_frames`` long-term entries).

        Models whose training memory differs (AOT's long-term gap) or that need per-sample state override this.
        """
        return self.new_memory(KeepAll(max_frames=memory_frames), num_objects=num_objects)

    def training_chunks(
        self, clip: Clip, *, chunk_frames: int | None, memory_frames: int | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """Unroll ``clip`` in chunks of ``chunk_frames`` predicted frames, yielding each chunk's losses.

        Sequence learning (Zhou et al., shared/papers/004, Sec. 2.2): a long clip is predicted frame by frame from
        the first ground-truth mask, and the caller back-propagates each chunk's ``"loss"`` before asking for the
        next; the memory is then detached, so the graph of one chunk only (truncated back-propagation through
        time) is alive at a time and peak memory does not grow with the clip length. Each chunk's losses are
        weighted by its share of the predicted frames, so the chunks' losses sum to the whole clip's mean loss.
        ``chunk_frames=None`` is one chunk of every frame: :meth:`forward`. ``memory_frames`` caps the long-term
        memory (reference + newest frames, :class:`~voszoo.memory.KeepAll` with ``max_frames``) so a whole
        video also reads a bounded memory; None keeps every frame. Yields dicts as :meth:`forward` returns, with the
        chunk's ``"logits"``.
        """
        if self.criterion is None:
            raise RuntimeError(f"{type(self).__name__} was built without a criterion; it can only run inference")
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be None or >= 1, got {chunk_frames}")
        images, labels = clip.images, clip.labels
        num_frames = images.shape[1]
        if num_frames < 2:
            raise ValueError(f"a training clip needs at least 2 frames, got {num_frames}")
        num_objects = max(int(clip.num_objects.max()), 1)
        memory = self.new_training_memory(clip, num_objects=num_objects, memory_frames=memory_frames)
        feats = self.encode(images[:, 0])
        self.memorize(memory, feats, labels_to_probs(labels[:, 0], num_objects), 0)
        reference = self.reference_losses(memory, feats, labels[:, 0], num_objects=clip.num_objects)
        step = num_frames - 1 if chunk_frames is None else chunk_frames
        for start in range(1, num_frames, step):
            stop = min(start + step, num_frames)
            if start > 1:
                detach_memory(memory)  # the previous chunk's graph is gone: truncate back-propagation here
            all_logits = []
            for t in range(start, stop):
                feats = self.encode(images[:, t])
                logits = self.segment(memory, feats)
                all_logits.append(logits)
                if t < num_frames - 1:
                    self.memorize(memory, feats, self.training_memory_probs(logits, labels[:, t]), t)
            stacked = torch.stack(all_logits, dim=1)
            losses = self.criterion(stacked, labels[:, start:stop], num_objects=clip.num_objects)
            share = (stop - start) / (num_frames - 1)
            if share != 1.0:
                losses = {name: value * share for name, value in losses.items()}
            if reference and start == 1:  # the reference frame's terms belong to the first chunk alone
                losses = {**losses, **reference, "loss": losses["loss"] + reference["loss"]}
            yield {**losses, "logits": stacked}

    def training_memory_probs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """What a training unroll memorises for a predicted frame: its probabilities (B, N+1, H, W) from logits
        (B, N+1, H, W). ``labels`` (B, H, W) is the frame's ground truth, for models that memorise it instead in
        part of the training (AOT's teacher forcing)."""
        return torch.softmax(logits, dim=1)

    def reference_losses(
        self, memory: MemoryBank, feats: FrameFeatures, labels: Tensor, *, num_objects: Tensor
    ) -> dict[str, Tensor]:
        """Losses on the reference frame of a training clip, computed right after it is memorised: ``{"loss":
        weighted total, <named unweighted terms>...}`` added to the clip's, or {} (the default: none). AOT's
        auxiliary reference loss overrides it. labels: (B, H, W); num_objects: (B,)."""
        return {}

    def extra_repr(self) -> str:
        return f"multi_object={self.multi_object!r}, stride={self.stride}"
