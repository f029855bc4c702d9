"""The joint identity machinery shared by AOT and BATMAN.

Both methods (AOT: Yang et al., NeurIPS 2021, shared/papers/001, Sec. 4.1-4.2, Eq. 3-5; BATMAN: Yu et al., ECCV
2022, shared/papers/000, Sec. 4.1, which follows AOT's identification mechanism) segment all objects at once: a
memorised mask is embedded through an identity bank (Eq. 3), fused into the per-layer values of a transformer
(official AOT: V = linear_V(norm2(x) + E)), and the decoder's M+1 identity logits are mapped back to the objects
(Eq. 5). :class:`IdentityVOSModel` holds that shared part; a subclass registers its transformer and identity bank
under its own (official) attribute names, exposes them through :attr:`IdentityVOSModel.propagator` and
:attr:`IdentityVOSModel.id_bank`, and adds what is its own (BATMAN's bilateral encoding, through
:meth:`IdentityVOSModel._propagation_inputs`).

Memory layout: one entry per memorised frame with ``key<l>``, ``value<l>`` (B, h*w, C) for every layer l; the
memory's state holds the identity assignment (``"id_assignment"``, (B, N+1), drawn at a bank's first write unless
the caller set it: shuffled per sample in training, object i -> identity i at inference) and, in training, each
sample's object count (``"objects_per_sample"``). ``segment`` leaves the frame's un-fused per-layer memories in the
state under the subclass's ``pending_key``, so the ``memorize`` of the same frame that follows does not propagate
again; the first frame of a bank runs the transformer on itself with its own identities (AOT Sec. 4.2, official
``add_reference_frame``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.layers.lstt import map_to_tokens, tokens_to_map
from voszoo.memory import EveryN, MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel, argmax_labels, labels_to_probs
from voszoo.models.sizes import complete, scale_channels

if TYPE_CHECKING:
    from voszoo.decoders.fpn import FPNHead
    from voszoo.layers.identity import IdentityBank
    from voszoo.types import Clip

__all__ = ["ASSIGNMENT_KEY", "COUNTS_KEY", "MEMORY_MASKS", "IdentityVOSModel", "complete_decoder"]

ASSIGNMENT_KEY = "id_assignment"
COUNTS_KEY = "objects_per_sample"
REFERENCE_OUTPUTS_KEY = "reference_outputs"
MEMORY_MASKS = ("hard", "soft")


def complete_decoder(
    decoder: Any, *, encoder: nn.Module, propagator: nn.Module, identity: IdentityBank, skip_scales: Sequence[str]
) -> FPNHead:
    """The FPN decoder of a joint model, completed if it is a partial (:mod:`voszoo.models.sizes`): input d_model x
    (layers + 1), output M + 1 identity logits, skips the encoder's ``skip_scales`` channels."""
    d_model, layers = int(propagator.d_model), int(propagator.num_layers)
    return complete(
        decoder,
        key="decoder",
        sizes={
            "in_channels": (d_model * (layers + 1), f"d_model x (layers + 1) = {d_model} x ({layers} + 1)"),
            "out_channels": (identity.num_identities + 1, "identity.num_identities + 1"),
            "skip_channels": (
                scale_channels(encoder, tuple(skip_scales), key="encoder"),
                f"the encoder's {tuple(skip_scales)} channels",
            ),
        },
    )


