"""MGA: Motion-Guided Spatial Time Attention for VOS.

Zhou, Huang, Huang, Gong, Shen, Liu and Wang, "Motion-Guided Spatial Time Attention for Video Object Segmentation"
(shared/papers/004, Sec. 2, Fig. 1-2; YouTube-VOS 2019 challenge, 2nd place). No official code is public: the paper
is the specification.

MGA is STM (:mod:`voszoo.models.stm`, "Our method is derived from the STM framework") whose space-time memory read
is modulated by a spatial prior of the previous predicted mask (Sec. 2.1, the motion-guided attention module,
:class:`voszoo.layers.motion_guided.MotionGuidedPrior`): Gauss(M_{n-1}) and the current query key k_n give W and
b; P = W * Gauss(M_{n-1}) + b multiplies the THW x HW affinity per query position. The model is
:class:`voszoo.models.stm.STM` with its ``prior`` slot filled, so ``model=stm model/prior=motion_guided`` composes
the same network by config; this class only makes the slot mandatory and names the method (``conf/model/mga.yaml``,
``conf/model/mga_r18.yaml``).

Where the paper is silent, voszoo chooses (each is an argument of the layer; docs/methods/mga.md):

- per object, as STM: object i's previous probability (soft, area-averaged to the key grid) modulates object i's
  read. ``memorize`` stores it on the bank's newest entry; the inference session memorises every frame, so at
  ``segment`` time that entry is the previous frame (the reference on the first frame after it);
- the Gaussian: weighted mean and variance of the mask, sigma^2 = spread_scale^2 var + min_sigma^2, empty-mask
  ones blended in below ``min_mass``;
- the W/b head (conv3x3 -> ReLU -> conv3x3, 32 hidden channels) and its initialisation (W = 0, b = 1: the module
  starts as plain STM);
- the product is not renormalised (renormalising a per-query factor over memory positions cancels it), so it scales
  each query position's read, not its own query value.

Sequence learning (Sec. 2.2: whole videos in order, back-propagating per frame) is a trainer recipe and not part of
this class. Loss: cross-entropy as STM. Memory at evaluation: STM's (reference + every 5th frame + previous frame).
"""

from __future__ import annotations

from voszoo.models.stm import STM

__all__ = ["MGA"]


class MGA(STM):
    """STM with a mandatory ``prior`` module (see the module docstring); arguments as :class:`STM`.

    ``prior``: normally :class:`voszoo.layers.motion_guided.MotionGuidedPrior`, whose
    ``modulated_read(reader, memory_key, memory_value, query_key, query_value, *, previous_mask)`` replaces the read.
    """

    required_slots = {
        "prior": "MGA needs a prior module (conf/model/prior/, e.g. motion_guided); without it the network is STM: "
        "use model=stm or model=stm_r18",
    }
