"""The image normalisation every voszoo model expects (DESIGN.md, section 2): ImageNet's per-channel mean and std.

Defined once, here, with no imports, so that every package (layers included) can read it without a dependency.
"""

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for images scaled to [0, 1]."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for images scaled to [0, 1]."""
