"""STM: Space-Time Memory networks.

Oh, Lee, Xu and Kim, "Video Object Segmentation using Space-Time Memory Networks", ICCV 2019. Official code:
github.com/seoungwugoh/STM (``model.py``, ``eval_DAVIS.py``; inference only, no training code). STM is the baseline
of SITVOS, MUNet and MGA (shared/papers/003, 002, 004, Sec. 2.1).

Components (paper Sec. 3.1 "Key and Value Embedding" to Sec. 3.4 "Multi-object Segmentation" -> voszoo):

- memory encoder: ResNet-50 up to ``res4`` on the frame plus the object mask and the other-objects mask
  (:class:`voszoo.backbones.ResNetBackbone` with ``extra_input_channels=2``);
- query encoder: ResNet-50 up to ``res4`` on the frame (``res3``, ``res2`` are the decoder's skips);
- key/value embedding: two 3x3 convolutions 1024 -> 128 (key) and 512 (value), one pair for the memory and one
  for the query (:class:`voszoo.layers.KeyValueProjection`);
- space-time memory read: softmax over all T*H*W memory positions of key dot products, values summed with it, then
  concatenated with the query value (:class:`voszoo.layers.SpaceTimeMemoryRead`);
- decoder: refinement decoder, 2 output channels per object (:class:`voszoo.decoders.RefineDecoder`);
- multi-object: every object is segmented independently (objects batched into the batch dimension) and the
  foreground probabilities are merged by soft aggregation (:func:`voszoo.layers.soft_aggregate`).

Where the paper is silent, voszoo follows the official code:

- the key similarity is scaled by 1/sqrt(C_k) before the softmax (``Memory.forward``);
- the memory encoder's "other objects" input for object i is clamp(sum_{j != i} p_j, 0, 1) over the memorised
  probabilities p (``STM.memorize``); at evaluation those are the soft-aggregated probabilities of the previous
  prediction (``eval_DAVIS.py`` memorises ``Es = softmax(logit)``), not a thresholded mask;
- each object's decoder output is a 2-way softmax whose foreground channel enters soft aggregation, clamped to
  [1e-7, 1 - 1e-7] (``aggregation_eps``);
- images are normalised outside the model (the official encoders hold the ImageNet ``mean``/``std`` as buffers;
  :mod:`voszoo.models.convert` checks they are the ImageNet values);
- memory schedule at evaluation: reference frame, every 5th frame, plus the previous frame (``eval_DAVIS.py``,
  ``Mem_every=5``) -> the ``every_n`` policy with ``n = 5`` (``conf/model/memory/every_n.yaml``).

voszoo's own choices (the official code has a single sample per batch and no training loop):

- objects a sample does not have (samples in a batch with fewer than N objects get all-zero masks) are *absent*:
  an object is present if its probability is > 0 somewhere in the first frame written to the memory bank, or
  > ``presence_threshold`` somewhere in a later one (an object appearing later in the same bank); absent objects
  get probability 0 before soft aggregation, as the official code's zero padding does. The flags live in
  ``memory.state["objects_present"]`` (B, N) bool;
- training (paper, "Two-stage Training": clips of three frames; cross-entropy loss) unrolls through
  :meth:`VOSModel.forward`: each predicted frame is memorised with its soft probabilities, gradients flowing
  through the memory (the official repository has no training code).

Optional ``motion`` slot (not in STM; MUNet, shared/papers/002, Sec. 3.1, and ``conf/model/motion/``): a module
``motion(previous_s16, current_s16) -> enhanced current_s16`` applied before the query key/value embedding. With it,
``memorize`` also writes the frame's query-encoder ``s16`` map into its memory entry (kept only on the newest entry,
the bank's short-term one), and ``segment`` embeds the query from ``motion(short-term s16, s16)``: the previous frame
at inference (the session memorises every frame) and in the training unroll; on the first frame after the reference,
the reference itself. The query key/value then depend on the memory, so ``encode`` leaves them out of the cache.

Optional ``prior`` slot (not in STM; MGA, shared/papers/004, Sec. 2.1, and ``conf/model/prior/``): a module with
``modulated_read(reader, memory_key, memory_value, query_key, query_value, *, previous_mask)`` replacing the plain
read (e.g. :class:`voszoo.layers.motion_guided.MotionGuidedPrior`). With it, ``memorize`` also writes every object's
foreground probability, area-averaged to the key grid, (B, N, h, w), on the newest entry only, and ``segment`` gives
object i's read object i's mask from the short-term entry (the previous frame; the reference on the first frame).

The official-size model has 38,925,570 parameters (38.9M); :mod:`voszoo.models.convert` loads the official
checkpoint into it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel
from voszoo.models.init import copy_matching_weights
from voszoo.models.per_object import aggregate_objects, memory_num_objects, update_presence
from voszoo.models.sizes import complete, complete_from_s16, scale_channels

__all__ = ["STM"]

MOTION_KEY = "query_s16"
PRIOR_KEY = "prior_mask"


def _value_channels(key_value: nn.Module) -> int:
    """C_v of a key/value projection (its ``value`` convolution)."""
    value = getattr(key_value, "value", None)
    if not isinstance(value, nn.Conv2d):
        raise ValueError(
            f"STM: cannot read the value channels of a {type(key_value).__name__} to size a partial decoder; "
            "build the decoder with its in_channels instead"
        )
    return int(value.out_channels)


class STM(VOSModel):
    """Space-Time Memory network assembled from built parts (see the module docstring).

    Args:
        memory_encoder: ``(image (B, 3, H, W), extra (B, 2, H, W)) -> {"s16": (B, C, H/16, W/16), ...}``, where
            ``extra`` stacks the object mask and the other-objects mask.
        query_encoder: ``image (B, 3, H, W) -> {"s16", *skip_scales}`` feature maps.
        memory_key_value, query_key_value: ``features (B, C, h, w) -> (key (B, C_k, h, w), value (B, C_v, h, w))``.
        reader: ``(memory_key (B, C_k, T, h, w), memory_value (B, C_v, T, h, w), query_key, query_value) ->
            (B, C_read, h, w)``, e.g. :class:`voszoo.layers.SpaceTimeMemoryRead`.
        decoder: ``(read, skips, *, output_size) -> (B, 2, H, W)`` logits (background, foreground).
        criterion: training losses (see :class:`voszoo.losses.SegmentationCriterion`); None for inference only.
        motion: optional ``(previous_s16 (B, C, h, w), current_s16 (B, C, h, w)) -> (B, C, h, w)`` enhancing the
            query features before ``query_key_value`` (e.g. :class:`voszoo.layers.motion_uncertainty.MotionEnhancement`,
            MUNet); None = plain STM.
        prior: optional module whose ``modulated_read(reader, memory_key, memory_value, query_key, query_value, *,
            previous_mask (B*N, 1, h, w))`` replaces ``reader`` (e.g.
            :class:`voszoo.layers.motion_guided.MotionGuidedPrior`, MGA); None = plain STM.
        tie_initial_weights: start the query encoder and query key head as copies of the memory encoder (image
            path) and memory key head; they then train independently. This is the state the official models start
            from when both encoders load the same ImageNet weights; without pretrained weights (e.g. ToyVOS on CPU)
            it makes memory and query keys comparable from the first step instead of two unrelated random networks.
        skip_scales: query feature maps passed to the decoder, coarse to fine.
        aggregation_eps: clamp of soft aggregation.
        presence_threshold: probability above which an object first written after the reference counts as present.
        object_chunk: at inference, at most this many objects go through the memory encoder and the decoder at once.
            Per-object work at 480p is mostly stride-4 activations (a 3-object STM decoder peaks at 0.53 GB, one
            object at 0.17 GB on this CPU); chunks of 1 bound the peak memory at a small batching cost, None (all
            objects at once) is the official behaviour and the fastest on a GPU. Same numbers either way. Training
            (autograd on) always takes every object at once.

    Any of ``memory_key_value``, ``query_key_value``, ``decoder`` and ``motion`` may be a partial (``_partial_:
    true``) without its sizes: the model completes it from the built encoders (their s16 channels; the query
    encoder's ``skip_scales`` channels; memory + query value channels as the decoder input), so a backbone swap is
    one override (:mod:`voszoo.models.sizes`).
    """

    multi_object = "per_object"
    stride = 16
    hot_modules = ("query_encoder", "memory_encoder", "reader", "decoder")
    encoder_modules = ("query_encoder", "memory_encoder")

    @property
    def official_protocol(self) -> str | None:
        """``"stm"`` (STM's ``pad_divide_by``, :mod:`voszoo.inference.protocols`); None with a ``motion`` module
        (MUNet) or a ``prior`` (MGA): those papers have no official code."""
        return "stm" if self.motion is None and self.prior is None else None

    # optional slots a subclass makes mandatory: slot name -> what to say when it is None (MGA: prior, MUNet: motion)
    required_slots: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        *,
        memory_encoder: nn.Module,
        query_encoder: nn.Module,
        memory_key_value: nn.Module,
        query_key_value: nn.Module,
        reader: nn.Module,
        decoder: nn.Module,
        criterion: nn.Module | None = None,
        skip_scales: Sequence[str] = ("s8", "s4"),
        aggregation_eps: float = 1e-7,
        presence_threshold: float = 0.5,
        motion: nn.Module | None = None,
        prior: nn.Module | None = None,
        tie_initial_weights: bool = False,
        object_chunk: int | None = None,
    ) -> None:
        super().__init__(criterion=criterion)
        if object_chunk is not None and object_chunk < 1:
            raise ValueError(f"{type(self).__name__}: object_chunk must be >= 1 or None, got {object_chunk}")
        self.object_chunk = object_chunk
        slots = {"motion": motion, "prior": prior}
        for slot, message in self.required_slots.items():
            if slots[slot] is None:
                raise ValueError(message)
        extra = getattr(memory_encoder, "extra_input_channels", 2)
        if extra != 2:
            raise ValueError(
                f"STM: the memory encoder takes the object mask and the other-objects mask, so it must be built "
                f"with extra_input_channels=2, got {extra}"
            )
        # a partial part (``_partial_: true``) gets its sizes from the built encoders (voszoo.models.sizes)
        skip_scales = tuple(skip_scales)
        memory_key_value = complete_from_s16(
            memory_key_value, key="memory_key_value", encoder=memory_encoder, encoder_key="memory_encoder"
        )
        query_key_value = complete_from_s16(
            query_key_value, key="query_key_value", encoder=query_encoder, encoder_key="query_encoder"
        )
        motion = complete_from_s16(
            motion, key="motion", encoder=query_encoder, encoder_key="query_encoder", size="channels"
        )
        if isinstance(decoder, partial):
            read = _value_channels(memory_key_value) + _value_channels(query_key_value)
            skips = scale_channels(query_encoder, skip_scales, key="query_encoder")
            decoder = complete(
                decoder,
                key="decoder",
                sizes={
                    "in_channels": (read, "the memory read: memory value + query value channels"),
                    "skip_channels": (skips, f"the query encoder's {skip_scales} channels"),
                },
            )
        self.memory_encoder = memory_encoder
        self.query_encoder = query_encoder
        self.memory_key_value = memory_key_value
        self.query_key_value = query_key_value
        self.reader = reader
        self.decoder = decoder
        self.skip_scales = skip_scales
        self.aggregation_eps = aggregation_eps
        self.presence_threshold = presence_threshold
        self.motion = motion
        self.prior = prior
        if tie_initial_weights:
            copy_matching_weights(source=self.memory_encoder, target=self.query_encoder)
            copy_matching_weights(source=self.memory_key_value.key, target=self.query_key_value.key)

    # -- the contract -------------------------------------------------------------------------------------------
    def encode(self, image: Tensor) -> FrameFeatures:
        """Query encoder and query key/value: maps ``s4``, ``s8``, ``s16``; cache ``key`` (B, C_k, H/16, W/16),
        ``value`` (B, C_v, H/16, W/16) (empty with a ``motion`` module: the query embedding needs the memory)."""
        maps = self.query_encoder(image)
        if self.motion is not None:
            return FrameFeatures(image=image, maps=dict(maps))
        key, value = self.query_key_value(maps["s16"])
        return FrameFeatures(image=image, maps=dict(maps), cache={"key": key, "value": value})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Encode the frame once per object and write ``key`` (B, N, C_k, h, w) and ``value`` (B, N, C_v, h, w).

        probs: (B, N+1, H, W), background first; object i's encoder input is the frame, p_i and
        clamp(sum_{j != i} p_j, 0, 1).
        """
        num_objects = memory_num_objects(memory, probs, where="STM.memorize")
        batch = probs.shape[0]
        image = feats.image
        fg = probs[:, 1:].to(image.dtype)  # (B, N, H, W)
        other = (fg.sum(dim=1, keepdim=True) - fg).clamp(0.0, 1.0)
        extra = torch.stack([fg, other], dim=2).flatten(0, 1)  # (B*N, 2, H, W)
        images = image.repeat_interleave(num_objects, dim=0)  # (B*N, 3, H, W), object-major within a sample
        step = self._chunk(images.shape[0])
        chunks = [
            self.memory_encoder(images[i : i + step], extra[i : i + step])["s16"]
            for i in range(0, images.shape[0], step)
        ]
        features = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # one chunk (training): no copy
        key, value = self.memory_key_value(features)
        update_presence(memory, fg, threshold=self.presence_threshold)
        tensors = {"key": key.unflatten(0, (batch, num_objects)), "value": value.unflatten(0, (batch, num_objects))}
        newest_only = {}  # tensors only the next frame needs: kept on the newest (short-term) entry alone
        if self.motion is not None:
            newest_only[MOTION_KEY] = feats.maps["s16"]
        if self.prior is not None:
            newest_only[PRIOR_KEY] = F.adaptive_avg_pool2d(fg, key.shape[-2:])  # (B, N, h, w)
        previous = memory.short_term
        memory.write(frame_index, {**tensors, **newest_only})
        if previous is not None and previous is not memory.short_term:
            for name in newest_only:
                previous.tensors.pop(name, None)

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        """Read the memory per object, decode, soft-aggregate: logits (B, N+1, H, W), float32 or wider."""
        num_objects = int(memory.state["num_objects"])
        keys = memory.stack("key", dim=3)  # (B, N, C_k, T, h, w)
        values = memory.stack("value", dim=3)  # (B, N, C_v, T, h, w)
        if keys.shape[1] != num_objects:
            raise ValueError(f"STM.segment: memory holds {keys.shape[1]} objects, state says {num_objects}")

        def per_object(x: Tensor) -> Tensor:
            return x.repeat_interleave(num_objects, dim=0)

        query_key, query_value = self._query_key_value(memory, feats)
        memory_kv = (keys.flatten(0, 1), values.flatten(0, 1))
        if self.prior is None:
            read = self.reader(*memory_kv, per_object(query_key), per_object(query_value))
        else:
            previous = memory.short_term
            if previous is None or PRIOR_KEY not in previous.tensors:
                raise RuntimeError(
                    "STM.segment: the prior module needs the previous frame's masks in the memory's short-term entry; "
                    "memorize every frame (at least the one before this) with this model"
                )
            mask = previous.tensors[PRIOR_KEY].flatten(0, 1).unsqueeze(1)  # (B*N, 1, h, w), object-major
            read = self.prior.modulated_read(
                self.reader, *memory_kv, per_object(query_key), per_object(query_value), previous_mask=mask
            )
        skips = [feats.maps[scale] for scale in self.skip_scales]  # shared by the objects (skip_repeats)
        logits = self.decoder(  # (B*N, 2, H, W)
            read, skips, output_size=feats.size, skip_repeats=num_objects, chunk_size=self._chunk(read.shape[0])
        )
        return aggregate_objects(logits, memory, num_objects=num_objects, eps=self.aggregation_eps)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _chunk(self, rows: int) -> int:
        """Rows of per-object work done at once: ``object_chunk`` at inference, all of them with autograd on."""
        if self.object_chunk is None or torch.is_grad_enabled():
            return max(rows, 1)
        return self.object_chunk

    def _query_key_value(self, memory: MemoryBank, feats: FrameFeatures) -> tuple[Tensor, Tensor]:
        if self.motion is None:
            if "key" in feats.cache:
                return feats.cache["key"], feats.cache["value"]
            return self.query_key_value(feats.maps["s16"])
        previous = memory.short_term
        if previous is None or MOTION_KEY not in previous.tensors:
            raise RuntimeError(
                "STM.segment: the motion module needs the previous frame's s16 features in the memory's short-term "
                "entry; memorize every frame (at least the one before this) with this model"
            )
        current = feats.maps["s16"]
        return self.query_key_value(self.motion(previous.tensors[MOTION_KEY].to(current.dtype), current))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, skip_scales={self.skip_scales}"
