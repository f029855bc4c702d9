"""torchvision ResNets cut after ``layer3`` (stride 16), returning multi-scale features.

The layout follows STM (Oh et al., ICCV 2019, Sec. 3.1; official repo github.com/seoungwugoh/STM, ``model.py``):
both STM encoders are ResNet-50s whose ``res4`` (torchvision's ``layer3``, stride 16) is the last stage used, and
whose ``res3``/``res2`` (``layer2``/``layer1``) feed the decoder's skip connections. The memory encoder additionally
takes the object mask and the other-objects mask; STM adds a 1-channel 7x7 convolution per extra input to ``conv1``
(``conv1_m``, ``conv1_o``) before ``bn1``. Here the extra inputs go through one convolution ``conv1_extra`` with
``extra_input_channels`` input channels: a convolution over stacked channels is exactly the sum of one convolution
per channel, so this holds STM's two convolutions (the converter concatenates their weights).

A backbone can also take a non-RGB input alone: ``image_channels=1`` gives SITVOS's light-weight mask encoder
(Lan et al., AAAI 2022, Sec. 3.2: a ResNet-18 whose first convolution takes the 1-channel object mask; official
``Encoder_mask.conv1_m``). Its ``conv1`` then has ``image_channels`` inputs, starts like PyTorch's default init
(as the official ``conv1_m``) and is left out when torchvision weights are loaded.

Submodule names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer3``), so torchvision ResNet state dicts
load directly. Batch norms are plain :class:`torch.nn.BatchNorm2d`; freezing them is the trainer's job.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor, nn

from voszoo.backbones.weights import check_torchvision_load, read_torchvision_weights

__all__ = ["ResNetBackbone", "RESNET_CHANNELS"]

#: feature channels of each returned scale, per depth
RESNET_CHANNELS: dict[int, dict[str, int]] = {
    18: {"s4": 64, "s8": 128, "s16": 256},
    34: {"s4": 64, "s8": 128, "s16": 256},
    50: {"s4": 256, "s8": 512, "s16": 1024},
    101: {"s4": 256, "s8": 512, "s16": 1024},
}

_WEIGHT_ENUMS = {18: "ResNet18_Weights", 34: "ResNet34_Weights", 50: "ResNet50_Weights", 101: "ResNet101_Weights"}
# parts of a full torchvision ResNet state dict that this truncated backbone does not have
_UNUSED_PREFIXES = ("layer4.", "fc.")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet up to ``layer3``: image (B, 3, H, W) -> {"s4", "s8", "s16"} feature maps.

    Args:
        depth: 18, 34, 50 or 101.
        weights: None (random init), ``"toyvos"`` (the cached ToyVOS pre-training of ``voszoo-pretrain``,
            docs/pretraining.md), a path to a ``.pth`` state dict of torchvision's ``resnet<depth>`` (keys
            ``layer4.*`` and ``fc.*`` are ignored, any other mismatch is an error), or the name of a torchvision
            weight enum member such as ``"IMAGENET1K_V1"`` (downloads: only on a machine with internet).
        extra_input_channels: extra per-pixel inputs (e.g. 2 for STM's object mask and other-objects mask) fed
            through ``conv1_extra`` (7x7, stride 2, no bias) and added to ``conv1`` of the image. Its weights start
            like PyTorch's default init of one 1-channel convolution per extra input, as STM's ``conv1_m/conv1_o``.
        image_channels: channels of the ``image`` input (3: RGB, ``conv1`` loads torchvision weights; any other
            count, e.g. 1 for SITVOS's mask encoder: a fresh ``conv1`` with PyTorch's default init, not loaded).

    Outputs (``forward``): ``s4`` = layer1 (B, C4, H/4, W/4), ``s8`` = layer2 (B, C8, H/8, W/8), ``s16`` = layer3
    (B, C16, H/16, W/16); channels per depth in :data:`RESNET_CHANNELS` and ``self.channels``.
    """

    def __init__(
        self, *, depth: int = 50, weights: str | None = None, extra_input_channels: int = 0, image_channels: int = 3
    ) -> None:
        super().__init__()
        if depth not in RESNET_CHANNELS:
            raise ValueError(f"ResNetBackbone: depth must be one of {sorted(RESNET_CHANNELS)}, got {depth}")
        if extra_input_channels < 0:
            raise ValueError(f"ResNetBackbone: extra_input_channels must be >= 0, got {extra_input_channels}")
        if image_channels < 1:
            raise ValueError(f"ResNetBackbone: image_channels must be >= 1, got {image_channels}")
        self.depth = depth
        self.extra_input_channels = extra_input_channels
        self.image_channels = image_channels
        self.channels = dict(RESNET_CHANNELS[depth])
        # built on the meta device, so that the unused layer4 / fc (2/3 of a ResNet-50) cost nothing, then
        # materialised and initialised as torchvision does
        with torch.device("meta"):
            resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.to_empty(device=torch.empty(()).device)
        self._init_like_torchvision()
        if image_channels != 3:
            # PyTorch's default conv init (as SITVOS's conv1_m): U(-b, b), b = 1/sqrt(fan_in)
            self.conv1 = nn.Conv2d(image_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if extra_input_channels:
            self.conv1_extra = nn.Conv2d(extra_input_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            # PyTorch's default init of a 1-channel 7x7 conv: U(-1/sqrt(49), 1/sqrt(49)) (fan_in of one channel)
            bound = 1.0 / math.sqrt(7 * 7)
            nn.init.uniform_(self.conv1_extra.weight, -bound, bound)
        else:
            self.conv1_extra = None
        # what no pretrained weights filled (voszoo.engine.optim.fresh_parameter_names): everything until a load
        self.fresh_parameter_prefixes: tuple[str, ...] = ("",)
        if weights is not None:
            self.load_torchvision_weights(weights)

    def _init_like_torchvision(self) -> None:
        """torchvision's ResNet init: Kaiming-normal (fan_out) convolutions, unit batch norms with fresh statistics."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def load_torchvision_weights(self, weights: str) -> None:
        """Load torchvision ResNet weights from a file path or a weight enum name (see the class docstring)."""
        state, source = read_torchvision_weights(
            weights, enum_name=_WEIGHT_ENUMS[self.depth], owner="ResNetBackbone", architecture=f"resnet{self.depth}"
        )
        kept = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
        not_loaded = ("conv1_extra.",)
        if self.image_channels != 3:  # an RGB conv1 does not fit: conv1 keeps its own init
            kept.pop("conv1.weight", None)
            not_loaded = ("conv1_extra.", "conv1.weight")
        result = self.load_state_dict(kept, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(not_loaded)]
        check_torchvision_load(
            owner="ResNetBackbone",
            source=source,
            architecture=f"resnet{self.depth}",
            missing=missing,
            unexpected=result.unexpected_keys,
        )
        self.fresh_parameter_prefixes = not_loaded

    def forward(self, image: Tensor, extra: Tensor | None = None) -> dict[str, Tensor]:
        """image: (B, image_channels, H, W) (normalised RGB by default); extra: (B, E, H, W) with
        E = ``extra_input_channels`` (or None if 0)."""
        x = self.conv1(image)
        if self.conv1_extra is not None:
            if extra is None or extra.shape[1] != self.extra_input_channels:
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(
                    f"ResNetBackbone: extra must be (B, {self.extra_input_channels}, H, W) for this backbone, got {got}"
                )
            x = x + self.conv1_extra(extra.to(x.dtype))
        elif extra is not None:
            raise ValueError("ResNetBackbone: got `extra` inputs but was built with extra_input_channels=0")
        x = self.maxpool(self.relu(self.bn1(x)))
        s4 = self.layer1(x)
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        return {"s4": s4, "s8": s8, "s16": s16}

    def extra_repr(self) -> str:
        extra, image = self.extra_input_channels, self.image_channels
        return f"depth={self.depth}, extra_input_channels={extra}, image_channels={image}"
