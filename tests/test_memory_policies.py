"""voszoo.memory: each policy keeps exactly the frames it promises, under the shared max_frames cap."""

import math
import pickle

import pytest
import torch

from voszoo.memory import (
    EveryN,
    FirstAndPrevious,
    FirstOnly,
    FixedCount,
    KeepAll,
    MemoryBank,
    MemoryEntry,
    PreviousOnly,
)


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


# -- MemoryBank.stack from preallocated buffers ------------------------------------------------------------------------
POLICIES = {
    "keep_all": lambda: KeepAll(),
    "keep_all_cap3": lambda: KeepAll(max_frames=3),
    "every_3_cap2": lambda: EveryN(n=3, max_frames=2),
    "every_2": lambda: EveryN(n=2),
    "first_and_previous": lambda: FirstAndPrevious(),
    "fixed_count_5": lambda: FixedCount(count=5),
    "fixed_count_7_cap4": lambda: FixedCount(count=7, max_frames=4),
    "first_only": lambda: FirstOnly(),
    "previous_only": lambda: PreviousOnly(),
}


def frame_tensors(t, generator):
    """What a model might write for frame t: a key (2, 3, 4) and a mask (2, 1, 4) of random values."""
    return {"key": torch.randn(2, 3, 4, generator=generator), "mask": torch.rand(2, 1, 4, generator=generator)}


def reference_stack(written, frames, name, dim):
    """The naive read: torch.stack of the clones the test kept of what was written for ``frames``."""
    return torch.stack([written[t][name] for t in frames], dim=dim)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_stack_equals_torch_stack_over_random_write_sequences(policy):
    generator = torch.Generator().manual_seed(sorted(POLICIES).index(policy))
    bank = MemoryBank(policy=POLICIES[policy]())
    written = {}
    for t in range(40):
        tensors = frame_tensors(t, generator)
        written[t] = {name: value.clone() for name, value in tensors.items()}
        bank.write(t, tensors)
        if torch.rand((), generator=generator) < 0.25:
            continue  # frames with no read: entries written and evicted unread
        for name, dims in (("key", (2, -2, 0)), ("mask", (1, 3))):  # the first dim read of a name sets its layout
            for dim in dims:
                for include_short_term in (True, False):
                    frames = [e.frame_index for e in bank.entries(include_short_term=include_short_term)]
                    with torch.no_grad():
                        stacked = bank.stack(name, dim=dim, include_short_term=include_short_term)
                    expected = reference_stack(written, frames, name, dim)
                    assert stacked.dtype == expected.dtype and stacked.device == expected.device
                    assert torch.equal(stacked, expected), (t, name, dim, include_short_term, frames)
        for entry in bank.entries():  # the entries still hold their own frame's values
            for name, value in entry.tensors.items():
                assert torch.equal(value, written[entry.frame_index][name])


def test_stack_storage_stops_growing_at_the_cap():
    """KeepAll(max_frames=3): at most 3 long-term entries + the short-term slot; after the cap, every read comes from
    the same storage and the bank holds a constant number of bytes (every frame evicts and compacts)."""
    bank = MemoryBank(policy=KeepAll(max_frames=3))
    pointers, held = [], []
    with torch.no_grad():
        for t in range(30):
            bank.write(t, {"key": torch.full((1, 2, 4), float(t))})
            stacked = bank.stack("key", dim=1)
            assert stacked[0, :, 0, 0].tolist() == [float(f) for f in bank.frame_indices]
            pointers.append(stacked.untyped_storage().data_ptr())
            held.append(bank.held_bytes())
    assert bank.frame_indices == [0, 28, 29]
    assert len(set(pointers[3:])) == 1
    # hand-computed: the buffer has (3 + 1) slots of 1 * 2 * 4 float32 = 32 bytes, and the entries are views into it
    assert held[3:] == [4 * 32] * 27


