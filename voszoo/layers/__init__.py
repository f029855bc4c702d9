"""voszoo's config-free building blocks (torch and einops only). This import path is public and stays stable.

Each layer cites the paper, section and equation it implements; see docs/components.md.
"""

from voszoo.layers.aggregation import soft_aggregate
from voszoo.layers.memory_read import KeyValueProjection, SpaceTimeMemoryRead, memory_affinity, space_time_memory_read

__all__ = [
    "KeyValueProjection",
    "SpaceTimeMemoryRead",
    "memory_affinity",
    "soft_aggregate",
    "space_time_memory_read",
]
