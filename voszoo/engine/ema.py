"""Exponential moving average of a model's weights, evaluated (and checkpointed) separately from the model."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """A frozen copy of ``model`` whose floating-point parameters and buffers track ``ema = d * ema + (1 - d) * w``.

    After update number n (1-based) the decay is ``d = decay`` or, with ``warmup > 0``,
    ``d = decay * (1 - exp(-n / warmup))`` so that early weights (far from converged) are forgotten quickly
    (the ramp of YOLOv5's ``ModelEMA``). Integer buffers (BatchNorm's ``num_batches_tracked``) are copied.
    ``module`` is the averaged model, always in eval mode and without gradients.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay must lie in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"ModelEMA: warmup must be >= 0 updates, got {warmup}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = int(warmup)
        self.updates = 0

    def current_decay(self, updates: int | None = None) -> float:
        """The decay used by update number ``updates`` (default: the next one)."""
        n = self.updates + 1 if updates is None else updates
        return self.decay * (1.0 - math.exp(-n / self.warmup)) if self.warmup > 0 else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the current weights of ``model`` (same architecture)."""
        decay = self.current_decay()
        self.updates += 1
        source = unwrap_model(model).state_dict()
        for key, average in self.module.state_dict().items():
            current = source[key].detach()
            if average.is_floating_point():
                average.lerp_(current.to(average.dtype), 1.0 - decay)
            else:
                average.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in ("updates", "module") if key not in state]
        if missing:
            raise ValueError(f"ModelEMA.load_state_dict: the state lacks {missing}; have {sorted(state)}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
