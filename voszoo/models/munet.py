"""MUNet: Motion Uncertainty-aware semi-supervised VOS.

Sun, Mao, Dai, Zhong and Wang, "MUNet: Motion Uncertainty-aware Semi-supervised Video Object Segmentation"
(shared/papers/002, Sec. 3, Fig. 2). No official code is public: the paper is the specification.

MUNet is STM (:mod:`voszoo.models.stm`) whose query key/value embedding reads a motion-enhanced feature
(Sec. 3.1): the query encoder's stride-16 features of frames t-1 and t (shared weights) go through the MU-Layer
(Sec. 3.2, Eq. 1-2, Table 1) and MSAM (Sec. 3.3, Eq. 3), :mod:`voszoo.layers.motion_uncertainty`. The model is
:class:`voszoo.models.stm.STM` with its ``motion`` slot filled, so ``model=stm model/motion=mu_layer`` composes the
same network by config; this class only makes the slot mandatory and names the method (``conf/model/munet.yaml``,
``conf/model/munet_r18.yaml``). Loss (Sec. 3.4, Eq. 4): bootstrapped cross-entropy over the hardest 40 % pixels +
1 x mask-IoU (``conf/model/criterion/bootstrap_iou.yaml``).

Where the paper is silent, voszoo chooses (each is an argument of the layer, see its docstring):

- the previous frame's features come from the memory bank: ``memorize`` stores the query-encoder ``s16`` map of
  every frame it writes on the bank's short-term (newest) entry; the inference session memorises every frame, and
  on the first frame after the reference the "previous frame" is the reference;
- soft-argmin sign (the printed softmax(-C) of a similarity weights the worst matches: voszoo defaults to softmax(C),
  ``paper_sign`` gives the printed formula) and temperature 0.05 (the paper's implicit 1 gives a near-uniform
  softmax over 625 cosines);
- window entries outside the feature map are excluded from the soft-argmin and the maximum;
- Table 1's motion network: ReLU after layers 1-7, linear last layer, no normalisation, "same" padding;
- the memory encoder takes the object mask and the other-objects mask, as STM (the paper's Enc-R takes one mask
  channel), and the evaluation memory schedule is STM's (reference + every 5th frame + previous frame).

Table 4 ablations as config (docs/methods/munet.md): ``model.motion.mu_layer.use_displacement=false``,
``model.motion.mu_layer.use_uncertainty=false``, ``model/criterion=cross_entropy``, ``model/motion=mu_layer_add``;
rows (a)/(b), without the MU-Layer, are the STM presets.

Training recipe (Sec. 3.5): AdamW (0.9, 0.999), lr 2e-5, weight decay 0.5, clips of 6 consecutive frames, 400 x 400
crops: ``experiment=munet`` (the optimiser is the run's ``optim`` node, not part of the model).
"""

from __future__ import annotations

from voszoo.models.stm import STM

__all__ = ["MUNet"]


class MUNet(STM):
    """STM with a mandatory ``motion`` module (see the module docstring); arguments as :class:`STM` (``prior``, MGA's
    slot, stays optional, so ``model=munet model/prior=motion_guided`` combines the two methods).

    ``motion``: ``(previous_s16, current_s16) -> enhanced current_s16``, normally
    :class:`voszoo.layers.motion_uncertainty.MotionEnhancement` (MU-Layer + MSAM).
    """

    required_slots = {
        "motion": "MUNet needs a motion module (conf/model/motion/, e.g. mu_layer); without it the network is STM: "
        "use model=stm or model=stm_r18",
    }
