"""STM's refinement decoder: fuse the memory read at stride 16, refine with skip connections up to stride 4.

Oh et al., "Video Object Segmentation using Space-Time Memory Networks", ICCV 2019, Sec. 3.3 "Decoder" (after the
refinement module of RGMP, Oh et al. CVPR 2018); official code github.com/seoungwugoh/STM ``model.py``
(``Decoder``, ``Refine``, ``ResBlock``). Also SITVOS's segmentation decoder (Lan et al., AAAI 2022, Sec. 3.4) and
MUNet's. Layout, as in the official code:

    x (stride 16) -> fuse: 3x3 conv to ``hidden`` -> residual block
    for each skip (coarse to fine): refine = conv_skip(skip) -> residual block, + bilinear x2 of the coarser output,
                                    -> residual block
    pred: ReLU, 3x3 conv to ``out_channels`` at stride 4 -> bilinear upsampling to the input size.

Residual blocks are pre-activation without normalisation: x + conv2(relu(conv1(relu(x)))), all 3x3 with bias.

Per-object models decode every object of a frame with the same query skips. The skip branch (conv_skip + residual
block) depends on the skip only, so it runs once per frame and is shared by the objects (``skip_repeats``), where the
official code expands the skips over the objects first and repeats it per object: the same numbers, 3 of the 5
stride-4 convolutions per extra object saved (a third of STM's decoder time with 2 objects at 480p).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RefineDecoder", "RefineBlock", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convolutions, same channels (STM ``ResBlock``). (B, C, H, W) -> same."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # in place on conv1's fresh output (its backward needs only its input): one stride-4 tensor less at peak
        return x + self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True))


class RefineBlock(nn.Module):
    """Merge a skip feature with the upsampled coarser decoder output (STM ``Refine``).

    ``forward(skip (B, C_skip, H, W), coarse (B * repeats, C, H', W'), *, repeats=1) -> (B * repeats, C, H, W)``;
    ``coarse`` is bilinearly resized to the skip's size (x2 in STM, where every size is a multiple of the stride).
    Skip sample b serves coarse rows b * repeats ... (b + 1) * repeats - 1 (objects of a frame, object-major).
    """

    def __init__(self, *, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.conv_skip = nn.Conv2d(skip_channels, channels, kernel_size=3, padding=1)
        self.res_skip = ResidualBlock(channels=channels)
        self.res_out = ResidualBlock(channels=channels)

    def skip_branch(self, skip: Tensor) -> Tensor:
        """conv_skip + residual block of the skip alone: (B, C_skip, H, W) -> (B, C, H, W)."""
        return self.res_skip(self.conv_skip(skip))

    def merge(self, branch: Tensor, coarse: Tensor) -> Tensor:
        """res_out(branch + bilinear(coarse to the branch's size)); both with the same batch (``branch`` may be an
        expanded view)."""
        up = F.interpolate(coarse, size=branch.shape[-2:], mode="bilinear", align_corners=False)
        # in place on the fresh upsampled tensor (addition's backward needs neither input): one tensor less at peak
        return self.res_out(up.add_(branch))

    def forward(self, skip: Tensor, coarse: Tensor, *, repeats: int = 1) -> Tensor:
        s = self.skip_branch(skip)
        return self.merge(s.repeat_interleave(repeats, dim=0) if repeats != 1 else s, coarse)


class RefineDecoder(nn.Module):
    """STM's decoder (see the module docstring).

    Args:
        in_channels: channels of the stride-16 input (STM: 1024 = memory read 512 + query value 512).
        skip_channels: channels of the skip features, coarse to fine (STM with ResNet-50: (512, 256) for the
            stride-8 ``res3`` and stride-4 ``res2``; ResNet-18: (128, 64)).
        hidden_channels: decoder width (STM: 256).
        out_channels: output channels (STM: 2, background and foreground of one object).

    ``forward(x (B * R, in_channels, h, w), skips: [(B, skip_channels[k], H_k, W_k)...], *, output_size=None,
    skip_repeats=R)`` returns logits (B * R, out_channels, H, W): ``output_size`` if given, else 4x the last skip's
    size (STM's x4). With ``skip_repeats`` R > 1 (R objects per frame, rows of x object-major within a frame) the
    skip branches run once per frame and are shared by its R rows. ``chunk_size``: decode at most this many rows of x
    at a time (the stride-4 activations of all objects at once dominate the peak memory of per-object models at
    480p); None decodes every row at once. Chunks give the same numbers.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1024,
        skip_channels: Sequence[int] = (512, 256),
        hidden_channels: int = 256,
        out_channels: int = 2,
    ) -> None:
        super().__init__()
        self.skip_channels = tuple(int(c) for c in skip_channels)
        self.fuse = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.res = ResidualBlock(channels=hidden_channels)
        self.refines = nn.ModuleList(RefineBlock(skip_channels=c, channels=hidden_channels) for c in self.skip_channels)
        self.pred = nn.Conv2d(hidden_channels, out_channels, kernel_size=3, padding=1)

    def forward(
        self,
        x: Tensor,
        skips: Sequence[Tensor],
        *,
        output_size: tuple[int, int] | None = None,
        skip_repeats: int = 1,
        chunk_size: int | None = None,
    ) -> Tensor:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"RefineDecoder: chunk_size must be >= 1 or None, got {chunk_size}")
        if len(skips) != len(self.refines):
            raise ValueError(f"RefineDecoder: expected {len(self.refines)} skip features, got {len(skips)}")
        if skip_repeats < 1:
            raise ValueError(f"RefineDecoder: skip_repeats must be >= 1, got {skip_repeats}")
        for k, (skip, channels) in enumerate(zip(skips, self.skip_channels, strict=True)):
            if skip.shape[1] != channels:
                raise ValueError(f"RefineDecoder: skips[{k}] must have {channels} channels, got {tuple(skip.shape)}")
            if skip.shape[0] * skip_repeats != x.shape[0]:
                raise ValueError(
                    f"RefineDecoder: skips[{k}] has batch {skip.shape[0]}, which times skip_repeats={skip_repeats} "
                    f"must equal the batch {x.shape[0]} of x"
                )
        branches = [refine.skip_branch(skip) for refine, skip in zip(self.refines, skips, strict=True)]
        rows = x.shape[0]
        step = rows if chunk_size is None else chunk_size
        outputs = []
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            if stop - start == rows:  # one chunk: every branch row serves skip_repeats consecutive rows
                shared = [b.repeat_interleave(skip_repeats, dim=0) if skip_repeats != 1 else b for b in branches]
            elif start // skip_repeats == (stop - 1) // skip_repeats:  # the chunk lies in one frame: a view, no copy
                frame = start // skip_repeats
                shared = [b[frame : frame + 1].expand(stop - start, *b.shape[1:]) for b in branches]
            else:
                index = torch.arange(start, stop, device=x.device) // skip_repeats
                shared = [b.index_select(0, index) for b in branches]
            m = self.res(self.fuse(x[start:stop]))
            for refine, branch in zip(self.refines, shared, strict=True):
                m = refine.merge(branch, m)
            p = self.pred(F.relu(m))
            if output_size is None:
                outputs.append(F.interpolate(p, scale_factor=4, mode="bilinear", align_corners=False))
            else:
                outputs.append(F.interpolate(p, size=tuple(output_size), mode="bilinear", align_corners=False))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
