"""voszoo.inference.memory: each policy keeps exactly the frames it promises, under the shared max_frames cap."""

import math

import pytest
import torch

from voszoo.inference.memory import EveryN, FirstAndPrevious, FixedCount, KeepAll, MemoryBank


def fill(policy, frames):
    bank = MemoryBank(policy=policy)
    for t in frames:
        bank.write(t, {"key": torch.full((1, 2), float(t))})
    return bank


def test_keep_all_keeps_every_frame():
    bank = fill(KeepAll(), range(6))
    assert bank.frame_indices == [0, 1, 2, 3, 4, 5]
    assert [e.frame_index for e in bank.long_term] == [0, 1, 2, 3, 4, 5]


def test_keep_all_with_cap_keeps_reference_and_newest():
    bank = fill(KeepAll(max_frames=3), range(10))
    assert bank.frame_indices == [0, 8, 9]
    assert len(bank.long_term) == 3


def test_every_n_is_stm_schedule():
    # official STM: frames 0, 5, 10, ... plus the previous frame
    assert fill(EveryN(n=5), range(13)).frame_indices == [0, 5, 10, 12]
    assert fill(EveryN(n=5), range(11)).frame_indices == [0, 5, 10]
    assert fill(EveryN(n=5), range(3)).frame_indices == [0, 2]


def test_every_n_counts_from_the_reference_frame():
    bank = fill(EveryN(n=5), range(7, 20))
    assert bank.reference_index == 7
    assert bank.frame_indices == [7, 12, 17, 19]


def test_every_n_cap_drops_oldest_but_never_the_reference():
    bank = fill(EveryN(n=5, max_frames=2), range(23))
    assert [e.frame_index for e in bank.long_term] == [0, 20]
    assert bank.frame_indices == [0, 20, 22]


def test_aot_gap_keeps_only_the_reference_long_term():
    bank = fill(EveryN(n=9999), range(100))
    assert bank.frame_indices == [0, 99]


def test_first_and_previous():
    bank = fill(FirstAndPrevious(), range(9))
    assert bank.frame_indices == [0, 8]
    assert [e.frame_index for e in bank.long_term] == [0]
    assert fill(FirstAndPrevious(), range(1)).frame_indices == [0]


@pytest.mark.parametrize("max_frames", [1, 2])
@pytest.mark.parametrize(
    "make", [KeepAll, lambda **kw: EveryN(n=3, **kw), FirstAndPrevious, lambda **kw: FixedCount(count=5, **kw)]
)
def test_max_frames_caps_long_term_and_keeps_reference(make, max_frames):
    policy = make(max_frames=max_frames)
    bank = MemoryBank(policy=policy)
    for t in range(30):
        bank.write(t, {"key": torch.zeros(1)})
        assert len(bank.long_term) <= max_frames
        assert bank.long_term[0].frame_index == 0
        assert bank.frame_indices[-1] == t  # the previous frame is always available


@pytest.mark.parametrize("count", [3, 4, 7])
def test_fixed_count_total_is_count_with_reference_and_previous(count):
    """SITVOS (Sec. 3.5): a fixed total of N memory frames, the first and the previous among them."""
    bank = MemoryBank(policy=FixedCount(count=count))
    for t in range(60):
        bank.write(t, {"key": torch.zeros(1)})
        indices = bank.frame_indices
        assert len(indices) == min(t + 1, count)
        assert indices[0] == 0 and indices[-1] == t
        assert indices == sorted(set(indices))


@pytest.mark.parametrize("count", [3, 4, 7])
def test_fixed_count_spreads_frames_evenly(count):
    """No gap between kept frames is more than twice the even spacing of the same number of frames."""
    bank = MemoryBank(policy=FixedCount(count=count))
    for t in range(400):
        bank.write(t, {"key": torch.zeros(1)})
        indices = bank.frame_indices
        if len(indices) < 2:
            continue
        gaps = [b - a for a, b in zip(indices, indices[1:], strict=False)]
        even = math.ceil((indices[-1] - indices[0]) / (len(indices) - 1))
        assert max(gaps) <= 2 * even, (t, indices)


def test_fixed_count_hand_checked_short_video():
    # every frame kept until the count is reached
    assert fill(FixedCount(count=7), range(7)).frame_indices == [0, 1, 2, 3, 4, 5, 6]


def test_stack_concatenates_entries_in_order():
    bank = fill(EveryN(n=2), range(5))  # long-term 0, 2, 4 (4 is also the previous frame)
    stacked = bank.stack("key", dim=2)
    assert stacked.shape == (1, 2, 3)
    assert stacked[0, 0].tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(KeyError, match="value"):
        bank.stack("value")
    with pytest.raises(RuntimeError, match="empty"):
        MemoryBank(policy=KeepAll()).stack("key")


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda: EveryN(n=0), "n must be"),
        (lambda: FixedCount(count=1), "count must be"),
        (lambda: KeepAll(max_frames=0), "max_frames"),
    ],
)
def test_invalid_policy_arguments(make, word):
    with pytest.raises(ValueError, match=word):
        make()
