"""Seeding and random-number-generator state of the three global RNGs a training run touches (python, numpy, torch).

:func:`get_rng_state` returns only tensors, ints, floats, strings and tuples, so that a checkpoint holding it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state"]

_MAX_SEED = 2**32 - 1


def seed_everything(seed: int, *, rank: int = 0) -> int:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device) with ``seed + rank``.

    The per-rank offset gives each DDP process its own dropout / augmentation stream. Returns the seed used.
    """
    value = int(seed) + int(rank)
    if not 0 <= value <= _MAX_SEED:
        raise ValueError(f"seed + rank must lie in [0, 2**32 - 1], got seed={seed}, rank={rank}")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device
    return value


def get_rng_state() -> dict[str, Any]:
    """The state of python's, numpy's and torch's global RNGs (CUDA only if CUDA is already initialised)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    missing = [key for key in ("python", "numpy", "torch") if key not in state]
    if missing:
        raise ValueError(f"set_rng_state: the RNG state lacks {missing}; expected the output of get_rng_state()")
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": int(numpy_state["pos"])},
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
