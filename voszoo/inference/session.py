"""One video at a time through any voszoo model: the only path the evaluator and the CLI use.

The session owns everything per-video that is not a model's business (DESIGN.md, section 3):
the input protocol (resizing and padding to the model stride and back, what is memorised:
:mod:`voszoo.inference.protocols`, ``protocol="voszoo"`` or ``"official"``), object ids (any set, e.g.
YouTube-VOS's 1, 3, 7), objects that first appear mid-video, more objects than a joint model's identity bank holds,
horizontal-flip test-time augmentation, ``no_grad`` and autocast on GPU, the opt-in fast paths of
:mod:`voszoo.inference.fast_paths`, and flush-to-zero of subnormal floats on the CPU for the duration of each step
(:mod:`voszoo.inference.denormals`).

Objects are tracked in *groups*: the objects that appear on the same frame form one group (split into chunks of
``model.max_objects`` for joint models), and each group has its own :class:`MemoryBank` whose reference frame is
the frame the group appeared on. Every frame is encoded once and the features are shared by all groups. The groups'
foreground probabilities are merged by soft aggregation (background = prod(1 - p_k), Oh et al. ICCV 2019, Sec. 3.4)
and each group memorises the merged result for its own objects, so that groups agree about who owns a pixel.
With a single group the model's own probabilities are used unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from voszoo.inference.denormals import flush_denormals, resolve_flush_denormal
from voszoo.inference.fast_paths import channels_last_encoders, compile_hot_modules, use_channels_last
from voszoo.inference.protocols import FrameTransform, InputProtocol, resolve_protocol
from voszoo.layers.aggregation import soft_aggregate
from voszoo.memory import MemoryBank, MemoryPolicy
from voszoo.models.base import VOSModel, argmax_labels

__all__ = ["InferenceSession", "StepResult"]


@dataclass
class StepResult:
    """Output of one frame. ``labels``: (H, W) int64 with the caller's object ids (0 = background);
    ``probs``: (K+1, H, W) float32 at the original size, channel 0 background then ``object_ids`` in order."""

    labels: np.ndarray
    probs: Tensor
    object_ids: list[int]


@dataclass
class _Group:
    object_ids: list[int]
    memories: list[MemoryBank]  # one per test-time view (identity, then horizontal flip)


class InferenceSession:
    """Segments one video frame by frame.

    Args:
        model: a built :class:`VOSModel` (put in eval mode by the session).
        policy_factory: returns a fresh :class:`MemoryPolicy` for each new memory bank (policies may hold state).
        device: where the model runs.
        short_side: resize frames so their shorter side has this length before inference (None: original size);
            protocol ``voszoo`` only.
        protocol: the input protocol (:mod:`voszoo.inference.protocols`): ``"voszoo"`` (default: resize by
            ``short_side``, pad right/bottom), ``"official"`` (the official evaluator's input, output and memorised
            masks for the model's method; ``ValueError`` for a method without official code) or an
            :class:`~voszoo.inference.protocols.InputProtocol`.
        flip: average with a horizontally flipped view (each view keeps its own memory).
        amp: autocast dtype on CUDA (``"bf16"``, ``"fp16"``, or None / ``"none"`` for float32); ignored on CPU.
        compile_modules: ``torch.compile`` the model's hot submodules in place, falling back to eager per module if
            compilation fails (:func:`~voszoo.inference.fast_paths.compile_hot_modules`, default options).
        channels_last: channels-last weights and frames on CUDA; on the CPU, the image encoders only
            (:func:`~voszoo.inference.fast_paths.channels_last_encoders`). On by default: the same numbers up to
            float rounding, faster.
        flush_denormal: flush subnormal floats to zero on every intra-op thread during each :meth:`step`, and
            restore every thread's previous state after it (:func:`~voszoo.inference.denormals.flush_denormals`).
            ``"auto"`` (default): on for a CPU device, where a subnormal costs Intel CPUs a slow microcode path
            (STM's memory read ran twice as fast); True / False force it. Changes outputs by less than 1e-6.
    """

    def __init__(
        self,
        model: VOSModel,
        *,
        policy_factory: Callable[[], MemoryPolicy],
        device: torch.device | str = "cpu",
        short_side: int | None = None,
        protocol: str | InputProtocol = "voszoo",
        flip: bool = False,
        amp: str | None = None,
        compile_modules: bool = False,
        channels_last: bool = True,
        flush_denormal: bool | str = "auto",
    ) -> None:
        self.model = model.eval()
        self.policy_factory = policy_factory
        self.device = torch.device(device)
        self.short_side = short_side
        self.protocol = resolve_protocol(protocol, model=self.model, short_side=short_side)
        self.views = (False, True) if flip else (False,)
        if amp not in (None, "none", "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'none', 'bf16' or 'fp16', got {amp!r}")
        self.amp = None if amp == "none" else amp
        if compile_modules:
            compile_hot_modules(self.model)
        self.channels_last = use_channels_last(self.model, device=self.device) if channels_last else False
        if channels_last and not self.channels_last:
            channels_last_encoders(self.model)
        self.flush_denormal = resolve_flush_denormal(flush_denormal, device=self.device)
        self.transform: FrameTransform | None = None
        self.groups: list[_Group] = []
        self.frame_index = 0

    @property
    def object_ids(self) -> list[int]:
        return [obj for group in self.groups for obj in group.object_ids]

    def _autocast(self):
        if self.amp is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def _new_groups(self, ids: list[int]) -> list[_Group]:
        chunk = self.model.max_objects if self.model.multi_object == "joint" and self.model.max_objects else len(ids)
        groups = []
        for start in range(0, len(ids), chunk):
            members = ids[start : start + chunk]
            memories = [self.model.new_memory(self.policy_factory(), num_objects=len(members)) for _ in self.views]
            groups.append(_Group(object_ids=members, memories=memories))
        return groups

    @torch.no_grad()
    def step(self, image: np.ndarray, new_labels: np.ndarray | None = None) -> StepResult:
        """Segment the next frame.

        image: (H, W, 3) uint8 RGB. new_labels: (H, W) integer label map giving the masks of objects that appear on
        this frame (required on the first frame; ids already tracked are ignored; 255 and 0 are not objects).
        """
        with flush_denormals(self.flush_denormal):  # scoped to the step: user code between steps is unaffected
            return self._step(image, new_labels)

    def _step(self, image: np.ndarray, new_labels: np.ndarray | None) -> StepResult:
        height, width = image.shape[:2]
        if self.transform is None:
            if new_labels is None:
                raise ValueError("the first frame of a video needs new_labels (its reference masks)")
            self.transform = self.protocol.prepare((height, width), stride=self.model.stride)
        elif (height, width) != self.transform.original:
            raise ValueError(
                f"frame {self.frame_index} is {height}x{width}, the video started at {self.transform.original}"
            )
        new_ids: list[int] = []
        if new_labels is not None:
            if new_labels.shape != (height, width):
                raise ValueError(
                    f"new_labels of frame {self.frame_index} are {new_labels.shape}, the frame {height}x{width}"
                )
            present = [int(v) for v in np.unique(new_labels) if v not in (0, 255)]
            new_ids = [obj for obj in present if obj not in self.object_ids]

        with self._autocast():
            probs = self._segment_and_memorize(image, new_labels, new_ids)
        self.frame_index += 1
        full = self.transform.output(probs.float()).squeeze(0)
        full = full / full.sum(dim=0, keepdim=True).clamp_min(1e-12)
        ids = self.object_ids
        lookup = np.array([0, *ids], dtype=np.int64)
        labels = lookup[argmax_labels(full, 0).cpu().numpy()]
        if new_labels is not None and new_ids:
            # the given masks of newly appearing objects are ground truth on their first frame; on the first frame
            # of a video they are the whole answer (resizing must not blur them)
            given = np.isin(new_labels, new_ids)
            if len(ids) == len(new_ids):
                labels[:] = 0
            labels[given] = new_labels[given]
        return StepResult(labels=labels, probs=full.cpu(), object_ids=ids)

    def _segment_and_memorize(self, image: np.ndarray, new_labels: np.ndarray | None, new_ids: list[int]) -> Tensor:
        """Segment and memorise one frame; returns the merged probabilities (1, K+1, Hs, Ws) in the protocol's
        score space (the model size for ``voszoo``, the original size for the official protocols)."""
        transform = self.transform
        assert transform is not None
        frame = transform.image(image, device=self.device)
        if self.channels_last:
            frame = frame.contiguous(memory_format=torch.channels_last)
        view_frames = [frame.flip(-1) if flipped else frame for flipped in self.views]
        view_feats = [self.model.encode(x) for x in view_frames]

        # foreground probability of every tracked object, (K, Hs, Ws), averaged over views; a flipped view's logits
        # are flipped back at the model size (an official padding need not be symmetric) before the score mapping
        old_groups = list(self.groups)
        foreground = []
        background = None  # the last group's own background probability (1, Hs, Ws)
        for group in old_groups:
            per_view = []
            for view, (flipped, feats) in enumerate(zip(self.views, view_feats, strict=True)):
                logits = self.model.segment(group.memories[view], feats).float()
                logits = logits.flip(-1) if flipped else logits
                per_view.append(torch.softmax(transform.scores(logits), dim=1)[0])
            distribution = torch.stack(per_view).mean(0)
            background = distribution[:1]
            foreground.append(distribution[1:])

        if new_ids:
            assert new_labels is not None
            given = transform.labels(torch.from_numpy(new_labels.astype(np.int64)).to(self.device))
            new_masks = torch.stack([(given == obj).float() for obj in new_ids])
            if foreground:
                keep = 1.0 - new_masks.sum(0, keepdim=True).clamp(max=1.0)
                foreground = [p * keep for p in foreground]
            foreground.append(new_masks)
            self.groups.extend(self._new_groups(new_ids))

        fg = torch.cat(foreground, dim=0) if foreground else torch.zeros(0, *transform.score_size, device=self.device)
        one_group = len(old_groups) == 1 and not new_ids
        if one_group:  # the group's own softmax, background included: its argmax ties break as the official code's
            assert background is not None
            probs = torch.cat([background, fg], dim=0)[None]
        elif not old_groups:  # only given masks: nothing to reconcile
            probs = torch.cat([1.0 - fg.sum(0, keepdim=True), fg], dim=0).clamp_min(0)[None]
        else:
            probs = torch.softmax(soft_aggregate(fg[None]), dim=1)

        # each group memorises the merged probabilities of its own objects, background = the rest, mapped to the
        # model input by the protocol
        offset = 0
        for group in self.groups:
            count = len(group.object_ids)
            own = probs[:, 1 + offset : 1 + offset + count]
            offset += count
            if one_group:  # its own distribution, unchanged (a hard memory mask takes the same argmax as the output)
                group_probs = probs
            else:
                group_probs = torch.cat([(1.0 - own.sum(1, keepdim=True)).clamp_min(0), own], dim=1)
            group_probs = transform.memory(group_probs)
            for view, (flipped, feats) in enumerate(zip(self.views, view_feats, strict=True)):
                view_probs = group_probs.flip(-1) if flipped else group_probs
                self.model.memorize(group.memories[view], feats, view_probs, self.frame_index)
        return probs
