"""AOT's FPN decoder with Group Normalization: LSTT features at stride 16 -> identity logits at stride 4.

Yang, Wei and Yang, NeurIPS 2021 (shared/papers/001), Sec. 5 "Network Details" (FPN [Lin et al. 2017] with Group
Normalization [Wu and He 2018]) and App. A.1.1 ("the FPN decoder progressively increases the feature resolution from
1/16 to 1/4 and decreases the channel dimension from 256 to 128 before the final output layer"); official code
github.com/yoxu515/aot-benchmark ``networks/decoders/fpn.py`` (``FPNSegmentationHead``) and
``networks/layers/basic.py`` (``ConvGN``), whose names and order the parameters keep.

    x = ReLU(GN(conv_in(x)))                                           1x1, in_channels -> hidden, stride 16
    x = ReLU(GN(conv_16x(adapter_16x(s16) + x)))                       3x3, hidden -> hidden
    x = ReLU(GN(conv_8x(adapter_8x(s8) + up(x))))                      3x3, hidden -> hidden / 2, stride 8
    x = ReLU(GN(conv_4x(adapter_4x(s4) + up(x))))                      3x3, hidden / 2 -> hidden / 2, stride 4
    logits = conv_out(x)                                               1x1, hidden / 2 -> out_channels

``up`` is bilinear resizing to the skip's size (``align_corners=True`` as the official default). In AOT the input
is the concatenation of the projected encoder features and every LSTT block's output (in_channels = 256 (L + 1)),
the skips are the encoder's stride 16, 8 and 4 features, and out_channels = M + 1 identity logits. GroupNorm has 8
groups; every weight with more than one dimension is Xavier-uniform initialised (official).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvGN", "FPNHead", "stacked_input_channels"]


def stacked_input_channels(*, width: int, layers: int) -> int:
    """``width x (layers + 1)``: the FPN input of AOT and BATMAN, the projected encoder features and the output of
    each of the ``layers`` propagation blocks, all ``width`` wide. The presets compute ``decoder.in_channels`` with it
    (a nested ``_target_``), so that a sweep over the depth (``model.lstt.num_layers=1,2,3``) keeps the decoder in
    step without a second override."""
    if width < 1 or layers < 0:
        raise ValueError(f"stacked_input_channels: width must be >= 1 and layers >= 0, got {width} and {layers}")
    return width * (layers + 1)


class ConvGN(nn.Module):
    """Convolution (same padding, with bias) followed by GroupNorm: ``conv`` and ``gn`` as the official ``ConvGN``."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, gn_groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.gn = nn.GroupNorm(gn_groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.gn(self.conv(x))


class FPNHead(nn.Module):
    """FPN segmentation head (see the module docstring).

    Args:
        in_channels: channels of the stride-16 input (AOT: 256 x (LSTT layers + 1)).
        out_channels: output logits (AOT: M + 1 = 11 identities).
        hidden_channels: width at stride 16 (256); strides 8 and 4 use half.
        skip_channels: channels of the stride 16, 8 and 4 skip features, in that order (MobileNetV2: 96, 32, 24;
            ResNet-50: 1024, 512, 256).
        gn_groups: GroupNorm groups (8).
        align_corners: of the bilinear upsampling (official ``MODEL_ALIGN_CORNERS = True``).

    ``forward(x (B, in_channels, H/16, W/16), skips [s16, s8, s4]) -> (B, out_channels, H/4, W/4)``, the spatial
    size of ``s4``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 512,
        out_channels: int = 11,
        hidden_channels: int = 256,
        skip_channels: Sequence[int] = (96, 32, 24),
        gn_groups: int = 8,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        skip_channels = tuple(skip_channels)
        if len(skip_channels) != 3:
            raise ValueError(f"FPNHead: skip_channels must give the s16, s8, s4 channels, got {skip_channels}")
        if hidden_channels % 2:
            raise ValueError(f"FPNHead: hidden_channels must be even, got {hidden_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.skip_channels = skip_channels
        self.align_corners = align_corners
        half = hidden_channels // 2
        self.conv_in = ConvGN(in_channels=in_channels, out_channels=hidden_channels, kernel_size=1, gn_groups=gn_groups)
        self.conv_16x = ConvGN(
            in_channels=hidden_channels, out_channels=hidden_channels, kernel_size=3, gn_groups=gn_groups
        )
        self.conv_8x = ConvGN(in_channels=hidden_channels, out_channels=half, kernel_size=3, gn_groups=gn_groups)
        self.conv_4x = ConvGN(in_channels=half, out_channels=half, kernel_size=3, gn_groups=gn_groups)
        self.adapter_16x = nn.Conv2d(skip_channels[0], hidden_channels, 1)
        self.adapter_8x = nn.Conv2d(skip_channels[1], hidden_channels, 1)
        self.adapter_4x = nn.Conv2d(skip_channels[2], half, 1)
        self.conv_out = nn.Conv2d(half, out_channels, 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _up(self, x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        if len(skips) != 3:
            raise ValueError(f"FPNHead: skips must be [s16, s8, s4], got {len(skips)} tensors")
        s16, s8, s4 = skips
        for name, skip, channels in zip(("s16", "s8", "s4"), skips, self.skip_channels, strict=True):
            if skip.ndim != 4 or skip.shape[1] != channels:
                raise ValueError(f"FPNHead: skip {name} must be (B, {channels}, h, w), got {tuple(skip.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"FPNHead: x must have {self.in_channels} channels, got {tuple(x.shape)}")
        x = F.relu(self.conv_in(x))
        x = F.relu(self.conv_16x(self.adapter_16x(s16) + x))
        x = F.relu(self.conv_8x(self.adapter_8x(s8) + self._up(x, s8)))
        x = F.relu(self.conv_4x(self.adapter_4x(s4) + self._up(x, s4)))
        return self.conv_out(x)

    def extra_repr(self) -> str:
        return f"skip_channels={self.skip_channels}, align_corners={self.align_corners}"
