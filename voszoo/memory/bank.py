"""Per-video memory: what a VOS model has written about past frames (:mod:`voszoo.memory.policies` decide
what stays).

A :class:`MemoryBank` keeps *long-term* entries (the reference frame and frames selected by a :class:`MemoryPolicy`)
and one *short-term* entry (the most recent frame written). Models write their own tensors (keys, values, identity
embeddings, masks, flow, ...) through :meth:`MemoryBank.write` and read them back with :meth:`MemoryBank.entries`
or :meth:`MemoryBank.stack`; the bank never interprets them. Every policy takes ``max_frames``, a hard cap on the
long-term entries shared by all methods, so that any method runs a long video in bounded memory.

Without autograd (``torch.no_grad`` / ``torch.inference_mode``, as :class:`~voszoo.inference.session.InferenceSession`
runs), :meth:`MemoryBank.stack` reads from a preallocated per-name buffer that each entry is copied into once, instead
of allocating and filling a new (..., T, ...) tensor on every frame; see its docstring for what that implies.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from voszoo.memory.policies import MemoryEntry, MemoryPolicy

__all__ = ["MemoryBank"]


@dataclass
class _SlotBuffer:
    """Preallocated storage of one stacked tensor name: ``data`` is (*shape[:dim], capacity, *shape[dim:]) for
    entries of ``shape``; slot ``i`` (``data.select(dim, i)``) holds the ``i``-th read entry. ``refs[i]`` is a weak
    reference to the slot view the entry in slot ``i`` holds, so a slot whose entry changed is detected by identity."""

    data: Tensor
    dim: int
    refs: list[weakref.ref[Tensor] | None]

    @classmethod
    def allocate(cls, like: Tensor, *, dim: int, capacity: int) -> _SlotBuffer:
        shape = (*like.shape[:dim], capacity, *like.shape[dim:])
        return cls(data=torch.empty(shape, dtype=like.dtype, device=like.device), dim=dim, refs=[None] * capacity)

    @property
    def capacity(self) -> int:
        return self.data.shape[self.dim]

    def fits(self, like: Tensor) -> bool:
        """Whether entries like ``like`` can be written into these slots (same shape, dtype, device; an inference
        tensor only inside inference mode, where in-place writes into it are allowed)."""
        data = self.data
        slot_shape = data.shape[: self.dim] + data.shape[self.dim + 1 :]
        return (
            like.shape == slot_shape
            and like.dtype == data.dtype
            and like.device == data.device
            and (torch.is_inference_mode_enabled() or not data.is_inference())
        )

    def slot_of(self, tensor: Tensor) -> int | None:
        """The slot ``tensor`` is a view of (exactly: same memory, shape and strides), else None."""
        data = self.data
        slot_shape = data.shape[: self.dim] + data.shape[self.dim + 1 :]
        if data.numel() == 0 or tensor.device != data.device or tensor.shape != slot_shape:
            return None
        step = data.stride(self.dim) * data.element_size()
        offset = tensor.data_ptr() - data.data_ptr()
        if offset < 0 or offset % step or offset // step >= self.capacity:
            return None
        strides = data.stride()[: self.dim] + data.stride()[self.dim + 1 :]
        return offset // step if tensor.stride() == strides else None

    def sync(self, name: str, entries: list[MemoryEntry], tensors: list[Tensor]) -> None:
        """Make slots ``0..len(entries)-1`` hold ``tensors`` in order, copying only the slots whose entry changed,
        and point each entry's ``tensors[name]`` at its slot."""
        pending = [i for i, t in enumerate(tensors) if (ref := self.refs[i]) is None or ref() is not t]
        if not pending:
            return
        slots = {i: self.slot_of(tensors[i]) for i in pending}
        overwritten = set(pending)
        # slots are written in increasing order; eviction moves entries to lower slots (read before being written),
        # but an entry moved up by hand would read a slot already overwritten: copy it aside first (never otherwise)
        sources = {
            i: tensors[i].clone() if (j := slots[i]) is not None and j < i and j in overwritten else tensors[i]
            for i in pending
        }
        for i in pending:
            slot = self.data.select(self.dim, i)
            if slots[i] != i:
                slot.copy_(sources[i])
            entries[i].tensors[name] = slot
            self.refs[i] = weakref.ref(slot)


