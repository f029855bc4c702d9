"""AOT: Associating Objects with Transformers.

Yang, Wei and Yang, "Associating Objects with Transformers for Video Object Segmentation", NeurIPS 2021
(shared/papers/001: Sec. 4-5, App. A.1). Official code: github.com/yoxu515/aot-benchmark (``networks/models/aot.py``,
``networks/engines/aot_engine.py``, ``configs/models/*.py``). The variants AOT-T/S/B/L and R50-AOT-L are presets
(``conf/model/aot_*.yaml``, ``r50_aot_l.yaml``) of this one class; parameter names equal the official ones, so an
official state dict loads key for key (:mod:`voszoo.models.convert_aot`).

Components (-> voszoo):

- encoder: MobileNetV2 at stride 16 (:class:`voszoo.backbones.mobilenet.MobileNetV2Backbone`) or ResNet-50 up to
  ``layer3`` (:class:`voszoo.backbones.frozen.FreezableResNetBackbone`), frozen batch norms, first two stages frozen
  (App. A.1.2);
- ``encoder_projector``: 1x1 convolution of the encoder's last features to the LSTT width 256;
- identification embedding (Sec. 4.1, Eq. 3) and decoding (Eq. 5): :class:`voszoo.layers.identity.IdentityBank`
  (``patch_wise_id_bank``, M = 10 identities: ``max_objects = 10``, larger sets are split by the session);
- LSTT (Sec. 4.2, Eq. 6-7): :class:`voszoo.layers.lstt.LSTT` (``LSTT``), sine position embedding
  (:class:`voszoo.layers.position.SinePositionEmbedding`) on the self-attention;
- decoder: FPN with GroupNorm (:class:`voszoo.decoders.fpn.FPNHead`) on [projected encoder features, every LSTT
  output] with the encoder's stride 16/8/4 features as skips, M+1 identity logits at stride 4, bilinearly upsampled
  to the input size (``align_corners=True``).

The calls of the contract (``voszoo.models.base``):

- ``encode``: encoder, projection and position embedding;
- ``segment``: LSTT over the memory (long-term: every long-term entry; short-term: the previous frame), decoding;
  the frame's per-layer key K = linear_Q(norm2(x)) and un-fused value norm2(x) are kept in ``memory.state`` for
  the ``memorize`` of the same frame that follows;
- ``memorize``: the identification embedding E of the memorised mask is fused into the value,
  V = linear_V(norm2(x) + E) (official; the paper's Eq. 4 adds E after the projection), and (K, V) of every layer are
  written as one memory entry (``key<l>``, ``value<l>``: (B, h*w, C)). The first frame of a memory bank has no
  memory to read: the LSTT runs on the frame itself with its own identities (Sec. 4.2, "we use X^1 to replace X^m
  and X^n"; official ``add_reference_frame``). A ``memorize`` without a preceding ``segment`` of that frame on that
  bank runs the propagation itself.

Where the paper is silent, voszoo follows the official code:

- memorised masks are one-hot (argmax of the probabilities: ``memory_mask="hard"``, official
  ``MODEL_USE_PREV_PROB = False``); ``"soft"`` embeds the probabilities instead;
- identities are shuffled per sample in training (Eq. 3) and fixed (object i -> identity i) at inference, drawn at
  a bank's first write into ``memory.state["id_assignment"]`` (B, N+1) unless the caller set it; samples with fewer
  objects than the batch get -1e10 logits for the missing ones (``memory.state["objects_per_sample"]``);
- memory schedule: long-term memory = reference frame only for AOT-T/S/B (gap 9999), every 5th frame at test and
  every 2nd in training for AOT-L (``train_long_term_gap``; inference follows the preset's memory policy), short-term
  memory = the previous frame (``TEST_SHORT_TERM_MEM_SKIP = 1``);
- the encoder learns at 0.1x the learning rate (``encoder_parameter_prefixes``; App. A.1.2).

voszoo's own choices: training runs the shared unrolled forward with AOT's training memory gap instead of keeping
every frame; the official reference-frame auxiliary loss, the teacher-forced first half of training and the frozen
identity bank of the second half are not modelled (see docs/methods/aot.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.inference.memory import EveryN, MemoryBank
from voszoo.layers.position import SinePositionEmbedding
from voszoo.models.base import FrameFeatures, VOSModel

if TYPE_CHECKING:
    from voszoo.decoders.fpn import FPNHead
    from voszoo.layers.identity import IdentityBank
    from voszoo.layers.lstt import LSTT
    from voszoo.types import Clip

__all__ = ["AOT"]

ASSIGNMENT_KEY = "id_assignment"
COUNTS_KEY = "objects_per_sample"
PENDING_KEY = "aot_pending"
MEMORY_MASKS = ("hard", "soft")


def _to_tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


class AOT(VOSModel):
    """Associating Objects with Transformers, assembled from built parts (see the module docstring).

    Args:
        encoder: ``image (B, 3, H, W) -> {scale: (B, C_s, H/s, W/s)}`` with a ``channels`` dict (scale -> C_s).
        lstt: the LSTT stack (its ``d_model`` is the token width C).
        decoder: FPN head, ``(x (B, C (L+1), h, w), [s16, s8, s4]) -> (B, M+1, H/4, W/4)``.
        identity: identity bank with M identities and width C.
        criterion: training losses (:class:`voszoo.losses.SegmentationCriterion`); None for inference only.
        embed_scale: encoder output projected to the LSTT width (MobileNetV2: ``"last"``, ResNet: ``"s16"``).
        skip_scales: encoder outputs passed to the decoder, stride 16, 8, 4.
        align_corners: of the final bilinear upsampling (official ``MODEL_ALIGN_CORNERS``).
        train_long_term_gap: in training, a frame joins the long-term memory every this many frames after the
            reference (official ``TRAIN_LONG_TERM_MEM_GAP``: 9999 = reference only, 2 for AOT-L).
        memory_mask: ``"hard"`` memorises the one-hot argmax of the probabilities (official), ``"soft"`` the
            probabilities themselves.
        id_dropout: dropout on the identification embedding (0 in AOT).
    """

    multi_object = "joint"
    stride = 16
    encoder_parameter_prefixes = ("encoder",)
    # exempt from weight decay as in the official recipe (aot-benchmark ``get_trainable_params``, no_wd_keys)
    no_weight_decay_keys = ("relative_emb_v", "conv_out")

    def __init__(
        self,
        *,
        encoder: nn.Module,
        lstt: LSTT,
        decoder: FPNHead,
        identity: IdentityBank,
        criterion: nn.Module | None = None,
        embed_scale: str = "last",
        skip_scales: Sequence[str] = ("s16", "s8", "s4"),
        align_corners: bool = True,
        train_long_term_gap: int = 9999,
        memory_mask: str = "hard",
        id_dropout: float = 0.0,
    ) -> None:
        super().__init__(criterion=criterion)
        channels = dict(getattr(encoder, "channels", {}))
        skip_scales = tuple(skip_scales)
        missing = [s for s in (embed_scale, *skip_scales) if s not in channels]
        if missing:
            raise ValueError(f"AOT: the encoder's `channels` must name the scales {missing}; it has {sorted(channels)}")
        d_model = lstt.d_model
        if identity.embed_dim != d_model:
            raise ValueError(f"AOT: identity.embed_dim={identity.embed_dim} must equal lstt.d_model={d_model}")
        if decoder.out_channels != identity.num_identities + 1:
            raise ValueError(
                f"AOT: decoder.out_channels={decoder.out_channels} must be identity.num_identities + 1 = "
                f"{identity.num_identities + 1}"
            )
        expected_in = d_model * (lstt.num_layers + 1)
        if decoder.in_channels != expected_in:
            raise ValueError(
                f"AOT: decoder.in_channels={decoder.in_channels} must be d_model x (LSTT layers + 1) = {expected_in} "
                f"(projected encoder features + {lstt.num_layers} LSTT outputs)"
            )
        skip_channels = tuple(channels[s] for s in skip_scales)
        if tuple(decoder.skip_channels) != skip_channels:
            raise ValueError(
                f"AOT: decoder.skip_channels={tuple(decoder.skip_channels)} must match the encoder's {skip_scales} "
                f"channels {skip_channels}"
            )
        if memory_mask not in MEMORY_MASKS:
            raise ValueError(f"AOT: memory_mask must be one of {MEMORY_MASKS}, got {memory_mask!r}")
        if train_long_term_gap < 1:
            raise ValueError(f"AOT: train_long_term_gap must be >= 1, got {train_long_term_gap}")
        # attribute names = official state-dict names
        self.encoder = encoder
        self.encoder_projector = nn.Conv2d(channels[embed_scale], d_model, kernel_size=1)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        self.LSTT = lstt
        self.decoder = decoder
        self.patch_wise_id_bank = identity
        self.id_dropout = nn.Dropout(id_dropout)
        self.pos_generator = SinePositionEmbedding(num_pos_feats=d_model // 2, normalize=True)
        self.max_objects = identity.num_identities
        self.embed_scale = embed_scale
        self.skip_scales = skip_scales
        self.align_corners = align_corners
        self.train_long_term_gap = train_long_term_gap
        self.memory_mask = memory_mask

    # -- the contract -------------------------------------------------------------------------------------------
    def encode(self, image: Tensor) -> FrameFeatures:
        """Encoder maps, cache ``embedding`` (B, C, H/16, W/16) (projected) and ``pos`` (1, C, H/16, W/16)."""
        maps = self.encoder(image)
        embedding = self.encoder_projector(maps[self.embed_scale])
        pos = self.pos_generator(embedding)
        return FrameFeatures(image=image, maps=dict(maps), cache={"embedding": embedding, "pos": pos})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        """LSTT over the memory, FPN decoding, identification decoding: logits (B, N+1, H, W), float32 or wider."""
        embedding = feats.cache["embedding"]
        size = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        long_term, short_term = self._read(memory, size)
        outputs, frame_memories = self.LSTT(
            _to_tokens(embedding),
            size=size,
            pos=_to_tokens(feats.cache["pos"]),
            long_term=long_term,
            short_term=short_term,
        )
        memory.state[PENDING_KEY] = (embedding, frame_memories)
        return self._decode(memory, feats, outputs)

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Write the frame's per-layer (K, V) with the identification embedding of ``probs`` (B, N+1, H, W)."""
        num_objects = int(memory.state["num_objects"])
        batch = feats.image.shape[0]
        if probs.ndim != 4 or tuple(probs.shape) != (batch, num_objects + 1, *feats.size):
            raise ValueError(
                f"AOT.memorize: probs must be (B={batch}, N+1={num_objects + 1}, {feats.size[0]}, {feats.size[1]}) "
                f"for this memory and frame, got {tuple(probs.shape)}"
            )
        embedding = feats.cache["embedding"]
        size = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        first = memory.reference_index is None
        if first and ASSIGNMENT_KEY not in memory.state:  # a caller may fix the identities beforehand
            memory.state[ASSIGNMENT_KEY] = self.patch_wise_id_bank.assign(
                batch, num_objects, shuffle=self.training, device=probs.device
            )
        if self.memory_mask == "hard":
            probs = F.one_hot(probs.argmax(dim=1), num_objects + 1).permute(0, 3, 1, 2)
        masks = probs.to(embedding.dtype)
        id_emb = _to_tokens(self.id_dropout(self.patch_wise_id_bank(masks, memory.state[ASSIGNMENT_KEY])))
        if tuple(id_emb.shape[1:]) != (size[0] * size[1], self.LSTT.d_model):
            raise ValueError(
                f"AOT.memorize: the identity bank maps a {feats.size} mask to {tuple(id_emb.shape)} tokens, the "
                f"encoder to a {size} grid; use inputs whose sides are multiples of {self.stride}"
            )
        pending = memory.state.pop(PENDING_KEY, None)
        if pending is not None and pending[0] is embedding:  # segment() already propagated this frame
            frame_memories = pending[1]
        else:
            long_term, short_term = (None, None) if first else self._read(memory, size)
            _, frame_memories = self.LSTT(
                _to_tokens(embedding),
                size=size,
                pos=_to_tokens(feats.cache["pos"]),
                long_term=long_term,
                short_term=short_term,
                id_emb=id_emb if first else None,
            )
        tensors: dict[str, Tensor] = {}
        for layer, (key, value) in enumerate(self.LSTT.fuse(frame_memories, id_emb)):
            tensors[f"key{layer}"] = key
            tensors[f"value{layer}"] = value
        memory.write(frame_index, tensors)

    # -- training -----------------------------------------------------------------------------------------------
    def new_training_memory(self, clip: Clip, *, num_objects: int, memory_frames: int | None) -> MemoryBank:
        """AOT's training memory: long-term entries every ``train_long_term_gap`` frames after the reference (not
        every frame), and each sample's own object count for identification decoding."""
        memory = self.new_memory(EveryN(n=self.train_long_term_gap, max_frames=memory_frames), num_objects=num_objects)
        memory.state[COUNTS_KEY] = clip.num_objects.to(clip.images.device).long().clamp(0, num_objects)
        return memory

    # -- helpers ------------------------------------------------------------------------------------------------
    def _read(
        self, memory: MemoryBank, size: tuple[int, int]
    ) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Per-layer long-term (K, V) (B, T*h*w, C) and short-term (K, V) (B, C, h, w) of the memory."""
        if not memory.long_term or memory.short_term is None:
            raise RuntimeError("AOT: the memory is empty; memorize the reference frame first")
        short = memory.short_term.tensors
        if short["key0"].shape[1] != size[0] * size[1]:
            raise ValueError(
                f"AOT: the memory holds {short['key0'].shape[1]} tokens per frame, the current frame {size} "
                "(frames of one video must have the same size)"
            )
        long_term, short_term = [], []
        for layer in range(self.LSTT.num_layers):
            keys = memory.stack(f"key{layer}", dim=1, include_short_term=False).flatten(1, 2)
            values = memory.stack(f"value{layer}", dim=1, include_short_term=False).flatten(1, 2)
            long_term.append((keys, values))
            short_term.append((_to_map(short[f"key{layer}"], size), _to_map(short[f"value{layer}"], size)))
        return long_term, short_term

    def _decode(self, memory: MemoryBank, feats: FrameFeatures, outputs: list[Tensor]) -> Tensor:
        embedding = feats.cache["embedding"]
        size = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        x = torch.cat([embedding, *(_to_map(out, size) for out in outputs)], dim=1)
        id_logits = self.decoder(x, [feats.maps[scale] for scale in self.skip_scales])  # (B, M+1, H/4, W/4)
        id_logits = F.interpolate(id_logits, size=feats.size, mode="bilinear", align_corners=self.align_corners)
        id_logits = id_logits.to(torch.promote_types(id_logits.dtype, torch.float32))
        return self.patch_wise_id_bank.decode(
            id_logits, memory.state[ASSIGNMENT_KEY], num_objects=memory.state.get(COUNTS_KEY)
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_objects={self.max_objects}, embed_scale={self.embed_scale!r}, "
            f"train_long_term_gap={self.train_long_term_gap}, memory_mask={self.memory_mask!r}"
        )