def test_stack_buffer_grows_geometrically_without_a_cap():
    bank = MemoryBank(policy=KeepAll())
    storages = []
    with torch.no_grad():
        for t in range(20):
            bank.write(t, {"key": torch.full((3,), float(t))})
            stacked = bank.stack("key", dim=0)
            assert stacked[:, 0].tolist() == [float(f) for f in range(t + 1)]
            storages.append(stacked.untyped_storage().nbytes() // (3 * 4))
    # slot capacities 2, 4, 8, 16, 32: a handful of reallocations for 20 frames, never one per frame
    assert sorted(set(storages)) == [2, 4, 8, 16, 32]


def test_stack_rebuilds_when_the_entries_change_shape_or_dtype():
    bank = fill(KeepAll(max_frames=4), range(6))  # frames 0, 3, 4, 5
    with torch.no_grad():
        assert bank.stack("key", dim=0)[:, 0, 0].tolist() == [0.0, 3.0, 4.0, 5.0]
        # a new object appears: every entry gets a third row (as a model re-encoding its memory would write)
        for entry in bank.entries():
            value = float(entry.frame_index)
            entry.tensors["key"] = torch.tensor([[value, value], [value, value], [-value, 7.0]])
        stacked = bank.stack("key", dim=1)
        assert stacked.shape == (3, 4, 2)
        assert stacked[2, :, 0].tolist() == [-0.0, -3.0, -4.0, -5.0] and stacked[2, :, 1].tolist() == [7.0] * 4
        for entry in bank.entries():
            entry.tensors["key"] = entry.tensors["key"].double()
        assert bank.stack("key", dim=1).dtype == torch.float64
        # entries that disagree with each other fail as torch.stack does
        bank.long_term[1].tensors["key"] = torch.zeros(5)
        with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
            bank.stack("key")


def test_stack_follows_entries_edited_by_hand():
    """Callers may edit ``long_term`` directly (delete, reorder, insert): reads still match torch.stack."""
    bank = fill(KeepAll(), range(6))
    with torch.no_grad():
        bank.stack("key", dim=0)
        del bank.long_term[2]
        assert bank.stack("key", dim=0)[:, 0, 0].tolist() == [0.0, 1.0, 3.0, 4.0, 5.0]
        bank.long_term.reverse()  # entries move to higher slots: their old slots are overwritten first
        assert bank.stack("key", dim=0)[:, 0, 0].tolist() == [5.0, 4.0, 3.0, 1.0, 0.0]
        bank.long_term.insert(2, MemoryEntry(9, {"key": torch.full((1, 2), 9.0)}))
        assert bank.stack("key", dim=0)[:, 0, 0].tolist() == [5.0, 4.0, 9.0, 3.0, 1.0, 0.0]


def test_stack_with_autograd_is_a_fresh_tensor_that_back_propagates():
    bank = MemoryBank(policy=KeepAll(max_frames=2))
    leaves = [torch.full((2,), float(t), requires_grad=True) for t in range(3)]
    for t, leaf in enumerate(leaves):
        bank.write(t, {"key": leaf * 1.0})
    stacked = bank.stack("key", dim=0)  # frames 0 and 2
    (stacked * torch.tensor([[1.0], [10.0]])).sum().backward()
    assert leaves[0].grad.tolist() == [1.0, 1.0] and leaves[1].grad is None and leaves[2].grad.tolist() == [10.0] * 2
    # a buffer read does not change what an earlier autograd read returned
    with torch.no_grad():
        bank.write(3, {"key": torch.full((2,), 3.0)})
        bank.stack("key", dim=0)
    assert stacked.tolist() == [[0.0, 0.0], [2.0, 2.0]]


def test_stack_under_inference_mode_then_no_grad():
    bank = MemoryBank(policy=EveryN(n=2, max_frames=2))
    for t in range(8):
        bank.write(t, {"key": torch.full((2,), float(t))})
        with torch.inference_mode() if t < 4 else torch.no_grad():
            assert bank.stack("key", dim=1)[0].tolist() == [float(f) for f in bank.frame_indices]


def test_bank_with_buffers_pickles():
    bank = fill(EveryN(n=2, max_frames=2), range(7))
    with torch.no_grad():
        bank.stack("key", dim=0)
        copy = pickle.loads(pickle.dumps(bank))
        assert copy.stack("key", dim=0)[:, 0, 0].tolist() == [0.0, 6.0] == bank.frame_indices


def test_held_bytes_counts_shared_storage_once():
    bank = MemoryBank(policy=FirstAndPrevious(), state={"image": torch.zeros(10, dtype=torch.uint8)})
    shared = torch.zeros(8, 2)  # 64 bytes
    bank.write(0, {"a": shared[0], "b": shared[1]})  # two views of one storage
    bank.write(1, {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)})
    assert bank.held_bytes() == 10 + 64 + 16 + 16
    with torch.no_grad():
        assert bank.stack("a", dim=0).dtype == torch.float64  # mixed dtypes: torch.stack promotes, no buffer
    assert bank.held_bytes() == 10 + 64 + 16 + 16