@dataclass
class MemoryBank:
    """The memory of one video (or of one group of objects in it).

    ``state`` holds model-defined per-video values that are not memory frames (e.g. the previous probabilities for
    motion priors, the previous image for optical flow, object counts).
    """

    policy: MemoryPolicy
    long_term: list[MemoryEntry] = field(default_factory=list)
    short_term: MemoryEntry | None = None
    state: dict[str, Any] = field(default_factory=dict)
    reference_index: int | None = None
    _buffers: dict[str, _SlotBuffer] = field(default_factory=dict, init=False, repr=False, compare=False)

    def write(self, frame_index: int, tensors: dict[str, Tensor]) -> None:
        """Record what the model computed for ``frame_index``: always the new short-term entry; long-term if the
        policy keeps it, evicting per policy while above capacity (the reference frame is never evicted unless the
        policy's ``keeps_reference`` is False). The entry keeps its own copy of the ``tensors`` dict (not of the
        tensors), because :meth:`stack` may re-point its values at the bank's buffers."""
        if self.reference_index is None:
            self.reference_index = frame_index
        entry = MemoryEntry(frame_index, dict(tensors))
        self.short_term = entry
        relative = frame_index - self.reference_index
        if relative == 0 or self.policy.keep(relative, self.long_term):
            self.long_term.append(entry)
            capacity = self.policy.capacity()
            while capacity is not None and len(self.long_term) > max(capacity, 1):
                drop = self.policy.evict(self.long_term)
                if drop == 0 and len(self.long_term) > 1 and self.policy.keeps_reference:
                    drop = 1  # the reference frame always stays
                del self.long_term[drop]

    def entries(self, *, include_short_term: bool = True) -> list[MemoryEntry]:
        """Long-term entries in write order, then the short-term one if it is not already among them (and the policy
        ``reads_short_term``)."""
        entries = list(self.long_term)
        if (
            include_short_term
            and self.policy.reads_short_term
            and self.short_term is not None
            and all(e is not self.short_term for e in entries)
        ):
            entries.append(self.short_term)
        return entries

    @property
    def frame_indices(self) -> list[int]:
        return [entry.frame_index for entry in self.entries()]

    def stack(self, name: str, *, dim: int = 2, include_short_term: bool = True) -> Tensor:
        """Tensor ``name`` of every entry (:meth:`entries` order) stacked along a new dimension ``dim``, exactly as
        ``torch.stack([e.tensors[name] for e in entries], dim=dim)`` (e.g. keys (B, C, H, W) -> (B, C, T, H, W) with
        ``dim=2``): same values, shape, dtype and device.

        With autograd enabled this *is* ``torch.stack`` (a new tensor; training graphs need their inputs untouched).
        Without it the result is a **read-only view** of a buffer the bank keeps per ``name``, valid until the next
        :meth:`write`; do not write into it in place, and ``clone()`` it to keep it longer. Each entry is copied into
        its slot once, at the first ``stack`` after it was written, and its ``tensors[name]`` then becomes a view of
        that slot, so the bank holds the frame once; evicting an entry moves the later slots down (a copy per moved
        slot, no allocation), and an entry's tensor is only valid while the entry is in the bank. The buffer holds
        ``policy.capacity() + 1`` slots at most (long-term entries plus the short-term one), growing geometrically up
        to that (without bound for an unbounded policy). It is laid out for the ``dim`` of the first call: the result
        is contiguous for that ``dim`` when the slots are full or the dimensions before ``dim`` have size 1, and for
        another ``dim`` it is the same buffer with the slot dimension moved (a non-contiguous view). Entries whose
        tensors change shape, dtype or device (all of them: e.g. a model rebuilt for more objects) get a new buffer;
        entries that disagree with each other fall back to ``torch.stack``. Entries changed by hand (``long_term``
        edited, ``tensors`` replaced) are detected by identity and re-copied.
        """
        entries = self.entries(include_short_term=include_short_term)
        if not entries:
            raise RuntimeError("MemoryBank.stack: the memory is empty; memorize the reference frame first")
        tensors = []
        for entry in entries:
            if name not in entry.tensors:
                raise KeyError(
                    f"MemoryBank.stack: no tensor {name!r} in memory entry of frame {entry.frame_index}; have "
                    f"{sorted(entry.tensors)}"
                )
            tensors.append(entry.tensors[name])
        first = tensors[0]
        if not -first.ndim - 1 <= dim <= first.ndim:
            raise IndexError(
                f"MemoryBank.stack: dim {dim} is out of range for stacking {first.ndim}-d tensors {name!r} "
                f"(valid: {-first.ndim - 1}..{first.ndim})"
            )
        dim = dim % (first.ndim + 1)
        uniform = all(t.shape == first.shape and t.dtype == first.dtype and t.device == first.device for t in tensors)
        if torch.is_grad_enabled() or not uniform:
            return torch.stack(tensors, dim=dim)
        count = len(tensors)
        buffer = self._buffers.get(name)
        if buffer is None or not buffer.fits(first) or buffer.capacity < count:
            bound = self._slot_bound()
            grown = 2 if buffer is None or not buffer.fits(first) else 2 * buffer.capacity
            capacity = max(count, grown if bound is None else min(grown, bound))
            layout = dim if buffer is None or not buffer.fits(first) else buffer.dim
            buffer = _SlotBuffer.allocate(first, dim=layout, capacity=capacity)
            self._buffers[name] = buffer
        buffer.sync(name, entries, tensors)
        out = buffer.data.narrow(buffer.dim, 0, count)
        return out if buffer.dim == dim else out.movedim(buffer.dim, dim)

    def _slot_bound(self) -> int | None:
        """Most entries a read can return: the long-term capacity plus the short-term entry (None: unbounded)."""
        capacity = self.policy.capacity()
        return None if capacity is None else max(capacity, 1) + 1

    def held_bytes(self) -> int:
        """Bytes of the distinct tensor storages the bank keeps alive: its entries' tensors, the buffers of
        :meth:`stack` and the tensors in ``state`` (nested in dicts, lists and tuples). A storage shared by several
        tensors (views, e.g. entries pointing into a buffer) counts once, whole."""
        storages: dict[tuple[str, int], int] = {}

        def visit(value: Any) -> None:
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                key = (str(value.device), storage.data_ptr())
                storages[key] = max(storages.get(key, 0), storage.nbytes())
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)
            elif isinstance(value, list | tuple):
                for item in value:
                    visit(item)

        held = list(self.long_term) + ([self.short_term] if self.short_term is not None else [])
        visit([entry.tensors for entry in held])
        visit(self.state)
        visit([buffer.data for buffer in self._buffers.values()])
        return sum(storages.values())

    def __len__(self) -> int:
        return len(self.entries())

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the stacking buffers (rebuilt at the next read; their weak references do not pickle)."""
        return {**self.__dict__, "_buffers": {}}
