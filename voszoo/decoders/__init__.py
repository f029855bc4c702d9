"""Segmentation decoders: multi-scale features -> per-pixel logits."""

from voszoo.decoders.fpn import ConvGN, FPNHead
from voszoo.decoders.refine import RefineBlock, RefineDecoder, ResidualBlock

__all__ = ["ConvGN", "FPNHead", "RefineBlock", "RefineDecoder", "ResidualBlock"]
