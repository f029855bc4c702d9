"""Frozen batch norm and frozen early stages for encoders, as AOT trains them; a ResNet with both options.

AOT (Yang et al., NeurIPS 2021, shared/papers/001, App. A.1.2): "the statistics of BN modules and the first two
stages in the encoder are frozen". The official code (github.com/yoxu515/aot-benchmark,
``networks/encoders/__init__.py``, ``networks/layers/normalization.py``) builds its encoders with
``FrozenBatchNorm2d`` (weight, bias and statistics are buffers: no parameters, no ``num_batches_tracked``) and
``freeze_at = 2``: stage 1 is the stem, stage 2 the first stride-4 stage. Official checkpoints therefore hold no
``num_batches_tracked`` keys, and the official parameter counts (e.g. 5.73M for AOT-T) leave the batch norms out.

:class:`FreezableResNetBackbone` is :class:`voszoo.backbones.ResNetBackbone` (torchvision names ``conv1``, ``bn1``,
``layer1``..``layer3``, which are also the official R50-AOT encoder's names) with these two options. The official
ResNet-50 at output stride 16 is torchvision's up to ``layer3`` (stride on the 3x3 convolution, no dilation), so no
other change is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import misc

from voszoo.backbones.resnet import ResNetBackbone

__all__ = ["FreezableResNetBackbone", "FrozenBatchNorm2d", "convert_frozen_batchnorm", "freeze_stages"]


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (weight, bias, running_mean, running_var as buffers; ``num_batches_tracked``
    dropped when loading) computed with the fused eval-mode ``F.batch_norm`` kernel, which is faster on CPU than
    torchvision's two-step ``x * scale + shift``. ``forward(x (B, C, H, W)) -> (B, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.BatchNorm2d` inside ``module`` by a ``FrozenBatchNorm2d`` with the same
    weight, bias, running statistics and eps (in place; returns ``module``, or the replacement if it is one).

    The state dict changes (affine terms become buffers, no ``num_batches_tracked``), as the official AOT encoders
    have it; detectron2 names this ``FrozenBatchNorm2d.convert_frozen_batchnorm``. To freeze the batch norms of any
    model for training while keeping its state dict, use :func:`voszoo.engine.optim.freeze_batchnorm`."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen.to(module.weight.device)
    for name, child in module.named_children():
        replaced = convert_frozen_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def freeze_stages(stages: Sequence[nn.Module], freeze_at: int) -> None:
    """``requires_grad = False`` on the parameters of the first ``freeze_at`` stages (official ``freeze_at``:
    stage 1 = stem, stage 2 = first stride-4 stage, ...)."""
    if not 0 <= freeze_at <= len(stages):
        raise ValueError(f"freeze_at must be in [0, {len(stages)}] for this encoder, got {freeze_at}")
    for stage in stages[:freeze_at]:
        for param in stage.parameters():
            param.requires_grad_(False)


class FreezableResNetBackbone(ResNetBackbone):
    """A :class:`ResNetBackbone` (up to ``layer3``, stride 16) whose batch norms and first stages can be frozen.

    Args:
        depth, weights: as :class:`ResNetBackbone` (weights are loaded before the batch norms are frozen).
        frozen_bn: replace every BatchNorm2d by ``FrozenBatchNorm2d`` (official AOT; state dict without
            ``num_batches_tracked``, batch-norm affine terms are buffers).
        freeze_at: freeze the parameters of the stem (1), and of ``layer1`` (2), ``layer2`` (3), ``layer3`` (4);
            AOT trains with 2.

    ``forward(image (B, 3, H, W)) -> {"s4", "s8", "s16"}`` as :class:`ResNetBackbone`.
    """

    def __init__(self, *, depth: int = 50, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 0):
        super().__init__(depth=depth, weights=weights, extra_input_channels=0)
        self.frozen_bn = frozen_bn
        self.freeze_at = freeze_at
        if frozen_bn:
            convert_frozen_batchnorm(self)
        stem = nn.ModuleList([self.conv1, self.bn1])
        freeze_stages([stem, self.layer1, self.layer2, self.layer3], freeze_at)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, frozen_bn={self.frozen_bn}, freeze_at={self.freeze_at}"
