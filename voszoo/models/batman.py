"""BATMAN: Bilateral Attention Transformer in Motion-Appearance Neighboring space.

Yu et al., "BATMAN: Bilateral Attention Transformer in Motion-Appearance Neighboring Space for Video Object
Segmentation", ECCV 2022 (shared/papers/000: Sec. 3.1-3.3, Eq. 1-3, Sec. 4.1). No official code is public: the
paper is the specification, and every choice below where it is silent is exposed as an argument or a config value.

Components (-> voszoo):

- image encoder (memory and query): ResNet-50 (Sec. 4.1) up to ``layer3``; ONE encoder serves memory and query
  frames (AOT's design, whose identification embedding BATMAN follows: the memory's keys/values are the query-side
  transformer states of the memorised frame, so a separate memory encoder has nothing to encode);
- initial flow between the previous and the query frame: frozen RAFT (:class:`voszoo.layers.flow.RAFTFlow`), the
  clip's ground-truth flow (:class:`~voszoo.layers.flow.GroundTruthFlow`) or none (:class:`~voszoo.layers.flow.NoFlow`);
- flow calibration U-Net (Sec. 3.3): :class:`voszoo.layers.flow.FlowCalibration` on [flow / ``flow_norm``,
  previous mask in identity slots (B, M+1, H, W)], trained by an MSE to the initial flow;
- flow encoder: ResNet-50 (Sec. 4.1) on the 2-channel calibrated flow, its ``flow_scale`` (stride 16) features;
- bilateral space encoding E: :class:`voszoo.layers.bilateral.BilateralSpaceEncoder` (1x1 conv of [image encoder
  ``embed_scale`` features, flow features] to one channel);
- identification embedding (AOT [50], Sec. 4.1): :class:`voszoo.layers.identity.IdentityBank`;
- bilateral transformer (Sec. 3.2, 12 blocks, W_d = 7, W_b = 84): :class:`voszoo.layers.bilateral.BilateralTransformer`;
- decoder: FPN with GroupNorm (:class:`voszoo.decoders.fpn.FPNHead`) on [projected encoder features, every block's
  output], identity logits decoded to the objects (AOT's Eq. 5);
- losses: bootstrapped CE + soft Jaccard (the ``criterion``) + ``flow_loss_weight`` x calibration MSE.

The contract (``voszoo.models.base``):

- ``encode``: encoder, projection, sine position embedding;
- ``segment``: initial flow (previous image from ``memory.state``), calibration with the previous frame's memorised
  mask, E, the transformer over the memory (cross-attention: long-term entries; bilateral attention: the previous
  frame, the short-term entry, or with ``transformer.multi_reference`` every memory frame, the previous one once:
  Sec. 3.2's "K and V are aggregated from multiple reference frames"), decoding;
- ``memorize``: AOT's memorisation (identities fused into the values), plus the frame's image and its mask in
  identity slots kept in ``memory.state`` for the next frame's flow and calibration.

Choices where the paper is silent (voszoo):

- the reference frame (no previous frame) runs the transformer on itself with its own identities (AOT) and with E
  computed from a ZERO flow calibrated with its own mask;
- the calibration works on flow / ``flow_norm`` (10 pixels), residual (output = input + correction), at the input
  resolution; its MSE compares normalised flows and is averaged over the predicted frames;
- memorised masks are one-hot (``memory_mask="hard"``, AOT's official choice); the calibration sees the same mask;
- identities, memory schedule (long-term = reference frame in training, ``train_long_term_gap``) as AOT-T/S/B;
- with ``transformer.attention="spatial_local"`` (Table 3) or flow ``NoFlow`` the modules that could no longer
  influence the output (flow source, calibration, flow encoder; and E itself for spatial_local) are dropped at
  construction, so parameter counts and the optimiser see the ablated model; ``calibration=None`` (Table 4) feeds
  the raw normalised flow to the flow encoder.

Training: the base class's unrolled forward. The calibration MSE of each predicted frame is logged by ``segment``
into a loss log that :meth:`BATMAN.new_training_memory` places in ``memory.state``; :meth:`BATMAN.training_chunks`
wraps the base generator and adds ``flow_loss_weight x (sum of the chunk's frame MSEs) / (T - 1)`` to each chunk's
``"loss"`` (reported as ``"loss_flow"``), so the chunks again sum to the clip mean. Ground-truth flow: a clip that
carries ``flows`` (B, T-1, 2, H, W) (forward flow t -> t+1, input pixels) feeds frame t's ``memorize`` the flow to
frame t+1; ``ClipDataset(with_flow=True)`` (``data.train.with_flow=true``, ToyVOS) provides it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from voszoo.layers.bilateral import BilateralSpaceEncoder
from voszoo.layers.flow import NoFlow
from voszoo.layers.position import SinePositionEmbedding
from voszoo.losses import flow_mse
from voszoo.models.identity_model import ASSIGNMENT_KEY, IdentityVOSModel, complete_decoder
from voszoo.models.sizes import complete

if TYPE_CHECKING:
    from voszoo.decoders.fpn import FPNHead
    from voszoo.layers.bilateral import BilateralTransformer
    from voszoo.layers.flow import FlowCalibration
    from voszoo.layers.identity import IdentityBank
    from voszoo.memory import MemoryBank
    from voszoo.models.base import FrameFeatures
    from voszoo.types import Clip

__all__ = ["BATMAN"]

PREV_IMAGE_KEY = "batman_prev_image"
PREV_MASK_KEY = "batman_prev_mask"
CLIP_FLOWS_KEY = "batman_clip_flows"
GIVEN_FLOW_KEY = "batman_given_flow"
FLOW_LOG_KEY = "batman_flow_log"


class _FlowLossLog:
    """Per-frame calibration MSEs of a training unroll (not a tensor/list, so ``detach_memory`` leaves it alone)."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []

    def take(self) -> list[Tensor]:
        losses, self.losses = self.losses, []
        return losses


