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

The calls of the contract (``voszoo.models.base``), implemented by the base class shared with BATMAN,
:class:`voszoo.models.identity_model.IdentityVOSModel`:

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

Optional ``prior`` (``model/prior=motion_guided``; Zhou et al., shared/papers/004, Sec. 2.1): MGA's motion-guided
prior on AOT's long-term attention. AOT matches all objects at once, so the prior is computed from the union of the
previous frame's objects (1 - p_background, memorised in ``memory.state["prior_mask"]``) and the frame's projected
embedding (the per-query feature), and scales every LSTT block's long-term attention output per query position before
the residual sum (the recipe of docs/methods/mga.md for residual blocks); the reference pass has no previous mask and
no prior. With the prior's default initialisation (W = 0, b = 1) P = 1 and the model computes plain AOT.

voszoo's own choices: training runs the shared unrolled forward with AOT's training memory gap instead of keeping
every frame; the official reference-frame auxiliary loss, the teacher-forced first half of training and the frozen
identity bank of the second half are not modelled (see docs/methods/aot.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from voszoo.layers.lstt import map_to_tokens
from voszoo.layers.position import SinePositionEmbedding
from voszoo.models.identity_model import IdentityVOSModel, complete_decoder

if TYPE_CHECKING:
    from voszoo.decoders.fpn import FPNHead
    from voszoo.layers.identity import IdentityBank
    from voszoo.layers.lstt import LSTT
    from voszoo.layers.motion_guided import MotionGuidedPrior
    from voszoo.memory import MemoryBank
    from voszoo.models.base import FrameFeatures

PRIOR_MASK_KEY = "prior_mask"

__all__ = ["AOT"]


class AOT(IdentityVOSModel):
    """Associating Objects with Transformers, assembled from built parts (see the module docstring).

    Args:
        encoder: ``image (B, 3, H, W) -> {scale: (B, C_s, H/s, W/s)}`` with a ``channels`` dict (scale -> C_s).
        lstt: the LSTT stack (its ``d_model`` is the token width C).
        decoder: FPN head, ``(x (B, C (L+1), h, w), [s16, s8, s4]) -> (B, M+1, H/4, W/4)``, or a partial of one
            (``_partial_: true``) that the model completes with those three sizes (:mod:`voszoo.models.sizes`).
        identity: identity bank with M identities and width C.
        criterion: training losses (:class:`voszoo.losses.SegmentationCriterion`); None for inference only.
        embed_scale: encoder output projected to the LSTT width (MobileNetV2: ``"last"``, ResNet: ``"s16"``).
        skip_scales: encoder outputs passed to the decoder, stride 16, 8, 4.
        align_corners: of the final bilinear upsampling (official ``MODEL_ALIGN_CORNERS``).
        train_long_term_gap: in training, a frame joins the long-term memory every this many frames after the
            reference (official ``TRAIN_LONG_TERM_MEM_GAP``: 9999 = reference only, 2 for AOT-L).
        memory_mask: ``"hard"`` memorises the one-hot argmax of the probabilities (official), ``"soft"`` the
            probabilities themselves.
        reference_loss_weight, teacher_forcing: the official training schedule's auxiliary reference loss and
            ground-truth memory (:class:`~voszoo.models.identity_model.IdentityVOSModel`); 1.0 and 0.5 officially,
            0 (off) by default so that a model built by hand trains plainly.
        id_dropout: dropout on the identification embedding (0 in AOT).
        prior: MGA's motion-guided prior on the long-term attention (see the module docstring); its
            ``key_channels`` must equal the LSTT width. None: AOT.
    """

    pending_key = "aot_pending"
    propagator_name = "LSTT"

    def __init__(
        self,
        *,
        encoder: nn.Module,
        lstt: LSTT,
        decoder: FPNHead | Callable[..., FPNHead],
        identity: IdentityBank,
        criterion: nn.Module | None = None,
        embed_scale: str = "last",
        skip_scales: Sequence[str] = ("s16", "s8", "s4"),
        align_corners: bool = True,
        train_long_term_gap: int = 9999,
        memory_mask: str = "hard",
        reference_loss_weight: float = 0.0,
        teacher_forcing: float = 0.0,
        id_dropout: float = 0.0,
        prior: MotionGuidedPrior | None = None,
    ) -> None:
        decoder = complete_decoder(
            decoder, encoder=encoder, propagator=lstt, identity=identity, skip_scales=skip_scales
        )
        super().__init__(
            encoder=encoder,
            propagator=lstt,
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
        # attribute names and registration order = official state-dict names and order
        self.LSTT = lstt
        self.decoder = decoder
        self.patch_wise_id_bank = identity
        self.id_dropout = nn.Dropout(id_dropout)
        self.pos_generator = SinePositionEmbedding(num_pos_feats=lstt.d_model // 2, normalize=True)
        if prior is not None and prior.form != "multiply":
            raise ValueError(
                f"AOT: the prior scales the long-term attention output: form must be 'multiply', got {prior.form!r}"
            )
        if prior is not None and prior.key_channels != lstt.d_model:
            raise ValueError(
                f"AOT: prior.key_channels={prior.key_channels} must equal the LSTT d_model={lstt.d_model} (the prior "
                "reads the frame's projected embedding)"
            )
        self.prior = prior  # registered last: official state dicts keep their keys and order

    @property
    def official_protocol(self) -> str | None:
        """``"aot"`` (aot-benchmark's evaluator, :mod:`voszoo.inference.protocols`); None with MGA's ``prior``."""
        return "aot" if self.prior is None else None

    @property
    def propagator(self) -> LSTT:
        return self.LSTT

    @property
    def id_bank(self) -> IdentityBank:
        return self.patch_wise_id_bank

    def _embed_identities(self, masks: Tensor, assignment: Tensor) -> Tensor:
        return self.id_dropout(self.patch_wise_id_bank(masks, assignment))

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        super().memorize(memory, feats, probs, frame_index)
        if self.prior is not None:  # the session memorises every frame: this is the next frame's previous mask
            memory.state[PRIOR_MASK_KEY] = 1.0 - probs[:, :1]

    def _propagation_inputs(self, memory: MemoryBank, feats: FrameFeatures, *, reference: bool) -> dict[str, Tensor]:
        if self.prior is None or reference:
            return {}
        previous = memory.state.get(PRIOR_MASK_KEY)
        if previous is None:
            raise RuntimeError("AOT with a prior: segment() needs the previous frame memorised first")
        prior = self.prior(feats.cache["embedding"], previous.to(feats.cache["embedding"].dtype))
        return {"long_term_gate": map_to_tokens(prior)}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_objects={self.max_objects}, embed_scale={self.embed_scale!r}, "
            f"train_long_term_gap={self.train_long_term_gap}, memory_mask={self.memory_mask!r}"
        )