class IdentityVOSModel(VOSModel):
    """Base of the joint (identity) models: checks and registers the encoder and its projection to the token width,
    and implements ``encode``, ``segment``, ``memorize``, the training memory, memory reading and identity decoding.

    Args:
        encoder: ``image (B, 3, H, W) -> {scale: (B, C_s, H/s, W/s)}`` with a ``channels`` dict (scale -> C_s).
        propagator: the transformer (``d_model`` C, ``num_layers`` L, ``fuse``, called as LSTT); only checked here,
            the subclass registers it.
        decoder: FPN head, ``(x (B, C (L+1), h, w), [skips]) -> (B, M+1, H/4, W/4)``; only checked here.
        identity: identity bank with M identities and width C; only checked here.
        criterion: training losses; None for inference only.
        embed_scale: encoder scale projected to C (``encoder_projector``, a 1x1 convolution).
        skip_scales: encoder scales passed to the decoder (stride 16, 8, 4).
        align_corners: of the final bilinear upsampling of the identity logits.
        train_long_term_gap: in training, a frame joins the long-term memory every this many frames after the
            reference (9999: the reference frame only).
        memory_mask: ``"hard"`` memorises the one-hot argmax of the probabilities, ``"soft"`` the probabilities.
        reference_loss_weight: weight of the auxiliary loss on the reference frame, decoded from its own
            transformer pass with its own identities, at the start of training; it falls linearly to 0 at the end
            (official ``TRAIN_AUX_LOSS_WEIGHT`` = 1 over ``TRAIN_AUX_LOSS_RATIO`` = 1 of the run). 0: none. It
            teaches identification decoding directly: the identities to decode are the ones just embedded.
        teacher_forcing: share of the run during which the training unroll memorises each predicted frame with its
            ground-truth mask; after it, the model's own prediction, with the identity embedding detached so the
            identity bank stops learning (official ``TRAIN_SEQ_TRAINING_START_RATIO`` = 0.5 and
            ``TRAIN_SEQ_TRAINING_FREEZE_PARAMS``; the official code also zeroes the bank's learning rate, here
            AdamW's momentum still moves it for a few steps). 0: always the prediction.

    Both schedules follow the trainer's :meth:`set_training_progress`; without it (a loop of your own) there is no
    schedule: predictions are memorised, the bank learns, and the reference loss has its full weight.
    """

    multi_object = "joint"
    stride = 16
    encoder_parameter_prefixes = ("encoder",)
    # exempt from weight decay as in the official recipe (aot-benchmark ``get_trainable_params``, no_wd_keys)
    no_weight_decay_keys = ("relative_emb_v", "conv_out")
    # memory.state key of the frame ``segment`` propagated last (the subclass names it)
    pending_key: ClassVar[str]
    # the transformer's attribute name (official names: AOT's ``LSTT``), also what the error messages call it
    propagator_name: ClassVar[str] = "transformer"
    encoder_modules: tuple[str, ...] = ("encoder",)

    @property
    def hot_modules(self) -> tuple[str, ...]:  # type: ignore[override]
        """The image encoder(s), the transformer (:attr:`propagator_name`) and the decoder; not the identity bank,
        the position embedding or BATMAN's RAFT flow and calibration (small, or frozen and run once a frame)."""
        return (*self.encoder_modules, self.propagator_name, "decoder")

    def __init__(
        self,
        *,
        encoder: nn.Module,
        propagator: nn.Module,
        decoder: FPNHead,
        identity: IdentityBank,
        criterion: nn.Module | None,
        embed_scale: str,
        skip_scales: Sequence[str],
        align_corners: bool,
        train_long_term_gap: int,
        memory_mask: str,
        reference_loss_weight: float = 0.0,
        teacher_forcing: float = 0.0,
    ) -> None:
        super().__init__(criterion=criterion)
        name, layers = type(self).__name__, self.propagator_name
        channels = dict(getattr(encoder, "channels", {}))
        skip_scales = tuple(skip_scales)
        missing = [s for s in (embed_scale, *skip_scales) if s not in channels]
        if missing:
            raise ValueError(
                f"{name}: the encoder's `channels` must name the scales {missing}; it has {sorted(channels)}"
            )
        d_model, num_layers = int(propagator.d_model), int(propagator.num_layers)
        if identity.embed_dim != d_model:
            raise ValueError(
                f"{name}: identity.embed_dim={identity.embed_dim} must equal the {layers} d_model={d_model}"
            )
        if decoder.out_channels != identity.num_identities + 1:
            raise ValueError(
                f"{name}: decoder.out_channels={decoder.out_channels} must be identity.num_identities + 1 = "
                f"{identity.num_identities + 1}"
            )
        expected_in = d_model * (num_layers + 1)
        if decoder.in_channels != expected_in:
            raise ValueError(
                f"{name}: decoder.in_channels={decoder.in_channels} must be d_model x ({layers} layers + 1) = "
                f"{expected_in} (projected encoder features + {num_layers} {layers} outputs)"
            )
        skip_channels = tuple(channels[s] for s in skip_scales)
        if tuple(decoder.skip_channels) != skip_channels:
            raise ValueError(
                f"{name}: decoder.skip_channels={tuple(decoder.skip_channels)} must match the encoder's {skip_scales} "
                f"channels {skip_channels}"
            )
        if memory_mask not in MEMORY_MASKS:
            raise ValueError(f"{name}: memory_mask must be one of {MEMORY_MASKS}, got {memory_mask!r}")
        if train_long_term_gap < 1:
            raise ValueError(f"{name}: train_long_term_gap must be >= 1, got {train_long_term_gap}")
        if reference_loss_weight < 0:
            raise ValueError(f"{name}: reference_loss_weight must be >= 0, got {reference_loss_weight}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"{name}: teacher_forcing must be a share of the run in [0, 1], got {teacher_forcing}")
        # registration order = official state-dict order: encoder, encoder_projector, then the subclass's modules
        self.encoder = encoder
        self.encoder_projector = nn.Conv2d(channels[embed_scale], d_model, kernel_size=1)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        self.max_objects = identity.num_identities
        self.embed_scale = embed_scale
        self.skip_scales = skip_scales
        self.align_corners = align_corners
        self.train_long_term_gap = train_long_term_gap
        self.memory_mask = memory_mask
        self.reference_loss_weight = reference_loss_weight
        self.teacher_forcing = teacher_forcing
        self.progress: float | None = None  # share of the training run done (set_training_progress); None: unknown

    # -- what a subclass provides -------------------------------------------------------------------------------
    @property
    def propagator(self) -> nn.Module:
        """The registered transformer (AOT: ``LSTT``, BATMAN: ``transformer``)."""
        raise NotImplementedError

    @property
    def id_bank(self) -> IdentityBank:
        """The registered identity bank (AOT: ``patch_wise_id_bank``, BATMAN: ``identity``)."""
        raise NotImplementedError

    def _embed_identities(self, masks: Tensor, assignment: Tensor) -> Tensor:
        """Identification embedding (B, C, h, w) of masks (B, N+1, H, W); AOT adds its ``id_dropout``."""
        return self.id_bank(masks, assignment)

    def _propagation_inputs(self, memory: MemoryBank, feats: FrameFeatures, *, reference: bool) -> dict[str, Any]:
        """Extra keyword arguments of the transformer call for this frame (none here; BATMAN's ``encoding``)."""
        return {}

    # -- the contract -------------------------------------------------------------------------------------------
    def encode(self, image: Tensor) -> FrameFeatures:
        """Encoder maps; cache ``embedding`` (B, C, H/16, W/16) (projected) and ``pos`` (1, C, H/16, W/16)."""
        maps = self.encoder(image)
        embedding = self.encoder_projector(maps[self.embed_scale])
        pos = self.pos_generator(embedding)
        return FrameFeatures(image=image, maps=dict(maps), cache={"embedding": embedding, "pos": pos})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        """The transformer over the memory, FPN decoding, identification decoding: logits (B, N+1, H, W), float32
        or wider."""
        outputs, frame_memories = self._propagate(memory, feats, reference_id_emb=None)
        memory.state[self.pending_key] = (feats.cache["embedding"], frame_memories)
        return self._decode(memory, feats, outputs)

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Write the frame's per-layer (K, V) with the identification embedding of ``probs`` (B, N+1, H, W)."""
        _, id_emb = self._identity_tokens(memory, feats, probs)
        self._write_frame(memory, feats, id_emb, frame_index)

    # -- training -----------------------------------------------------------------------------------------------
    def set_training_progress(self, step: int, total_steps: int) -> None:
        """Called by the trainer before every step: drives the reference-loss decay and the teacher forcing."""
        self.progress = step / max(total_steps, 1)

    @property
    def _teacher_forced(self) -> bool:
        return self.training and self.progress is not None and self.progress < self.teacher_forcing

    @property
    def _identities_frozen(self) -> bool:
        known = self.progress is not None
        return self.training and known and self.teacher_forcing > 0 and self.progress >= self.teacher_forcing

    @property
    def current_reference_loss_weight(self) -> float:
        """The auxiliary reference loss's weight now: ``reference_loss_weight * (1 - progress)`` (the full weight
        when the progress is unknown)."""
        if self.progress is None:
            return self.reference_loss_weight
        return self.reference_loss_weight * max(1.0 - self.progress, 0.0)

    def training_memory_probs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The ground truth (one-hot, B, N+1, H, W) while teacher forcing, else the predicted probabilities."""
        if self._teacher_forced:
            return labels_to_probs(labels, logits.shape[1] - 1).to(logits.dtype)
        return super().training_memory_probs(logits, labels)

    def reference_losses(
        self, memory: MemoryBank, feats: FrameFeatures, labels: Tensor, *, num_objects: Tensor
    ) -> dict[str, Tensor]:
        """The auxiliary reference loss (see ``reference_loss_weight``): the criterion on the reference frame's
        decoding, ``{"loss": weight x total, "loss_reference": total}``; its graph is built only while the weight
        is positive."""
        outputs = memory.state.pop(REFERENCE_OUTPUTS_KEY, None)
        if self.reference_loss_weight == 0 or outputs is None or self.criterion is None:
            return {}
        weight = self.current_reference_loss_weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            logits = self._decode(memory, feats, outputs)
            total = self.criterion(logits[:, None], labels[:, None], num_objects=num_objects)["loss"]
        return {"loss": weight * total, "loss_reference": total.detach()}

    def new_training_memory(self, clip: Clip, *, num_objects: int, memory_frames: int | None) -> MemoryBank:
        """AOT's training memory: long-term entries every ``train_long_term_gap`` frames after the reference (not
        every frame), and each sample's own object count for identification decoding."""
        memory = self.new_memory(EveryN(n=self.train_long_term_gap, max_frames=memory_frames), num_objects=num_objects)
        memory.state[COUNTS_KEY] = clip.num_objects.to(clip.images.device).long().clamp(0, num_objects)
        return memory

    # -- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _grid(feats: FrameFeatures) -> tuple[int, int]:
        """(h, w) of the frame's token grid."""
        embedding = feats.cache["embedding"]
        return int(embedding.shape[-2]), int(embedding.shape[-1])

    def _identity_tokens(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Check ``probs`` (B, N+1, H, W), draw the identity assignment at the bank's first write (unless the caller
        set it), and return the memorised masks (B, N+1, H, W) and their identification embedding (B, h*w, C)."""
        name = type(self).__name__
        num_objects = int(memory.state["num_objects"])
        batch = feats.image.shape[0]
        if probs.ndim != 4 or tuple(probs.shape) != (batch, num_objects + 1, *feats.size):
            raise ValueError(
                f"{name}.memorize: probs must be (B={batch}, N+1={num_objects + 1}, {feats.size[0]}, "
                f"{feats.size[1]}) for this memory and frame, got {tuple(probs.shape)}"
            )
        embedding = feats.cache["embedding"]
        size = self._grid(feats)
        if memory.reference_index is None and ASSIGNMENT_KEY not in memory.state:  # a caller may fix them beforehand
            memory.state[ASSIGNMENT_KEY] = self.id_bank.assign(
                batch, num_objects, shuffle=self.training, device=probs.device
            )
        if self.memory_mask == "hard":
            probs = F.one_hot(argmax_labels(probs, 1), num_objects + 1).permute(0, 3, 1, 2)
        masks = probs.to(embedding.dtype)
        id_emb = map_to_tokens(self._embed_identities(masks, memory.state[ASSIGNMENT_KEY]))
        if self._identities_frozen:  # official freeze_id in sequence training
            id_emb = id_emb.detach()
        if tuple(id_emb.shape[1:]) != (size[0] * size[1], self.propagator.d_model):
            raise ValueError(
                f"{name}.memorize: the identity bank maps a {feats.size} mask to {tuple(id_emb.shape)} tokens, the "
                f"encoder to a {size} grid; use inputs whose sides are multiples of {self.stride}"
            )
        return masks, id_emb

    def _propagate(
        self, memory: MemoryBank, feats: FrameFeatures, *, reference_id_emb: Tensor | None
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        """Run the transformer on the frame: over the memory, or, given ``reference_id_emb`` (B, h*w, C), on the
        frame itself with its own identities (the first frame of a bank). Returns (outputs, frame memories)."""
        size = self._grid(feats)
        reference = reference_id_emb is not None
        long_term, short_term = (None, None) if reference else self._read(memory, size)
        extra = self._propagation_inputs(memory, feats, reference=reference)
        return self.propagator(
            map_to_tokens(feats.cache["embedding"]),
            size=size,
            pos=map_to_tokens(feats.cache["pos"]),
            long_term=long_term,
            short_term=short_term,
            id_emb=reference_id_emb,
            **extra,
        )

    def _write_frame(self, memory: MemoryBank, feats: FrameFeatures, id_emb: Tensor, frame_index: int) -> None:
        """Fuse the frame's per-layer memories (from the preceding ``segment``, else propagated now) with
        ``id_emb`` (B, h*w, C) and write them as one memory entry."""
        pending = memory.state.pop(self.pending_key, None)
        if pending is not None and pending[0] is feats.cache["embedding"]:  # segment() already propagated this frame
            frame_memories = pending[1]
        else:
            first = memory.reference_index is None
            outputs, frame_memories = self._propagate(memory, feats, reference_id_emb=id_emb if first else None)
            if first and self.training and self.reference_loss_weight > 0:  # for reference_losses
                memory.state[REFERENCE_OUTPUTS_KEY] = outputs
        tensors: dict[str, Tensor] = {}
        for layer, (key, value) in enumerate(self.propagator.fuse(frame_memories, id_emb)):
            tensors[f"key{layer}"] = key
            tensors[f"value{layer}"] = value
        memory.write(frame_index, tensors)

    def _read(
        self, memory: MemoryBank, size: tuple[int, int]
    ) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Per-layer long-term (K, V) (B, T*h*w, C) and short-term (K, V) (B, C, h, w) of the memory."""
        name = type(self).__name__
        if not memory.long_term or memory.short_term is None:
            raise RuntimeError(f"{name}: the memory is empty; memorize the reference frame first")
        short = memory.short_term.tensors
        if short["key0"].shape[1] != size[0] * size[1]:
            raise ValueError(
                f"{name}: the memory holds {short['key0'].shape[1]} tokens per frame, the current frame {size} "
                "(frames of one video must have the same size)"
            )
        long_term, short_term = [], []
        for layer in range(self.propagator.num_layers):
            keys = memory.stack(f"key{layer}", dim=1, include_short_term=False).flatten(1, 2)
            values = memory.stack(f"value{layer}", dim=1, include_short_term=False).flatten(1, 2)
            long_term.append((keys, values))
            short_term.append((tokens_to_map(short[f"key{layer}"], size), tokens_to_map(short[f"value{layer}"], size)))
        return long_term, short_term

    def _decode(self, memory: MemoryBank, feats: FrameFeatures, outputs: list[Tensor]) -> Tensor:
        """FPN decoding of [projected encoder features, every transformer output] to the M+1 identity logits at the
        input size, then identification decoding to the objects: (B, N+1, H, W), float32 or wider."""
        size = self._grid(feats)
        x = torch.cat([feats.cache["embedding"], *(tokens_to_map(out, size) for out in outputs)], dim=1)
        id_logits = self.decoder(x, [feats.maps[scale] for scale in self.skip_scales])  # (B, M+1, H/4, W/4)
        id_logits = F.interpolate(id_logits, size=feats.size, mode="bilinear", align_corners=self.align_corners)
        id_logits = id_logits.to(torch.promote_types(id_logits.dtype, torch.float32))
        return self.id_bank.decode(id_logits, memory.state[ASSIGNMENT_KEY], num_objects=memory.state.get(COUNTS_KEY))
