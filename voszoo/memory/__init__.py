"""Per-video memory shared by every model and the inference session: the :class:`MemoryBank` a model writes its
tensors into, and the :class:`MemoryPolicy` that decides which frames stay (docs/architecture.md, "Memory").

It sits below ``voszoo.models`` (models write into a bank) and ``voszoo.inference`` (the session owns one per
group of objects), so neither imports the other for it.
"""

from voszoo.memory.bank import MemoryBank
from voszoo.memory.policies import (
    EveryN,
    FirstAndPrevious,
    FirstOnly,
    FixedCount,
    KeepAll,
    MemoryEntry,
    MemoryPolicy,
    PreviousOnly,
)

__all__ = [
    "MemoryBank",
    "MemoryEntry",
    "MemoryPolicy",
    "KeepAll",
    "EveryN",
    "FirstAndPrevious",
    "FixedCount",
    "FirstOnly",
    "PreviousOnly",
]
