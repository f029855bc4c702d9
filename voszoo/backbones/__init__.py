"""Image backbones returning multi-scale feature maps ``{"s4", "s8", "s16"}``."""

from voszoo.backbones.resnet import RESNET_CHANNELS, ResNetBackbone

__all__ = ["RESNET_CHANNELS", "ResNetBackbone"]
