"""Several clip datasets read as one training set, each repeated a whole number of times per epoch.

The papers' main training stage mixes DAVIS 2017 train with YouTube-VOS train. AOT's official ``PRE_YTB_DAV`` stage
(github.com/yoxu515/aot-benchmark, ``configs/default.py`` ``DATA_DAVIS_REPEAT = 5``, ``networks/managers/trainer.py``)
concatenates the two with ``torch.utils.data.ConcatDataset`` after repeating DAVIS's 60 videos 5 times, so an epoch
holds 300 DAVIS clips and one clip of each of the 3,471 YouTube-VOS videos (about 8 %: DAVIS would be 1.7 % without
the repeat). :class:`ClipMixture` is that concatenation with per-source repeat factors.

Index layout: the sources follow each other in the order given; source s holds ``repeats[s] * len(source_s)``
consecutive indices. Local index j of source s is sample ``j % len(source_s)`` of the source's *virtual epoch*
``(epoch * repeats[s] + j // len(source_s)) * S + s`` (S sources), so each repeat is a fresh permutation of the
source's videos with fresh clips and augmentations (the official repeat draws a new random clip each time too), not a
copy of the first, and two sources built with the same seed never share a random stream. The determinism contract
of :mod:`voszoo.data.clips` carries over: sample i of epoch e is a pure function of the sources' seeds and arguments,
e and i. Shuffling across sources is the trainer's per-epoch permutation.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from torch.utils.data import Dataset

from voszoo.data.clips import BaseClipDataset

__all__ = ["ClipMixture"]


class ClipMixture(Dataset):
    """The concatenation of named clip datasets, source ``name`` repeated ``repeats[name]`` times per epoch.

    Arguments (keyword-only):
        sources: name -> a :class:`~voszoo.data.clips.BaseClipDataset` (``ClipDataset``, ``StaticClipDataset``); at
            least one. Every source must give clips of the same length (``num_frames``) and crop size
            (``transform.size``), since they are batched together.
        repeats: name -> a whole number >= 1 of times the source is read per epoch; a source not named reads once.

    ``len(mixture) = sum(repeats[s] * len(source_s))``; ``__getitem__`` returns the source's sample dict unchanged.
    ``set_epoch`` selects the epoch; ``set_step`` forwards the step to every source with a gap ``curriculum``.
    """

    def __init__(self, *, sources: Mapping[str, BaseClipDataset], repeats: Mapping[str, int] | None = None) -> None:
        if not sources:
            raise ValueError("ClipMixture: sources is empty; give at least one name -> clip dataset")
        repeats = dict(repeats or {})
        unknown = sorted(set(repeats) - set(sources))
        if unknown:
            raise ValueError(f"ClipMixture: repeats names {unknown}, which are not sources; sources: {sorted(sources)}")
        self.names: list[str] = list(sources)
        self.sources: dict[str, BaseClipDataset] = dict(sources)
        self.repeats: dict[str, int] = {}
        for name in self.names:
            source = self.sources[name]
            if not isinstance(source, BaseClipDataset):
                raise ValueError(
                    f"ClipMixture: source {name!r} is a {type(source).__name__}, not a voszoo clip dataset "
                    "(ClipDataset, StaticClipDataset)"
                )
            if len(source) == 0:
                raise ValueError(f"ClipMixture: source {name!r} is empty")
            repeat = repeats.get(name, 1)
            if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
                raise ValueError(f"ClipMixture: repeats[{name!r}] must be an integer >= 1, got {repeat!r}")
            self.repeats[name] = repeat
        first = self.names[0]
        for name in self.names[1:]:
            for what, get in (("num_frames", lambda d: d.num_frames), ("transform.size", lambda d: d.transform.size)):
                if get(self.sources[name]) != get(self.sources[first]):
                    raise ValueError(
                        f"ClipMixture: source {name!r} has {what}={get(self.sources[name])} but {first!r} has "
                        f"{get(self.sources[first])}; the sources' clips are batched together and must match"
                    )
        self._starts: list[int] = []
        total = 0
        for name in self.names:
            self._starts.append(total)
            total += self.repeats[name] * len(self.sources[name])
        self._length = total
        self._epoch = 0

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {len(self.sources[n])} x {self.repeats[n]}" for n in self.names)
        return f"ClipMixture({parts}; len={len(self)}, epoch={self._epoch})"

    def __len__(self) -> int:
        return self._length

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (call before creating the DataLoader iterator)."""
        if epoch < 0:
            raise ValueError(f"ClipMixture.set_epoch: epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    @property
    def curriculum(self) -> dict[str, object] | None:
        """name -> gap curriculum of the sources that have one, or None if none has (the trainer then never calls
        :meth:`set_step`)."""
        found = {n: s.curriculum for n, s in self.sources.items() if getattr(s, "curriculum", None) is not None}
        return found or None

    def set_step(self, step: int) -> None:
        """Move every source's gap curriculum to ``step``."""
        for source in self.sources.values():
            if getattr(source, "curriculum", None) is not None:
                source.set_step(step)

    def locate(self, index: int) -> tuple[str, int, int]:
        """(source name, source index, source epoch) that mixture ``index`` of the current epoch reads."""
        if not 0 <= index < len(self):
            raise IndexError(f"ClipMixture: index {index} out of range for length {len(self)}")
        k = bisect.bisect_right(self._starts, index) - 1
        name = self.names[k]
        local = index - self._starts[k]
        size = len(self.sources[name])
        virtual = (self._epoch * self.repeats[name] + local // size) * len(self.names) + k
        return name, local % size, virtual

    def __getitem__(self, index: int) -> dict[str, object]:
        name, local, epoch = self.locate(index)
        return self.sources[name].sample(local, epoch=epoch)
