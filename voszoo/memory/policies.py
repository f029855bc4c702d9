"""Memory policies: which frames a :class:`~voszoo.memory.bank.MemoryBank` keeps long-term, and which one leaves when
over the cap. Every policy takes ``max_frames``, a hard cap on the long-term entries shared by all methods, so that
any method runs a long video in bounded memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

__all__ = [
    "MemoryEntry",
    "MemoryPolicy",
    "KeepAll",
    "EveryN",
    "FirstAndPrevious",
    "FixedCount",
    "FirstOnly",
    "PreviousOnly",
]


@dataclass
class MemoryEntry:
    """What a model wrote about one frame. ``tensors`` is model-defined, e.g. ``{"key": (B, C, H, W), ...}``."""

    frame_index: int
    tensors: dict[str, Tensor]


class MemoryPolicy(ABC):
    """Decides which written frames become long-term entries and which long-term entry leaves when over the cap.

    Frame indices are relative to the bank's first write (the reference frame), so a policy behaves the same for an
    object that first appears mid-video.

    Two class attributes serve memory ablations (SITVOS, Lan et al., AAAI 2022, Table 4): ``reads_short_term``
    (False: reads see the long-term entries only, not the previous frame) and ``keeps_reference`` (False: the
    reference frame may be evicted like any other long-term entry).
    """

    reads_short_term: ClassVar[bool] = True
    keeps_reference: ClassVar[bool] = True

    def __init__(self, *, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be None or >= 1, got {max_frames}")
        self.max_frames = max_frames

    @abstractmethod
    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        """Whether the frame written at ``relative_index`` frames after the reference joins the long-term entries."""

    def capacity(self) -> int | None:
        """Largest number of long-term entries the policy allows (``None`` = unbounded)."""
        return self.max_frames

    def evict(self, long_term: list[MemoryEntry]) -> int:
        """Index into ``long_term`` of the entry to drop when over capacity. Default: the oldest after the reference."""
        return 1 if len(long_term) > 1 else 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class KeepAll(MemoryPolicy):
    """Every frame is a long-term entry (training on short clips; ``max_frames`` still applies)."""

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return True


class EveryN(MemoryPolicy):
    """The reference frame and every ``n``-th frame after it (STM's evaluation: ``n = 5``; AOT's long-term gap).

    STM (Oh et al., ICCV 2019, Sec. 3.3 "we save a new memory frame every 5 frames") and AOT (``long_term_mem_gap``)
    both count frames since the reference; with one write per frame the two rules coincide, so both presets use
    this class with different ``n``.
    """

    def __init__(self, *, n: int = 5, max_frames: int | None = None) -> None:
        super().__init__(max_frames=max_frames)
        if n < 1:
            raise ValueError(f"EveryN: n must be >= 1, got {n}")
        self.n = n

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return relative_index % self.n == 0


class FirstAndPrevious(MemoryPolicy):
    """Only the reference frame is long-term; the previous frame is always the short-term entry."""

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return relative_index == 0


class FixedCount(MemoryPolicy):
    """A fixed total of ``count`` memory frames: the reference, the previous frame and ``count - 2`` frames between.

    SITVOS (Lan et al., AAAI 2022, Sec. 3.5, Inference) samples intermediate frames dynamically with the total fixed
    at N = 7. The paper does not say how; voszoo keeps every frame as a candidate and, once over capacity, drops the
    intermediate frame whose removal leaves the most even spacing (the one whose two neighbours are closest), so the
    kept frames stay spread over the whole past at a bounded cost. Every frame enters as a candidate, so the
    previous frame is the newest long-term entry and ``count`` is the long-term capacity. ``max_frames`` caps the
    total here; for the other policies it caps the long-term entries, the previous frame coming on top.
    """

    def __init__(self, *, count: int = 7, max_frames: int | None = None) -> None:
        super().__init__(max_frames=max_frames)
        if count < 2:
            raise ValueError(f"FixedCount: count must be >= 2 (reference + previous), got {count}")
        self.count = count

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return True

    def capacity(self) -> int:
        return self.count if self.max_frames is None else min(self.count, self.max_frames)

    def evict(self, long_term: list[MemoryEntry]) -> int:
        if len(long_term) <= 2:
            return len(long_term) - 1
        indices = [entry.frame_index for entry in long_term]
        # candidate i in 1..len-2: the gap left behind if it goes is indices[i+1] - indices[i-1]; drop the smallest,
        # the later one on ties so older context survives.
        spans = [(indices[i + 1] - indices[i - 1], -i) for i in range(1, len(indices) - 1)]
        return -min(spans)[1]


class FirstOnly(MemoryPolicy):
    """Only the reference frame, not even the previous one (SITVOS, Lan et al., AAAI 2022, Table 4 "First-only")."""

    reads_short_term = False

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return relative_index == 0


class PreviousOnly(MemoryPolicy):
    """Only the previous frame; the reference frame leaves once a later frame is written (SITVOS, Lan et al.,
    AAAI 2022, Table 4 "Previous-only"). The one long-term entry is the previous frame, so models that read long-
    and short-term entries separately see it in both."""

    keeps_reference = False

    def keep(self, relative_index: int, long_term: list[MemoryEntry]) -> bool:
        return True

    def capacity(self) -> int:
        return 1

    def evict(self, long_term: list[MemoryEntry]) -> int:
        return 0