class BATMAN(IdentityVOSModel):
    """BATMAN assembled from built parts (see the module docstring).

    Args:
        encoder: ``image -> {scale: (B, C_s, H/s, W/s)}`` with a ``channels`` dict.
        transformer: the bilateral transformer (its ``d_model`` is the token width C).
        decoder: FPN head, ``(x (B, C (L+1), h, w), [s16, s8, s4]) -> (B, M+1, H/4, W/4)``, or a partial of one
            (``_partial_: true``) that the model completes with those three sizes (:mod:`voszoo.models.sizes`).
        identity: identity bank with M identities and width C.
        flow: initial flow source (``RAFTFlow``, ``GroundTruthFlow`` or ``NoFlow``).
        flow_encoder: ``flow (B, 2, H, W) -> {scale: ...}`` with ``channels`` (a ResNet with ``image_channels=2``);
            required unless the flow is ``NoFlow`` or the attention is ``spatial_local``.
        calibration: the flow calibration U-Net (``mask_channels`` = M+1; a partial gets it from ``identity``), or
            None to feed the raw flow (Table 4).
        criterion: segmentation losses (bootstrapped CE + soft Jaccard); None for inference only.
        embed_scale: encoder scale projected to C and used as the query image encoding of E.
        skip_scales: encoder scales passed to the decoder (stride 16, 8, 4).
        flow_scale: flow-encoder scale concatenated into E (same stride as ``embed_scale``).
        flow_norm: flows are divided by this (pixels) before calibration and encoding.
        flow_loss_weight: weight of the calibration MSE in the total loss.
        align_corners: of the final bilinear upsampling.
        train_long_term_gap: training long-term memory gap (9999: the reference frame only).
        memory_mask: ``"hard"`` (argmax one-hot) or ``"soft"`` memorised masks.
        reference_loss_weight, teacher_forcing: AOT's training schedule (auxiliary reference loss, ground-truth
            memory; :class:`~voszoo.models.identity_model.IdentityVOSModel`): BATMAN is built on AOT's code and says
            nothing else, so its presets take AOT's official 1.0 and 0.5.
    """

    pending_key = "batman_pending"
    encoder_modules = ("encoder", "flow_encoder")  # flow_encoder is None without a flow source: then skipped

    def __init__(
        self,
        *,
        encoder: nn.Module,
        transformer: BilateralTransformer,
        decoder: FPNHead | Callable[..., FPNHead],
        identity: IdentityBank,
        flow: nn.Module,
        flow_encoder: nn.Module | None = None,
        calibration: FlowCalibration | Callable[..., FlowCalibration] | None = None,
        criterion: nn.Module | None = None,
        embed_scale: str = "s16",
        skip_scales: Sequence[str] = ("s16", "s8", "s4"),
        flow_scale: str = "s16",
        flow_norm: float = 10.0,
        flow_loss_weight: float = 1.0,
        align_corners: bool = True,
        train_long_term_gap: int = 9999,
        memory_mask: str = "hard",
        reference_loss_weight: float = 0.0,
        teacher_forcing: float = 0.0,
    ) -> None:
        decoder = complete_decoder(
            decoder, encoder=encoder, propagator=transformer, identity=identity, skip_scales=skip_scales
        )
        super().__init__(
            encoder=encoder,
            propagator=transformer,
            decoder=decoder,
            identity=identity,
            criterion=criterion,
            embed_scale=embed_scale,
            skip_scales=skip_scales,
            align_corners=align_corners,
            train_long_term_gap=train_long_term_gap,
            memory_mask=memory_mask,
            reference_loss_weight=reference_loss_weight,
            teacher_forcing=teacher_forcing,
        )
        if flow_norm <= 0 or flow_loss_weight < 0:
            raise ValueError(
                f"BATMAN: need flow_norm > 0 and flow_loss_weight >= 0; got {flow_norm}, {flow_loss_weight}"
            )
        calibration = complete(
            calibration,
            key="calibration",
            sizes={"mask_channels": (identity.num_identities + 1, "identity.num_identities + 1 (the mask's slots)")},
        )
        channels = dict(encoder.channels)
        uses_encoding = transformer.attention == "bilateral"
        uses_flow = uses_encoding and not isinstance(flow, NoFlow)
        if uses_flow:
            if flow_encoder is None:
                raise ValueError("BATMAN: a flow source needs a flow_encoder (or use flow NoFlow)")
            flow_channels = dict(getattr(flow_encoder, "channels", {}))
            if flow_scale not in flow_channels:
                raise ValueError(f"BATMAN: flow_encoder has no scale {flow_scale!r}; it has {sorted(flow_channels)}")
            if calibration is not None and calibration.mask_channels != identity.num_identities + 1:
                raise ValueError(
                    f"BATMAN: calibration.mask_channels={calibration.mask_channels} must be M+1 = "
                    f"{identity.num_identities + 1} (the previous mask in identity slots)"
                )
        self.transformer = transformer
        self.decoder = decoder
        self.identity = identity
        self.pos_generator = SinePositionEmbedding(num_pos_feats=transformer.d_model // 2, normalize=True)
        # ablations drop the modules that cannot reach the output (module docstring)
        self.flow = flow if uses_flow else None
        self.flow_encoder = flow_encoder if uses_flow else None
        self.calibration = calibration if uses_flow else None
        self.bilateral_encoder = (
            BilateralSpaceEncoder(
                image_channels=channels[embed_scale],
                flow_channels=dict(flow_encoder.channels)[flow_scale] if uses_flow else 0,  # type: ignore[union-attr]
            )
            if uses_encoding
            else None
        )
        self.flow_scale = flow_scale
        self.flow_norm = float(flow_norm)
        self.flow_loss_weight = float(flow_loss_weight)

    @property
    def propagator(self) -> BilateralTransformer:
        return self.transformer

    @property
    def id_bank(self) -> IdentityBank:
        return self.identity

    def _propagation_inputs(self, memory: MemoryBank, feats: FrameFeatures, *, reference: bool) -> dict[str, Any]:
        return {"encoding": self._encoding(memory, feats, reference=reference)}

    def _read(
        self, memory: MemoryBank, size: tuple[int, int]
    ) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Per-layer long-term (K, V) (B, T*h*w, C) for the cross-attention and the bilateral attention's (K, V):
        the previous frame (B, C, h, w), or with ``transformer.multi_reference`` every memory frame (the long-term
        entries, then the previous frame unless it is one of them) (B, C, T', h, w)."""
        long_term, short_term = super()._read(memory, size)
        if not self.transformer.multi_reference:
            return long_term, short_term
        frames = []
        for layer in range(self.transformer.num_layers):
            maps = [memory.stack(f"{name}{layer}", dim=1).permute(0, 3, 1, 2) for name in ("key", "value")]
            frames.append(tuple(m.unflatten(-1, size) for m in maps))  # (B, T', h*w, C) -> (B, C, T', h, w)
        return long_term, frames

    # -- the contract -------------------------------------------------------------------------------------------
    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Write the frame's per-layer (K, V) with the identification embedding of ``probs`` (B, N+1, H, W); keep
        the image and the identity-slot mask for the next frame's flow and calibration."""
        first = memory.reference_index is None
        masks, id_emb = self._identity_tokens(memory, feats, probs)
        slot_masks = self.identity.scatter(masks, memory.state[ASSIGNMENT_KEY])  # (B, M+1, H, W)
        if first:
            memory.state[PREV_MASK_KEY] = slot_masks  # the reference frame calibrates a zero flow with its own mask
        self._write_frame(memory, feats, id_emb, frame_index)
        memory.state[PREV_IMAGE_KEY] = feats.image
        memory.state[PREV_MASK_KEY] = slot_masks
        clip_flows = memory.state.get(CLIP_FLOWS_KEY)
        memory.state.pop(GIVEN_FLOW_KEY, None)
        if clip_flows is not None and frame_index < clip_flows.shape[1]:
            memory.state[GIVEN_FLOW_KEY] = clip_flows[:, frame_index]

    # -- training -----------------------------------------------------------------------------------------------
    def new_training_memory(self, clip: Clip, *, num_objects: int, memory_frames: int | None) -> MemoryBank:
        """AOT's training memory (long-term gap, per-sample object counts), the calibration loss log and, when the
        clip carries ``flows`` (B, T-1, 2, H, W), the ground-truth flows."""
        memory = super().new_training_memory(clip, num_objects=num_objects, memory_frames=memory_frames)
        log = getattr(clip, "_batman_flow_log", None)
        if log is not None:
            memory.state[FLOW_LOG_KEY] = log
        flows = getattr(clip, "flows", None)
        if flows is not None:
            b, t, _, h, w = clip.images.shape
            if tuple(flows.shape) != (b, t - 1, 2, h, w):
                raise ValueError(f"BATMAN: clip.flows must be (B, T-1, 2, H, W) = {(b, t - 1, 2, h, w)}")
            memory.state[CLIP_FLOWS_KEY] = flows.to(clip.images.device, torch.float32)
        return memory

    def training_chunks(
        self, clip: Clip, *, chunk_frames: int | None, memory_frames: int | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """The base unroll plus the calibration MSE: ``"loss_flow"`` = sum of the chunk's per-frame MSEs / (T-1),
        added to ``"loss"`` with ``flow_loss_weight``."""
        log = _FlowLossLog()
        tagged = copy.copy(clip)  # the caller's clip is not modified
        tagged._batman_flow_log = log  # type: ignore[attr-defined]
        predicted = clip.num_frames - 1
        for out in super().training_chunks(tagged, chunk_frames=chunk_frames, memory_frames=memory_frames):
            losses = log.take()
            if self.calibration is not None:
                flow_loss = torch.stack(losses).sum() / predicted if losses else out["loss"].new_zeros(())
                out = {**out, "loss": out["loss"] + self.flow_loss_weight * flow_loss, "loss_flow": flow_loss}
            yield out

    # -- helpers ------------------------------------------------------------------------------------------------
    def _encoding(self, memory: MemoryBank, feats: FrameFeatures, *, reference: bool) -> Tensor | None:
        """E (B, 1, h, w) of the frame of ``feats`` (None for spatial_local attention)."""
        if self.bilateral_encoder is None:
            return None
        image_features = feats.maps[self.embed_scale]
        if self.flow is None:
            return self.bilateral_encoder(image_features)
        image = feats.image
        b, _, h, w = image.shape
        if reference:
            flow = image.new_zeros(b, 2, h, w)
        else:
            given = memory.state.pop(GIVEN_FLOW_KEY, None)
            if given is not None:
                flow = given
            else:
                previous = memory.state.get(PREV_IMAGE_KEY)
                if previous is None:
                    raise RuntimeError("BATMAN: no previous frame in the memory; memorize the reference frame first")
                flow = self.flow(previous, image)
            if tuple(flow.shape) != (b, 2, h, w):
                raise ValueError(f"BATMAN: the initial flow must be (B, 2, H, W) = {(b, 2, h, w)}, got {flow.shape}")
        initial = flow.to(image_features.dtype) / self.flow_norm
        calibrated = initial
        if self.calibration is not None:
            calibrated = self.calibration(initial, memory.state[PREV_MASK_KEY].to(initial.dtype))
            log = memory.state.get(FLOW_LOG_KEY)
            if log is not None and not reference:
                log.losses.append(flow_mse(calibrated, initial))
        assert self.flow_encoder is not None
        flow_features = self.flow_encoder(calibrated)[self.flow_scale]
        if flow_features.shape[-2:] != image_features.shape[-2:]:
            raise ValueError(
                f"BATMAN: flow features {tuple(flow_features.shape)} and image features "
                f"{tuple(image_features.shape)} must share the grid (flow_scale / embed_scale)"
            )
        return self.bilateral_encoder(image_features, flow_features)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_objects={self.max_objects}, attention={self.transformer.attention!r}, "
            f"flow={type(self.flow).__name__ if self.flow is not None else None}, "
            f"calibration={self.calibration is not None}"
        )
