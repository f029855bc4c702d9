"""Wall time per inference stage of any :class:`~voszoo.models.base.VOSModel`, frame by frame.

The four stages follow the model contract (``voszoo.models.base``), so one timer serves every method without
touching its code:

- ``backbone``: ``model.encode`` (the encoder(s) and whatever the model caches per frame, e.g. STM's query key and
  value, AOT's projection and position embedding);
- ``memory_write``: ``model.memorize`` (STM's memory encoder pass per object, AOT/BATMAN's identity embedding and
  value fusion, SITVOS's mask encoder; on the first frame of a joint model's memory bank also its transformer);
- ``matching``: ``model.segment`` up to the first call of the decoder submodule (``model.decoder`` by default):
  the memory read / transformer (STM's space-time read, AOT's LSTT, SITVOS's interactive transformer, MUNet's
  MU-Layer, MGA's modulated read, BATMAN's flow, calibration, flow encoder and bilateral transformer);
- ``decoder``: ``model.segment`` from the decoder's call to its return: the decoder itself plus what follows it
  inside ``segment`` (upsampling, AOT/BATMAN's identity decoding, the per-object models' soft aggregation).

``other`` is the rest of the frame: the inference session's pre/post-processing (resize, pad, un-pad, argmax, the
session's own aggregation), so the four stages plus ``other`` add up to ``total``. Calls are timed only inside a
:meth:`StageTimer.frame` block; a stage called from inside another one (none of voszoo's models does) counts towards
the outer one. Several calls per frame (one ``segment`` per object group and test-time view) are summed.

Every voszoo model keeps its decoder under ``decoder`` (STM, MUNet, MGA, SITVOS, AOT, BATMAN); a model with
another one declares it (``decoder_module``, :class:`~voszoo.models.base.VOSModel`), or a caller passes
``decoder_attr`` (a dotted submodule path). A model whose ``segment`` never calls that submodule counts
all of ``segment`` as matching.

Timing: on CUDA ``torch.cuda.Event`` pairs on the current stream of the model's device, read after one
``torch.cuda.synchronize`` at the end of each frame; elsewhere ``time.perf_counter``, or the ``clock`` you pass
(e.g. ``time.thread_time``: CPU time, which hardly changes when other processes share the cores; any monotonic
counter works, the frames then hold 1000x its differences). :attr:`StageTimer.stage` names the stage running now,
so that an op-level observer (a dispatch mode) can charge each op to its stage. The timer only wraps the
three methods (instance attributes shadowing the class's) and adds one forward pre-hook to the decoder; it never
touches tensors, so outputs are unchanged, and leaving the ``with`` block removes both.

    with StageTimer(model) as timer:
        for image in frames:
            with timer.frame():
                session.step(image)
    timer.frames        # one dict per frame: ms per stage, "other" and "total"
    timer.mean(skip=2)  # the mean of each over the frames after the first two
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["STAGES", "StageTimer"]

STAGES = ("backbone", "memory_write", "matching", "decoder")
# contract method -> stage it is charged to ("segment" is split between matching and decoder)
_MISSING = object()  # marks a method the instance did not shadow before the timer
_METHODS = (("encode", "backbone"), ("memorize", "memory_write"), ("segment", "matching"))


class _Clock:
    """Time marks: CUDA events on ``device``'s current stream, else ``read()`` seconds (``time.perf_counter``)."""

    def __init__(self, device: torch.device, read: Callable[[], float] | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda" and read is None
        self.read = read or time.perf_counter

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return self.read()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def ms(self, start: Any, end: Any) -> float:
        if start is end:
            return 0.0
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


class StageTimer:
    """Context manager timing ``model``'s inference stages (see the module docstring) per :meth:`frame` block.

    Args:
        model: a :class:`~voszoo.models.base.VOSModel` (anything with ``encode``, ``memorize``, ``segment`` and a
            decoder submodule).
        decoder_attr: dotted path of the decoder submodule, whose first call inside ``segment`` ends matching; None:
            the one the model declares (``decoder_module``, ``"decoder"`` by default).
        device: where the model runs (CUDA: event timing); None = the device of its first parameter (CPU if none).
        clock: a function returning seconds (e.g. ``time.thread_time`` for CPU time); None: CUDA events on CUDA,
            ``time.perf_counter`` elsewhere. A clock given on CUDA is read as is (synchronise inside it if needed).

    Attributes:
        frames: one dict per completed :meth:`frame` block, milliseconds: ``backbone``, ``memory_write``,
            ``matching``, ``decoder``, ``other`` (the rest of the frame) and ``total`` (the whole block).
        stage: the stage running now: one of ``STAGES``, ``"other"`` inside a :meth:`frame` block but outside every
            stage, None outside frames.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decoder_attr: str | None = None,
        device: torch.device | str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if decoder_attr is None:
            decoder_attr = str(getattr(model, "decoder_module", "decoder"))
        missing = [name for name, _ in _METHODS if not callable(getattr(model, name, None))]
        if missing:
            raise ValueError(f"StageTimer: {type(model).__name__} has no {', '.join(missing)} method (not a VOSModel)")
        try:
            decoder = model.get_submodule(decoder_attr)
        except AttributeError as error:
            raise ValueError(
                f"StageTimer: {type(model).__name__} has no decoder submodule {decoder_attr!r}; pass decoder_attr= "
                "the dotted name of the module whose call starts the decoding inside segment"
            ) from error
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.model = model
        self.decoder = decoder
        self.clock = _Clock(torch.device(device), clock)
        self.stage: str | None = None
        self.frames: list[dict[str, float]] = []
        self._active = False
        self._saved: dict[str, Any] = {}
        self._hook: Any = None
        self._marks: list[tuple[str, Any, Any]] | None = None  # (stage, start, end) of the current frame
        self._depth = 0  # > 0 while a timed stage runs: nested stage calls count towards it
        self._in_segment = False
        self._split: Any = None  # mark of the decoder's first call inside the running segment

    # -- installation ---------------------------------------------------------------------------------------------
    def __enter__(self) -> StageTimer:
        if self._active:
            raise RuntimeError("StageTimer: already active; a timer is entered once at a time")
        instance = self.model.__dict__
        for name, stage in _METHODS:
            self._saved[name] = instance.get(name, _MISSING)
            original = getattr(self.model, name)
            wrapper = self._wrap_segment(original) if name == "segment" else self._wrap(original, stage)
            instance[name] = wrapper  # an instance attribute shadows the class's method
        self._hook = self.decoder.register_forward_pre_hook(self._decoder_called)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        instance = self.model.__dict__
        for name, saved in self._saved.items():
            if saved is _MISSING:
                instance.pop(name, None)
            else:
                instance[name] = saved
        self._saved.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._active = False
        self._marks = None
        self.stage = None
        self._depth = 0
        self._in_segment = False

    # -- timing ---------------------------------------------------------------------------------------------------
    @contextmanager
    def frame(self) -> Iterator[None]:
        """Time one frame: the stages called inside the block, and the whole block as ``total``. Appends the
        frame's dict to :attr:`frames` when the block completes (not when it raises)."""
        if not self._active:
            raise RuntimeError("StageTimer.frame: enter the timer first (`with StageTimer(model) as timer:`)")
        if self._marks is not None:
            raise RuntimeError("StageTimer.frame: frames cannot be nested")
        marks: list[tuple[str, Any, Any]] = []
        self._marks = marks
        self.stage = "other"
        start = self.clock.mark()
        try:
            yield
            end = self.clock.mark()
        finally:
            self._marks = None
            self.stage = None
        self.clock.synchronize()
        record = dict.fromkeys(STAGES, 0.0)
        for stage, begin, finish in marks:
            record[stage] += self.clock.ms(begin, finish)
        total = self.clock.ms(start, end)
        record["other"] = max(total - sum(record[stage] for stage in STAGES), 0.0)
        record["total"] = total
        self.frames.append(record)

    def mean(self, *, skip: int = 0) -> dict[str, float]:
        """Mean milliseconds per frame of every key of :attr:`frames` over the frames after the first ``skip``."""
        timed = self.frames[skip:]
        if not timed:
            raise ValueError(f"StageTimer.mean: no frame after skip={skip} ({len(self.frames)} frames timed)")
        return {key: sum(frame[key] for frame in timed) / len(timed) for key in (*STAGES, "other", "total")}

    # -- wrappers and hook ----------------------------------------------------------------------------------------
    def _wrap(self, original: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            marks = self._marks
            if marks is None or self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            self.stage = stage
            try:
                start = self.clock.mark()
                result = original(*args, **kwargs)
                marks.append((stage, start, self.clock.mark()))
            finally:
                self._depth -= 1
                self.stage = "other"
            return result

        return timed

    def _wrap_segment(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            marks = self._marks
            if marks is None or self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            self._in_segment, self._split = True, None
            self.stage = "matching"
            try:
                start = self.clock.mark()
                result = original(*args, **kwargs)
                end = self.clock.mark()
                split = end if self._split is None else self._split
                marks.append(("matching", start, split))
                marks.append(("decoder", split, end))
            finally:
                self._depth -= 1
                self._in_segment, self._split = False, None
                self.stage = "other"
            return result

        return timed

    def _decoder_called(self, module: nn.Module, args: Any) -> None:
        if self._in_segment and self._split is None:
            self._split = self.clock.mark()
            self.stage = "decoder"
