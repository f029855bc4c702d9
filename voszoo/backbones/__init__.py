"""Image backbones returning multi-scale feature maps ``{"s4", "s8", "s16"}``."""

from voszoo.backbones.frozen import FreezableResNetBackbone, FrozenBatchNorm2d, convert_frozen_batchnorm
from voszoo.backbones.mobilenet import MOBILENET_V2_CHANNELS, MobileNetV2Backbone
from voszoo.backbones.resnet import RESNET_CHANNELS, ResNetBackbone

__all__ = [
    "MOBILENET_V2_CHANNELS",
    "RESNET_CHANNELS",
    "FreezableResNetBackbone",
    "FrozenBatchNorm2d",
    "MobileNetV2Backbone",
    "ResNetBackbone",
    "convert_frozen_batchnorm",
]
