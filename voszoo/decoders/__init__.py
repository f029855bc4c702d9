"""Segmentation decoders: multi-scale features -> per-pixel logits."""

from voszoo.decoders.refine import RefineBlock, RefineDecoder, ResidualBlock

__all__ = ["RefineBlock", "RefineDecoder", "ResidualBlock"]
