"""Evaluation sharded over ``torchrun`` processes: which rank predicts which videos, and the one exchange after.

``torchrun --nproc_per_node N -m voszoo.evaluate ...`` starts N processes; :func:`join_eval_group` joins them through
:func:`voszoo.engine.distributed.init_distributed` (NCCL on CUDA, Gloo on CPU, as the trainer) and opens a Gloo
group with an explicit ``timeout`` for the evaluation's own messages, which are small Python objects (the shard
plan, per-video frame counts and seconds, errors). No tensor collective runs on the GPUs: inference needs none.

Split (:func:`balanced_shards`): every rank computes the same plan from the video list, no message needed. Videos
are dealt longest first (cost = frames x height x width) to the rank with the least cost so far (the LPT rule), so
that ranks finish close together on datasets whose videos differ in length (DAVIS 2017 val: 25 to 104 frames), where
the round-robin deal of the trainer's :func:`~voszoo.engine.distributed.shard_indices` can leave one rank with
several long videos. Each rank then predicts its videos in dataset order.

Failures: an exception while a rank predicts is caught, sent to every rank in the exchange that follows, and every
rank raises :class:`ShardedEvaluationError` naming the failing rank, video and error (the failing rank chains its
own traceback). A rank that crashes or hangs without reaching the exchange makes the others fail after ``timeout``
seconds with a :class:`ShardedEvaluationError` saying so, instead of waiting forever (``torchrun`` itself also stops
the remaining ranks when one exits with an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

__all__ = ["EvalGroup", "ShardedEvaluationError", "balanced_shards", "join_eval_group", "gather_from_ranks"]

DEFAULT_TIMEOUT = 1800.0
"""Seconds a rank waits for the others in an exchange (torch's default Gloo timeout)."""


class ShardedEvaluationError(RuntimeError):
    """A sharded evaluation cannot finish: a rank failed, timed out, or the ranks disagree about the videos."""


@dataclass(frozen=True)
class EvalGroup:
    """This process's place in a sharded evaluation: ``rank`` of ``world_size``, on local GPU ``local_rank``.

    ``group`` is the Gloo process group (with ``timeout`` seconds) that carries the evaluation's messages.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT
    group: Any = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join_eval_group(*, device_type: str, timeout: float = DEFAULT_TIMEOUT) -> EvalGroup | None:
    """Join the ``torchrun`` process group if the environment describes one; None in a single process.

    ``device_type``: ``"cuda"`` (the process then uses ``cuda:LOCAL_RANK``) or ``"cpu"``. ``timeout``: seconds any
    rank waits for the others in :func:`gather_from_ranks` before failing.
    """
    import torch.distributed as dist

    from voszoo.engine.distributed import init_distributed

    if not timeout > 0:
        raise ValueError(f"join_eval_group: timeout must be a positive number of seconds, got {timeout!r}")
    context = init_distributed(device_type=device_type)
    if not context.enabled:
        return None
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=float(timeout)))
    return EvalGroup(context.rank, context.world_size, context.local_rank, float(timeout), group)


def balanced_shards(costs: Sequence[float], *, world_size: int) -> list[list[int]]:
    """Split items of the given ``costs`` into ``world_size`` shards of about equal total cost.

    Items go in order of decreasing cost (ties: lower index first) to the shard with the smallest total so far
    (ties: lower rank). Returns, per rank, the indices of its items in ascending order; every index appears exactly
    once. A rank may get no item when there are fewer items than ranks.
    """
    if world_size < 1:
        raise ValueError(f"balanced_shards: world_size must be at least 1, got {world_size}")
    if any(not cost >= 0 for cost in costs):
        raise ValueError(f"balanced_shards: costs must be non-negative numbers, got {list(costs)}")
    totals = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (totals[r], r))
        shards[rank].append(index)
        totals[rank] += costs[index]
    return [sorted(shard) for shard in shards]


def gather_from_ranks(group: EvalGroup, obj: Any, *, what: str) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; all ranks must call it. ``what`` names the step in errors.

    Raises ShardedEvaluationError if another rank does not arrive within ``group.timeout`` seconds or has died.
    """
    import torch.distributed as dist

    gathered: list[Any] = [None] * group.world_size
    try:
        dist.all_gather_object(gathered, obj, group=group.group)
    except RuntimeError as error:
        raise ShardedEvaluationError(
            f"rank {group.rank}/{group.world_size}: waited in vain for the other ranks {what} (timeout "
            f"{group.timeout:g} s): a rank crashed, hangs, or took more than the timeout longer than this one; "
            f"see the other ranks' output, or raise dist_timeout if they were merely slower ({error})"
        ) from error
    return gathered
