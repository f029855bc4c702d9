"""torchvision MobileNetV2 with its last stages dilated to keep stride 16: AOT's encoder.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018 (torchvision's
``mobilenet_v2``). AOT (Yang et al., NeurIPS 2021, shared/papers/001, Sec. 5 and App. A.1.1): "we increase the final
resolution of the encoder to 1/16 by adding a dilation to the last stage and removing a stride from the first
convolution of this stage". The official code (github.com/yoxu515/aot-benchmark,
``networks/encoders/mobilenetv2.py``, ``output_stride=16``) does this for ``features[14:]``: block 14 (the first
160-channel block) loses its stride, blocks 15-17 (the other 160-channel blocks and the 320-channel one) get
dilation 2 in their depth-wise 3x3 convolutions. The module layout and names are torchvision's (``features.N``),
so torchvision's ImageNet weights (``mobilenet_v2-b0353104.pth`` = ``IMAGENET1K_V1``, the official pretraining) and
official AOT encoders (``encoder.features...``) load unchanged.

Outputs (official stages: ``features[0:4]``, ``[4:7]``, ``[7:14]``, ``[14:]``):

- ``s4``: (B, 24, H/4, W/4); ``s8``: (B, 32, H/8, W/8); ``s16``: (B, 96, H/16, W/16);
- ``last``: (B, 1280, H/16, W/16), the final 1x1 convolution, which AOT projects to the LSTT width.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from voszoo.backbones.frozen import convert_frozen_batchnorm, freeze_stages
from voszoo.backbones.weights import check_torchvision_load, read_torchvision_weights

__all__ = ["MOBILENET_V2_CHANNELS", "MobileNetV2Backbone"]

MOBILENET_V2_CHANNELS = {"s4": 24, "s8": 32, "s16": 96, "last": 1280}
_STAGES = ((0, 4), (4, 7), (7, 14), (14, 19))
_DILATED_FROM = 14  # first block of the stride-32 stages in the undilated network


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 ``features`` at output stride 16: image (B, 3, H, W) -> {"s4", "s8", "s16", "last"}.

    Args:
        weights: None (random init, torchvision's Kaiming init), a path to a ``.pth`` state dict of torchvision's
            ``mobilenet_v2`` (``classifier.*`` is ignored, any other mismatch is an error), or the name of a member
            of ``torchvision.models.MobileNet_V2_Weights`` such as ``"IMAGENET1K_V1"`` (downloads: only on a
            machine with internet).
        frozen_bn: use ``FrozenBatchNorm2d`` (official AOT: batch-norm statistics and affine terms frozen, not
            parameters); False keeps trainable :class:`torch.nn.BatchNorm2d` (e.g. to train from random init).
        freeze_at: freeze the parameters of ``features[0]`` (1) and of the first stages: ``features[0:4]`` (2),
            ``[0:7]`` (3), ``[0:14]`` (4), all (5). AOT trains with 2 ("the first two stages ... are frozen").
    """

    def __init__(self, *, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 0) -> None:
        super().__init__()
        self.channels = dict(MOBILENET_V2_CHANNELS)
        self.frozen_bn = frozen_bn
        self.freeze_at = freeze_at
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        self._dilate()
        if weights is not None:
            self.load_torchvision_weights(weights)
        if frozen_bn:
            convert_frozen_batchnorm(self)
        stages = [nn.ModuleList(self.features[a:b]) for a, b in _STAGES]
        freeze_stages([self.features[0], *stages], freeze_at)

    def _dilate(self) -> None:
        """Output stride 16: no stride in block 14, dilation 2 in the depth-wise convolutions of blocks 15-17."""
        for index in range(_DILATED_FROM, 18):
            depthwise = self.features[index].conv[1][0]  # expand ratio 6: conv = [pw, dw, pw-linear, bn]
            if not (isinstance(depthwise, nn.Conv2d) and depthwise.groups == depthwise.in_channels > 1):
                raise RuntimeError(f"MobileNetV2Backbone: unexpected torchvision layout at features[{index}]")
            if index == _DILATED_FROM:
                depthwise.stride = (1, 1)
            else:
                depthwise.dilation = (2, 2)
                depthwise.padding = (2, 2)

    def load_torchvision_weights(self, weights: str) -> None:
        """Load torchvision MobileNetV2 weights from a file path or a weight enum name (see the class docstring)."""
        state, source = read_torchvision_weights(weights, enum_name="MobileNet_V2_Weights", owner="MobileNetV2Backbone")
        kept = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        result = self.load_state_dict(kept, strict=False)
        check_torchvision_load(
            owner="MobileNetV2Backbone",
            source=source,
            architecture="mobilenet_v2",
            missing=result.missing_keys,
            unexpected=result.unexpected_keys,
        )

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """image: (B, 3, H, W) normalised, H and W multiples of 16."""
        x = image
        outputs = []
        for start, stop in _STAGES:
            for index in range(start, stop):
                x = self.features[index](x)
            outputs.append(x)
        return dict(zip(("s4", "s8", "s16", "last"), outputs, strict=True))

    def extra_repr(self) -> str:
        return f"output_stride=16, frozen_bn={self.frozen_bn}, freeze_at={self.freeze_at}"
