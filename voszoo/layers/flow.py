"""Optical flow for BATMAN: initial flow sources (frozen torchvision RAFT, ground truth, none) and the flow
calibration U-Net.

Yu et al., "BATMAN", ECCV 2022 (shared/papers/000), Sec. 3.1 (a frozen pre-trained flow network between the
previous and the query frame), Sec. 3.3 / Fig. 3 (optical flow calibration) and Sec. 4.1 (RAFT pre-trained on
FlyingThings3D). No official code is public.

Flow sources share ``forward(previous (B, 3, H, W), current (B, 3, H, W)) -> (B, 2, H, W) | None``: the forward
flow from the previous to the current frame in pixels of the input resolution (x then y displacement), on
ImageNet-normalised images.

- :class:`RAFTFlow`: torchvision's RAFT (``raft_small`` / ``raft_large``), frozen (no gradients, always in eval
  mode). Inputs are de-normalised to [0, 1] then mapped to [-1, 1] (RAFT's convention), resized by ``scale``
  (``cpu_scale`` on CPU tensors: half resolution by default), replicate-padded to a multiple of 8 and to at least
  ``min_size`` pixels per side (torchvision's 4-level correlation pyramid at stride 8 needs >= 128), and the flow is
  cropped, resized back and rescaled to input pixels. Weights: None (random init: tests), a path to a torchvision
  RAFT state dict, or a torchvision weight enum member name (``"C_T_V2"``: FlyingChairs + FlyingThings3D, the
  paper's pre-training; downloads, so only with internet).
- :class:`GroundTruthFlow`: no network; the model takes the flow from its training clip (ToyVOS ``Flow/``) and this
  source only marks the choice. Used without a given flow it raises.
- :class:`NoFlow`: returns None (the ``flow=none`` variant: E from appearance only).

:class:`FlowCalibration` (Sec. 3.3, Fig. 3): a U-Net "with 11 layers total" fusing the previous frame's mask into
the initial flow, trained with an MSE between its output and the initial flow. Fig. 3 is not in the text we have,
so the layout is voszoo's choice (11 convolutions): two 3x3 conv + ReLU at each of 3 resolutions on the way down
(the last pair is the bottleneck), max-pooling between them, bilinear upsampling + skip concatenation + two 3x3
conv + ReLU at each of the 2 resolutions on the way up, a final 1x1 convolution to 2 channels (6 + 4 + 1 = 11). No
normalisation layers (as the original U-Net). ``residual=True`` (default) adds the output to the initial flow,
so the module learns a correction; ``False`` predicts the calibrated flow directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["FLOW_VARIANTS", "FlowCalibration", "GroundTruthFlow", "NoFlow", "RAFTFlow", "denormalize_image"]

FLOW_VARIANTS: tuple[str, ...] = ("small", "large")


def denormalize_image(image: Tensor) -> Tensor:
    """ImageNet-normalised (B, 3, H, W) -> [0, 1] (B, 3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return image * std + mean


class NoFlow(nn.Module):
    """The ``flow=none`` source: ``forward(previous, current) -> None``."""

    provides_flow = False

    def forward(self, previous: Tensor, current: Tensor) -> None:
        return None


class GroundTruthFlow(nn.Module):
    """The ``flow=ground_truth`` marker: the model reads the clip's flow; calling this source is an error."""

    provides_flow = True

    def forward(self, previous: Tensor, current: Tensor) -> Tensor:
        raise ValueError(
            "GroundTruthFlow: no ground-truth flow was given for this frame; flow=ground_truth needs training clips "
            "that carry `flows` (B, T-1, 2, H, W) (see docs/methods/batman.md); use flow=raft_small / raft_large"
        )


class RAFTFlow(nn.Module):
    """Frozen torchvision RAFT between two frames (see the module docstring).

    Args:
        variant: ``"small"`` (raft_small, 1.0M parameters) or ``"large"`` (raft_large, 5.3M; the paper's RAFT).
        weights: None (random init), a path to a state dict of torchvision's ``raft_<variant>``, or a weight enum
            member name of ``Raft_Small_Weights`` / ``Raft_Large_Weights`` (e.g. ``"C_T_V2"``).
        num_flow_updates: RAFT's recurrent refinement iterations (torchvision default 12).
        scale: input resize factor on accelerators. cpu_scale: resize factor for CPU tensors (None = ``scale``).
        min_size: each padded side is at least this (torchvision RAFT's correlation pyramid needs >= 128).

    ``forward(previous, current (B, 3, H, W) normalised) -> flow (B, 2, H, W)`` float32, pixels of the input.
    """

    provides_flow = True

    def __init__(
        self,
        *,
        variant: str = "large",
        weights: str | None = None,
        num_flow_updates: int = 12,
        scale: float = 1.0,
        cpu_scale: float | None = 0.5,
        min_size: int = 128,
    ) -> None:
        super().__init__()
        import torchvision.models.optical_flow as of

        if variant not in FLOW_VARIANTS:
            raise ValueError(f"RAFTFlow: unknown variant {variant!r}; valid: {', '.join(FLOW_VARIANTS)}")
        if num_flow_updates < 1:
            raise ValueError(f"RAFTFlow: num_flow_updates must be >= 1, got {num_flow_updates}")
        for name, value in (("scale", scale), ("cpu_scale", cpu_scale)):
            if value is not None and not 0.0 < value <= 4.0:
                raise ValueError(f"RAFTFlow: {name} must be in (0, 4], got {value}")
        if min_size < 128 or min_size % 8:
            raise ValueError(f"RAFTFlow: min_size must be a multiple of 8 and >= 128, got {min_size}")
        self.variant = variant
        self.num_flow_updates = num_flow_updates
        self.scale = scale
        self.cpu_scale = cpu_scale
        self.min_size = min_size
        builder = of.raft_small if variant == "small" else of.raft_large
        enum = of.Raft_Small_Weights if variant == "small" else of.Raft_Large_Weights
        if weights is None:
            self.raft = builder(weights=None)
        elif weights in enum.__members__:
            self.raft = builder(weights=enum[weights])  # downloads: only on a machine with internet
        else:
            path = Path(weights)
            if not path.is_file():
                raise ValueError(
                    f"RAFTFlow: weights {weights!r}: no such file (expected a torchvision raft_{variant} state dict, "
                    f"e.g. raft_{variant}_C_T_V1-*.pth, set by model.flow.weights=<path>) and not a {enum.__name__} "
                    f"member ({', '.join(enum.__members__)}; those download)"
                )
            self.raft = builder(weights=None)
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = self.raft.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"RAFTFlow: {path} is not a raft_{variant} state dict (missing {missing[:5]}, unexpected "
                    f"{unexpected[:5]})"
                )
        self.raft.requires_grad_(False)
        self.raft.eval()

    def train(self, mode: bool = True) -> RAFTFlow:
        super().train(mode)
        self.raft.eval()  # frozen: its batch norms never update
        return self

    @torch.no_grad()
    def forward(self, previous: Tensor, current: Tensor) -> Tensor:
        if previous.shape != current.shape or previous.ndim != 4 or previous.shape[1] != 3:
            raise ValueError(
                f"RAFTFlow: previous and current must be (B, 3, H, W) alike, got {tuple(previous.shape)} and "
                f"{tuple(current.shape)}"
            )
        height, width = previous.shape[-2:]
        factor = self.cpu_scale if (previous.device.type == "cpu" and self.cpu_scale is not None) else self.scale
        sh, sw = max(1, round(height * factor)), max(1, round(width * factor))
        ph = max(self.min_size, -(-sh // 8) * 8)
        pw = max(self.min_size, -(-sw // 8) * 8)

        def prepare(image: Tensor) -> Tensor:
            x = denormalize_image(image.float()).clamp(0.0, 1.0) * 2.0 - 1.0
            if (sh, sw) != (height, width):
                x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
            return F.pad(x, (0, pw - sw, 0, ph - sh), mode="replicate")

        flow = self.raft(prepare(previous), prepare(current), num_flow_updates=self.num_flow_updates)[-1]
        flow = flow[..., :sh, :sw]
        if (sh, sw) != (height, width):
            flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([width / sw, height / sh], device=flow.device).view(1, 2, 1, 1)
        return flow

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, num_flow_updates={self.num_flow_updates}, scale={self.scale}, "
            f"cpu_scale={self.cpu_scale}"
        )


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class FlowCalibration(nn.Module):
    """The optical flow calibration U-Net of Sec. 3.3 (11 convolutions; layout in the module docstring).

    Args:
        mask_channels: channels of the mask input (BATMAN: the M+1 identity slots of the previous frame's mask).
        base_channels: width of the first level (doubles per level; 32 here, not given by the paper).
        residual: output = initial flow + U-Net output (True) or the U-Net output alone.

    ``forward(flow (B, 2, H, W), mask (B, mask_channels, H, W)) -> calibrated flow (B, 2, H, W)``, any H, W (the
    upsampling follows the skip sizes). Flows are in whatever units the caller uses (BATMAN: pixels / flow_norm).
    """

    num_layers = 11

    def __init__(self, *, mask_channels: int, base_channels: int = 32, residual: bool = True) -> None:
        super().__init__()
        if mask_channels < 1 or base_channels < 1:
            raise ValueError(
                f"FlowCalibration: mask_channels and base_channels must be >= 1, got {mask_channels}, {base_channels}"
            )
        c = base_channels
        self.mask_channels = mask_channels
        self.residual = residual
        self.down1 = _double_conv(2 + mask_channels, c)
        self.down2 = _double_conv(c, 2 * c)
        self.bottleneck = _double_conv(2 * c, 4 * c)
        self.up2 = _double_conv(4 * c + 2 * c, 2 * c)
        self.up1 = _double_conv(2 * c + c, c)
        self.out = nn.Conv2d(c, 2, kernel_size=1)

    def forward(self, flow: Tensor, mask: Tensor) -> Tensor:
        if flow.ndim != 4 or flow.shape[1] != 2:
            raise ValueError(f"FlowCalibration: flow must be (B, 2, H, W), got {tuple(flow.shape)}")
        if mask.shape != (flow.shape[0], self.mask_channels, *flow.shape[2:]):
            raise ValueError(
                f"FlowCalibration: mask must be (B, {self.mask_channels}, H, W) = "
                f"{(flow.shape[0], self.mask_channels, *flow.shape[2:])}, got {tuple(mask.shape)}"
            )
        x1 = self.down1(torch.cat([flow, mask.to(flow.dtype)], dim=1))
        x2 = self.down2(F.max_pool2d(x1, 2, ceil_mode=True))
        x3 = self.bottleneck(F.max_pool2d(x2, 2, ceil_mode=True))
        y = F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, x2], dim=1))
        y = F.interpolate(y, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y = self.out(self.up1(torch.cat([y, x1], dim=1)))
        return flow + y if self.residual else y

    def extra_repr(self) -> str:
        return f"mask_channels={self.mask_channels}, residual={self.residual}"
