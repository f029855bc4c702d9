"""SITVOS: Siamese network with interactive transformer.

Lan, Zhang, He and Zhang, "Siamese Network with Interactive Transformer for Video Object Segmentation", AAAI 2022
(shared/papers/003), Sec. 3; official code github.com/LANMNG/SITVOS (``model/model.py``, ``model/transformer.py``,
``eval.py``, ``train_davis.py``, ``train_coco.py``; no licence and no released weights: read for facts only).
docs/methods/sitvos.md has the equation-to-code table.

Components (paper -> voszoo):

- Siamese feature extraction (Sec. 3.2): ONE ResNet-50 up to ``res4`` (stride 16) for past and current frames
  (:class:`voszoo.backbones.ResNetBackbone`). A frame is encoded once, when it is segmented; its stride-16
  features stay in its :class:`~voszoo.models.base.FrameFeatures` and are reused when the frame is memorised
  (no second backbone pass; STM runs a separate memory encoder on every memorised frame);
- light mask encoder (Sec. 3.2): ResNet-18 up to ``res4`` whose first convolution takes the 1-channel object mask
  (``ResNetBackbone(depth=18, image_channels=1)``), one pass per object and memorised frame;
- embeddings (Sec. 3.1 "further embedded via an 1x1 convolutional layer"): ``memory_embedding`` (frame -> M_ori),
  ``query_embedding`` (frame -> Q_ori) and ``mask_embedding`` (mask features -> M_E);
- interactive transformer and FIM (Sec. 3.3, Eq. 1-4): :class:`voszoo.layers.interactive.InteractiveTransformer`;
- segmentation decoder (Sec. 3.4): STM's refinement decoder (:class:`voszoo.decoders.RefineDecoder`), 2 channels
  per object at stride 4, bilinear to full size;
- multi-object (Sec. 3.1): objects batched, foreground probabilities merged by soft aggregation
  (:func:`voszoo.layers.soft_aggregate`), as STM; objects a sample does not have are masked out with STM's
  presence flags (:mod:`voszoo.models.stm`);
- memory at inference (Sec. 3.5): first + previous frame + dynamically sampled intermediate frames, N = 7 in total
  (``conf/model/memory/fixed_count.yaml``); Table 4's alternatives are the other files of ``conf/model/memory``.

Where the paper is silent or differs, voszoo follows the official code (the ``sitvos`` preset):

- embeddings are 3x3 convolutions (paper: 1x1), separate for memory and query frames (``W_K``, ``W_Q``), into
  C = 128 channels (paper: 256); the mask features are embedded by a third 3x3 conv (``W_mask``);
- the mask encoder sees the object's soft probability alone (no "other objects" channel, unlike STM);
- after the transformer, T_out is concatenated with Q_ori and a 1x1 convolution maps the 2C channels to 512 before
  the decoder (``Memory.projector``; not in the paper): ``concat_query`` and ``projection``;
- the probabilities of a predicted frame are detached before they are memorised (``train_davis.py``:
  ``Es[:,:,1] = F.softmax(n2_logit).detach()``): ``detach_memory_masks``; gradients still flow through the
  memorised frame's features;
- images are normalised outside the model (official: ``mean``/``std`` buffers in the encoder).

voszoo's own choices: M_ori is computed once per memorised frame and shared by the objects (the official code
embeds the same features once per object), and the object-independent parts of the transformer run once per sample
(identical results). Training unrolls through :meth:`VOSModel.forward` with a ``KeepAll`` memory, as the official
3-frame training (frame 1 memorised with the ground truth, frame 2 with its prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel
from voszoo.models.per_object import aggregate_objects, memory_num_objects, update_presence
from voszoo.models.sizes import complete, complete_from_s16, scale_channels

__all__ = ["SITVOS"]


class SITVOS(VOSModel):
    """SITVOS assembled from built parts (see the module docstring).

    Args:
        encoder: the Siamese backbone, ``image (B, 3, H, W) -> {"s16", *skip_scales}`` feature maps.
        mask_encoder: ``mask (B, 1, H, W) -> {"s16": (B, C_m, H/16, W/16), ...}``.
        memory_embedding: ``s16 (B, C16, h, w) -> M_ori (B, C, h, w)`` for memorised frames.
        query_embedding: ``s16 -> Q_ori (B, C, h, w)`` for the current frame; None shares ``memory_embedding``.
        mask_embedding: mask encoder ``s16`` -> M_E (B, C, h, w).
        transformer: ``(M_ori (B, T*h*w, C), Q_ori (B, h*w, C), M_E (B, K, T*h*w, C)) -> (B, K, h*w, C)``, e.g.
            :class:`voszoo.layers.interactive.InteractiveTransformer`.
        decoder: ``(x, skips, *, output_size) -> (B, 2, H, W)`` logits (background, foreground of one object).
        criterion: training losses; None for inference only.
        projection: applied to the transformer output (after the concatenation with Q_ori if ``concat_query``)
            before the decoder; None = identity (official: 1x1 conv 2C -> 512).
        concat_query: concatenate Q_ori to T_out along channels (official code; not in the paper).
        skip_scales: encoder feature maps passed to the decoder, coarse to fine.
        detach_memory_masks: memorise predicted probabilities without their gradient (official training).
        aggregation_eps: clamp of soft aggregation.
        presence_threshold: probability above which an object first written after the reference counts as present.

    The embeddings, ``projection`` and ``decoder`` may be partials (``_partial_: true``) without their input sizes:
    the model completes them from the built encoders' s16 and ``skip_scales`` channels and the embedding width C
    (:mod:`voszoo.models.sizes`), so a backbone swap is one override.
    """

    multi_object = "per_object"
    stride = 16
    hot_modules = ("encoder", "mask_encoder", "transformer", "decoder")
    encoder_modules = ("encoder", "mask_encoder")

    @property
    def official_protocol(self) -> str | None:
        """``"stm"``: the official ``eval.py`` pads frames and masks with STM's ``pad_divide_by(16)``
        (``utils/helpers.py``) on [0, 1] frames, normalises inside the encoder and crops the logits back."""
        return "stm"

    def __init__(
        self,
        *,
        encoder: nn.Module,
        mask_encoder: nn.Module,
        memory_embedding: nn.Module,
        mask_embedding: nn.Module,
        transformer: nn.Module,
        decoder: nn.Module,
        query_embedding: nn.Module | None = None,
        criterion: nn.Module | None = None,
        projection: nn.Module | None = None,
        concat_query: bool = True,
        skip_scales: Sequence[str] = ("s8", "s4"),
        detach_memory_masks: bool = True,
        aggregation_eps: float = 1e-7,
        presence_threshold: float = 0.5,
    ) -> None:
        super().__init__(criterion=criterion)
        mask_channels = getattr(mask_encoder, "image_channels", 1)
        if mask_channels != 1:
            raise ValueError(
                f"SITVOS: the mask encoder takes the 1-channel object mask alone, so it must be built with "
                f"image_channels=1, got {mask_channels}"
            )
        # partial parts (``_partial_: true``) get their sizes from the built encoders (voszoo.models.sizes)
        skip_scales = tuple(skip_scales)
        memory_embedding = complete_from_s16(
            memory_embedding, key="memory_embedding", encoder=encoder, encoder_key="encoder"
        )
        query_embedding = complete_from_s16(
            query_embedding, key="query_embedding", encoder=encoder, encoder_key="encoder"
        )
        mask_embedding = complete_from_s16(
            mask_embedding, key="mask_embedding", encoder=mask_encoder, encoder_key="mask_encoder"
        )
        if isinstance(projection, partial) or isinstance(decoder, partial):
            width = int(memory_embedding.out_channels) * (2 if concat_query else 1)
            source = "T_out + Q_ori channels" if concat_query else "T_out channels"
            projection = complete(projection, key="projection", sizes={"in_channels": (width, source)})
            if projection is not None:
                width, source = int(projection.out_channels), "projection.out_channels"
            decoder = complete(
                decoder,
                key="decoder",
                sizes={
                    "in_channels": (width, source),
                    "skip_channels": (
                        scale_channels(encoder, skip_scales, key="encoder"),
                        f"the encoder's {skip_scales} channels",
                    ),
                },
            )
        self.encoder = encoder
        self.mask_encoder = mask_encoder
        self.memory_embedding = memory_embedding
        self.query_embedding = query_embedding
        self.mask_embedding = mask_embedding
        self.transformer = transformer
        self.projection = projection
        self.decoder = decoder
        self.concat_query = concat_query
        self.skip_scales = skip_scales
        self.detach_memory_masks = detach_memory_masks
        self.aggregation_eps = aggregation_eps
        self.presence_threshold = presence_threshold

    # -- the contract -------------------------------------------------------------------------------------------
    def encode(self, image: Tensor) -> FrameFeatures:
        """One backbone pass: maps ``s4``, ``s8``, ``s16``; cache ``query`` = Q_ori (B, C, H/16, W/16)."""
        maps = self.encoder(image)
        embed = self.query_embedding if self.query_embedding is not None else self.memory_embedding
        return FrameFeatures(image=image, maps=dict(maps), cache={"query": embed(maps["s16"])})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        """Write ``frame`` = M_ori (B, C, h, w), from the cached backbone features, and ``mask`` = M_E
        (B, N, C, h, w), one mask-encoder pass per object. probs: (B, N+1, H, W), background first."""
        num_objects = memory_num_objects(memory, probs, where="SITVOS.memorize")
        if "memory" not in feats.cache:  # the same frame memorised into several banks (object groups) embeds once
            feats.cache["memory"] = self.memory_embedding(feats.maps["s16"])
        fg = probs[:, 1:].to(feats.image.dtype)  # (B, N, H, W)
        if self.detach_memory_masks:
            fg = fg.detach()
        mask_features = self.mask_encoder(fg.flatten(0, 1)[:, None])["s16"]  # (B*N, C_m, h, w)
        mask = self.mask_embedding(mask_features).unflatten(0, (probs.shape[0], num_objects))
        update_presence(memory, fg, threshold=self.presence_threshold)
        memory.write(frame_index, {"frame": feats.cache["memory"], "mask": mask})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        """Interactive transformer per object, decode, soft-aggregate: logits (B, N+1, H, W), float32 or wider."""
        num_objects = int(memory.state["num_objects"])
        frames = memory.stack("frame", dim=1)  # (B, T, C, h, w)
        masks = memory.stack("mask", dim=2)  # (B, N, T, C, h, w)
        if masks.shape[1] != num_objects:
            raise ValueError(f"SITVOS.segment: memory holds {masks.shape[1]} objects, state says {num_objects}")
        query = feats.cache["query"]  # (B, C, h, w)
        batch, channels, h, w = query.shape
        if frames.shape[-2:] != (h, w):
            raise ValueError(
                f"SITVOS.segment: memory features are {tuple(frames.shape[-2:])}, the frame's {(h, w)}: "
                "all frames of a video must have the same size"
            )
        m_ori = frames.permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, T*h*w, C), frame-major
        m_e = masks.permute(0, 1, 2, 4, 5, 3).flatten(2, 4)  # (B, N, T*h*w, C)
        q_ori = query.flatten(2).transpose(1, 2)  # (B, h*w, C)
        t_out = self.transformer(m_ori, q_ori, m_e)  # (B, N, h*w, C)
        x = t_out.transpose(-1, -2).reshape(batch * num_objects, -1, h, w)

        def per_object(y: Tensor) -> Tensor:
            return y.repeat_interleave(num_objects, dim=0)

        if self.concat_query:
            x = torch.cat([x, per_object(query)], dim=1)
        if self.projection is not None:
            x = self.projection(x)
        skips = [feats.maps[scale] for scale in self.skip_scales]  # shared by the objects (skip_repeats)
        logits = self.decoder(x, skips, output_size=feats.size, skip_repeats=num_objects)  # (B*N, 2, H, W)
        return aggregate_objects(logits, memory, num_objects=num_objects, eps=self.aggregation_eps)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, concat_query={self.concat_query}, skip_scales={self.skip_scales}, "
            f"detach_memory_masks={self.detach_memory_masks}"
        )
