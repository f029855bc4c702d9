"""Data-parallel training through ``torchrun``: process-group set-up, collectives and per-rank data sharding.

``torchrun --nproc_per_node N -m voszoo.train ...`` starts N processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in their environment; :func:`init_distributed` joins them (``env://``; NCCL on
CUDA, Gloo on CPU). Without those variables (or with ``WORLD_SIZE=1``) everything here is a no-op, so the same code
runs in one process. The process group is left open for the rest of the program (a second training stage reuses
it); the entry point calls :func:`destroy_distributed` once at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "init_distributed",
    "destroy_distributed",
    "barrier",
    "all_reduce_mean",
    "all_gather_objects",
    "shard_indices",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(*, device_type: str) -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one (idempotent).

    ``device_type`` is ``"cuda"`` (NCCL; this process then uses ``cuda:LOCAL_RANK``) or ``"cpu"`` (Gloo).
    """
    if _initialized():
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), dist.get_backend())
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device_type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(local_rank)
    elif device_type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"init_distributed: device_type must be 'cuda' or 'cpu', got {device_type!r}")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistContext(rank, local_rank, world_size, backend)


def destroy_distributed() -> None:
    """Leave the process group (call once, at the end of the program)."""
    if _initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the processes (a copy; unchanged in a single process)."""
    if not (_initialized() and dist.get_world_size() > 1):
        return values
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Average the gradients of ``parameters`` over the processes in place (what DDP's reducer does, for steps
    that bypass it, e.g. the trainer's sequence learning). Parameters without a gradient count as zero."""
    if not _initialized():
        return
    for parameter in parameters:
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        parameter.grad = all_reduce_mean(grad)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not (_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard_indices(
    length: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
) -> list[int]:
    """The dataset indices process ``rank`` visits in ``epoch``: a (seeded) permutation, dealt round-robin.

    Like ``torch.utils.data.DistributedSampler`` with ``drop_last=True``: the permutation is drawn from
    ``seed + epoch`` (the same on every process), process r takes positions r, r + world_size, ... and every
    process gets ``length // world_size`` indices. With world size 1 it is the whole permutation, so that batch k
    of a single process holds exactly the samples of step k of a multi-process run.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_indices: rank must lie in [0, {world_size}), got {rank}")
    if shuffle:
        generator = torch.Generator().manual_seed(int(seed) + int(epoch))
        order = torch.randperm(length, generator=generator).tolist()
    else:
        order = list(range(length))
    per_rank = length // world_size
    return order[rank::world_size][:per_rank]
