"""Training clips: frame sampling, object selection, determinism, AOT's merge trick, batching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from voszoo.data.clips import ClipDataset
from voszoo.data.io import VOSDataError
from voszoo.data.sampling import GapCurriculum, sample_frame_indices
from voszoo.data.transforms import ClipTransform, normalize_image
from voszoo.data.video import VideoCollection, VideoSource
from voszoo.types import Clip, collate_clips


class MemoryVideo(VideoSource):
    def __init__(self, name: str, frames: list[np.ndarray], labels: dict[int, np.ndarray]) -> None:
        self.name = name
        self._frames = frames
        self._labels = labels

    @property
    def frame_names(self) -> Sequence[str]:
        return [f"{i:05d}" for i in range(len(self._frames))]

    @property
    def annotated_indices(self) -> Sequence[int]:
        return sorted(self._labels)

    @property
    def size(self) -> tuple[int, int]:
        return self._frames[0].shape[:2]

    def frame(self, index: int) -> np.ndarray:
        return self._frames[index]

    def labels(self, index: int) -> np.ndarray:
        return self._labels[index]

    @property
    def first_appearance(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for index in self.annotated_indices:
            for obj in np.unique(self._labels[index]):
                if 0 < obj < 255:
                    first.setdefault(int(obj), index)
        return dict(sorted(first.items()))


class MemoryCollection(VideoCollection):
    def __init__(self, videos: list[MemoryVideo]) -> None:
        self._videos = {video.name: video for video in videos}

    @property
    def sequences(self) -> Sequence[str]:
        return list(self._videos)

    def video(self, name: str) -> VideoSource:
        return self._videos[name]


def moving_video(name: str, *, num_frames: int = 12, size: int = 48, num_objects: int = 2, every: int = 1, seed=0):
    """Textured frames with square objects 1..num_objects moving right one pixel per frame; a void strip on top."""
    rng = np.random.default_rng(seed)
    frames, labels = [], {}
    for t in range(num_frames):
        frames.append(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
        if t % every == 0:
            label = np.zeros((size, size), np.uint8)
            for k in range(num_objects):
                top, left = 6 + 8 * (k % 4), 4 + 9 * (k // 4) + t
                label[top : top + 6, left : left + 6] = k + 1
            label[:3] = 255
            labels[t] = label
    return MemoryVideo(name, frames, labels)


def static_video(name: str, label: np.ndarray, colour: Sequence[int], num_frames: int = 6) -> MemoryVideo:
    """Constant frames of one colour with the same label map in every frame."""
    frame = np.empty(label.shape + (3,), np.uint8)
    frame[:] = colour
    return MemoryVideo(name, [frame] * num_frames, {t: label for t in range(num_frames)})


def identity_transform(size: int, min_object_area: int = 1) -> ClipTransform:
    return ClipTransform(
        size=(size, size),
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip_prob=0.0,
        color_jitter=None,
        min_object_area=min_object_area,
    )


def small_transform(**kwargs) -> ClipTransform:
    return ClipTransform(size=(32, 32), scale=(0.6, 1.0), min_object_area=4, **kwargs)


def collection(count: int = 3, **kwargs) -> MemoryCollection:
    return MemoryCollection([moving_video(f"v{i}", seed=i, **kwargs) for i in range(count)])


# -- frame sampling -----------------------------------------------------------------------------------------------
def test_sampled_indices_are_increasing_annotated_and_within_max_gap():
    rng = np.random.default_rng(0)
    annotated = [0, 1, 2, 4, 5, 9, 10, 11, 13, 17, 18, 20]
    seen_gaps = set()
    for _ in range(300):
        indices = sample_frame_indices(annotated, num_frames=4, max_gap=3, rng=rng)
        assert len(indices) == 4 and set(indices) <= set(annotated)
        gaps = np.diff(indices)
        assert np.all(gaps >= 1) and np.all(gaps <= 3)
        seen_gaps.update(gaps.tolist())
    assert seen_gaps == {1, 2, 3}


def test_sampling_with_every_frame_annotated_uses_every_start_and_gap():
    rng = np.random.default_rng(1)
    draws = [sample_frame_indices(range(10), num_frames=3, max_gap=1, rng=rng) for _ in range(200)]
    assert all(d == [d[0], d[0] + 1, d[0] + 2] for d in draws)
    assert {d[0] for d in draws} == set(range(8))  # 0..7: every start that fits 3 frames
    draws = [sample_frame_indices(range(30), num_frames=5, max_gap=4, rng=rng) for _ in range(300)]
    assert set(np.diff(draws).reshape(-1).tolist()) == {1, 2, 3, 4}


def test_too_short_videos_repeat_the_last_frame():
    rng = np.random.default_rng(2)
    for _ in range(20):
        assert sample_frame_indices([4, 6], num_frames=4, max_gap=5, rng=rng) == [4, 6, 6, 6]
        assert sample_frame_indices([7], num_frames=3, max_gap=2, rng=rng) == [7, 7, 7]
        # annotations sparser than max_gap: no two frames can be consecutive in a clip
        assert sample_frame_indices([0, 10], num_frames=3, max_gap=3, rng=rng) in ([0, 0, 0], [10, 10, 10])
        # the longest chain (5, 6, 7) is preferred over frames that cannot continue
        assert sample_frame_indices([0, 5, 6, 7], num_frames=4, max_gap=2, rng=rng) == [5, 6, 7, 7]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(annotated=[0, 1], num_frames=0, max_gap=1), "num_frames"),
        (dict(annotated=[0, 1], num_frames=2, max_gap=0), "max_gap"),
        (dict(annotated=[], num_frames=2, max_gap=1), "annotated"),
        (dict(annotated=[3, 1], num_frames=2, max_gap=1), "annotated"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample_frame_indices(rng=np.random.default_rng(0), **kwargs)


def test_gap_curriculum_grows_linearly_then_stays():
    curriculum = GapCurriculum(start=1, end=9, steps=8)
    assert [curriculum(s) for s in (0, 1, 4, 8, 100)] == [1, 2, 5, 9, 9]
    assert GapCurriculum(start=2, end=5, steps=10)(5) == 4  # 2 + 3 * 0.5 = 3.5, rounds to even 4
    with pytest.raises(ValueError, match="steps"):
        GapCurriculum(start=1, end=5, steps=0)
    with pytest.raises(ValueError, match="start"):
        GapCurriculum(start=0, end=5, steps=3)


def test_dataset_gaps_follow_max_gap_and_curriculum():
    data = ClipDataset(
        collection=collection(4, num_frames=30),
        transform=small_transform(),
        num_frames=4,
        max_gap=GapCurriculum(start=1, end=6, steps=10),
        samples_per_epoch=16,
    )
    assert data.max_gap == 1
    for i in range(len(data)):
        assert np.diff(data[i]["frame_indices"].numpy()).tolist() == [1, 1, 1]
    data.set_step(6)
    assert data.max_gap == 4
    gaps = np.concatenate([np.diff(data[i]["frame_indices"].numpy()) for i in range(len(data))])
    assert gaps.min() >= 1 and gaps.max() <= 4 and gaps.max() > 1
    fixed = ClipDataset(collection=collection(1), transform=small_transform(), max_gap=3)
    with pytest.raises(ValueError, match="GapCurriculum"):
        fixed.set_step(3)


def test_annotation_gap_unit_counts_annotated_frames():
    videos = collection(2, num_frames=40, every=5)
    data = ClipDataset(collection=videos, transform=small_transform(), num_frames=3, max_gap=1, gap_unit="annotation")
    for i in range(len(data)):
        indices = data[i]["frame_indices"].numpy()
        assert np.diff(indices).tolist() == [5, 5] and np.all(indices % 5 == 0)
    frame_units = ClipDataset(collection=videos, transform=small_transform(), num_frames=3, max_gap=1)
    assert len(set(frame_units[0]["frame_indices"].tolist())) == 1  # nothing within 1 frame: the frame repeats


# -- samples ------------------------------------------------------------------------------------------------------
def test_sample_contents_and_collated_clip():
    data = ClipDataset(collection=collection(3), transform=small_transform(), num_frames=3, max_gap=2)
    assert len(data) == 3
    sample = data[0]
    assert sample["images"].shape == (3, 3, 32, 32) and sample["images"].dtype == torch.float32
    assert sample["labels"].shape == (3, 32, 32) and sample["labels"].dtype == torch.int64
    assert sample["frame_indices"].dtype == torch.int64 and sample["frame_indices"].shape == (3,)
    clip = collate_clips([data[0], data[1]])
    assert isinstance(clip, Clip)
    assert clip.images.shape == (2, 3, 3, 32, 32) and clip.images.dtype == torch.float32
    assert clip.labels.shape == (2, 3, 32, 32) and clip.labels.dtype == torch.int64
    assert clip.num_objects.shape == (2,) and clip.num_objects.dtype == torch.int64
    assert clip.frame_indices.shape == (2, 3) and clip.frame_indices.dtype == torch.int64
    assert clip.names == [data[0]["name"], data[1]["name"]] and clip.batch_size == 2 and clip.num_frames == 3
    moved = clip.to("cpu")
    assert torch.equal(moved.images, clip.images) and moved.names == clip.names


def test_identity_transform_gives_the_remapped_video_exactly():
    # objects 1, 3 and 4 in the first frame (2 appears later), void strip on top
    label0 = np.zeros((24, 24), np.uint8)
    label0[4:8, 4:8], label0[10:14, 4:8], label0[16:20, 4:8] = 4, 1, 3
    label0[:2] = 255
    label1 = label0.copy()
    label1[4:8, 14:18] = 2
    frames = [np.full((24, 24, 3), 10 * t, np.uint8) for t in range(2)]
    video = MemoryVideo("solo", frames, {0: label0, 1: label1})
    data = ClipDataset(
        collection=MemoryCollection([video]), transform=identity_transform(24), num_frames=2, max_gap=1, max_objects=5
    )
    sample = data[0]
    assert sample["frame_indices"].tolist() == [0, 1] and sample["num_objects"] == 3 and sample["name"] == "solo"
    expected = np.zeros((2, 24, 24), np.int64)
    for t, source in enumerate((label0, label1)):
        for old, new in ((1, 1), (3, 2), (4, 3), (255, 255)):  # 2 is not in frame 0 -> background
            expected[t][source == old] = new
    np.testing.assert_array_equal(sample["labels"].numpy(), expected)
    torch.testing.assert_close(sample["images"], normalize_image(np.stack(frames)))


@pytest.mark.parametrize("max_objects", [1, 3])
def test_kept_objects_are_visible_in_first_frame_contiguous_and_capped(max_objects):
    data = ClipDataset(
        collection=collection(3, num_objects=5),
        transform=small_transform(),
        num_frames=3,
        max_objects=max_objects,
        samples_per_epoch=12,
    )
    for i in range(len(data)):
        sample = data[i]
        labels, count = sample["labels"].numpy(), sample["num_objects"]
        assert 1 <= count <= max_objects
        first = labels[0]
        for obj in range(1, count + 1):
            assert np.sum(first == obj) >= 4  # min_object_area of the transform
        assert set(np.unique(first).tolist()) - {0, 255} == set(range(1, count + 1))
        assert set(np.unique(labels).tolist()) <= set(range(count + 1)) | {255}


def test_void_is_preserved_and_never_renumbered():
    data = ClipDataset(collection=collection(2), transform=identity_transform(48, 4), num_frames=2, max_objects=1)
    sample = data[0]
    labels = sample["labels"].numpy()
    assert np.all(labels[:, :3] == 255) and not np.any(labels[:, 3:] == 255)


def test_same_seed_epoch_index_is_identical_and_epochs_differ():
    def make(seed=0):
        return ClipDataset(collection=collection(3), transform=small_transform(), num_frames=3, seed=seed)

    a, b = make(), make()
    for i in range(3):
        x, y = a[i], b[i]
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["labels"], y["labels"])
        assert x["name"] == y["name"] and torch.equal(x["frame_indices"], y["frame_indices"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["images"], b[i]["images"]) for i in range(3))
    b.set_epoch(0)
    assert torch.equal(a[2]["images"], b[2]["images"])
    assert any(not torch.equal(a[i]["images"], make(seed=1)[i]["images"]) for i in range(3))


def test_each_epoch_visits_every_video_once():
    data = ClipDataset(collection=collection(5), transform=small_transform())
    for epoch in range(3):
        data.set_epoch(epoch)
        assert sorted(data[i]["name"] for i in range(len(data))) == [f"v{i}" for i in range(5)]


def test_videos_without_visible_objects_are_resampled():
    empty = MemoryVideo(
        "empty", [np.zeros((48, 48, 3), np.uint8)] * 4, {t: np.zeros((48, 48), np.uint8) for t in range(4)}
    )
    good = moving_video("good")
    data = ClipDataset(collection=MemoryCollection([empty, good]), transform=small_transform(), samples_per_epoch=8)
    for i in range(len(data)):
        sample = data[i]
        assert sample["name"] == "good" and sample["num_objects"] >= 1


def test_a_collection_without_usable_video_raises():
    empty = MemoryVideo(
        "empty", [np.zeros((16, 16, 3), np.uint8)] * 3, {t: np.zeros((16, 16), np.uint8) for t in range(3)}
    )
    data = ClipDataset(collection=MemoryCollection([empty]), transform=small_transform(), max_tries=3)
    with pytest.raises(VOSDataError, match="no clip with an object visible"):
        data[0]
    with pytest.raises(VOSDataError, match="no videos"):
        ClipDataset(collection=MemoryCollection([]), transform=small_transform())


def test_frames_and_labels_of_different_sizes_name_the_video():
    video = MemoryVideo(
        "odd", [np.zeros((16, 16, 3), np.uint8)] * 2, {0: np.ones((16, 15), np.uint8), 1: np.ones((16, 15), np.uint8)}
    )
    data = ClipDataset(collection=MemoryCollection([video]), transform=small_transform(), num_frames=2)
    with pytest.raises(VOSDataError, match="odd"):
        data[0]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_frames=0), "num_frames"),
        (dict(max_objects=0), "max_objects"),
        (dict(merge_prob=1.5), "merge_prob"),
        (dict(merge_prob=0.5, max_objects=200), "max_objects"),
        (dict(samples_per_epoch=0), "samples_per_epoch"),
        (dict(max_gap=0), "max_gap"),
        (dict(gap_unit="frames"), "gap_unit"),
        (dict(seed=-1), "seed"),
        (dict(max_tries=0), "max_tries"),
        (dict(transform=None), "transform"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    arguments = dict(collection=collection(1), transform=small_transform()) | kwargs
    with pytest.raises(ValueError, match=name):
        ClipDataset(**arguments)


# -- AOT merge trick ----------------------------------------------------------------------------------------------
def merge_reference(base: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, int]:
    """The documented merge rule written out naively for contiguous ids and no cap: top objects pasted over base
    with ids after base's, void of top not pasted, hidden base objects dropped, the rest renumbered in order."""
    base_count = max((int(v) for v in np.unique(base) if 0 < v < 255), default=0)
    merged = base.astype(np.int64).copy()
    for y in range(base.shape[0]):
        for x in range(base.shape[1]):
            if 0 < top[y, x] < 255:
                merged[y, x] = top[y, x] + base_count
    survivors = [v for v in sorted(np.unique(merged).tolist()) if 0 < v < 255]
    out = np.zeros_like(merged)
    out[merged == 255] = 255
    for new, old in enumerate(survivors, start=1):
        out[merged == old] = new
    return out, len(survivors)


def test_merge_pastes_the_second_video_and_renumbers_after_the_first():
    a = np.zeros((20, 20), np.uint8)
    a[2:6, 2:6] = 1  # stays visible
    a[10:14, 10:14] = 2  # hidden by b's object 1 when b is pasted over a
    a[0, 10:20] = 255
    b = np.zeros((20, 20), np.uint8)
    b[9:15, 9:15] = 1
    b[16:19, 2:5] = 2
    b[3:5, 0:8] = 255  # b's void over a's object 1: not pasted
    videos = MemoryCollection([static_video("a", a, (200, 0, 0)), static_video("b", b, (0, 0, 200))])
    data = ClipDataset(collection=videos, transform=identity_transform(20), num_frames=2, max_objects=4, merge_prob=1.0)
    seen = set()
    for i in range(len(data)):
        sample = data[i]
        first, second = sample["name"].split("+")
        seen.add(first)
        base, top = (a, b) if first == "a" else (b, a)
        expected, count = merge_reference(base, top)
        assert sample["num_objects"] == count
        for t in range(2):
            np.testing.assert_array_equal(sample["labels"][t].numpy(), expected)
        colours = {"a": (200, 0, 0), "b": (0, 0, 200)}
        expected_image = np.empty((20, 20, 3), np.uint8)
        expected_image[:] = colours[first]
        expected_image[(top > 0) & (top < 255)] = colours[second]
        torch.testing.assert_close(sample["images"][0], normalize_image(expected_image))
    assert seen == {"a", "b"}
    # hand check of the a-then-b case: a1 -> 1, a2 hidden, b1 -> 2, b2 -> 3
    expected, count = merge_reference(a, b)
    assert (
        count == 3 and expected[12, 12] == 2 and expected[17, 3] == 3 and expected[4, 4] == 1 and expected[0, 15] == 255
    )


def test_merge_respects_max_objects():
    data = ClipDataset(
        collection=collection(3, num_objects=3),
        transform=small_transform(),
        max_objects=2,
        merge_prob=1.0,
        samples_per_epoch=9,
    )
    names = []
    for i in range(len(data)):
        sample = data[i]
        names.append(sample["name"])
        count = sample["num_objects"]
        assert 1 <= count <= 2
        assert set(np.unique(sample["labels"][0].numpy()).tolist()) - {0, 255} == set(range(1, count + 1))
    assert all("+" in name and name.split("+")[0] != name.split("+")[1] for name in names)


# -- DataLoader -----------------------------------------------------------------------------------------------------
def test_dataloader_workers_reproduce_the_single_process_batches():
    data = ClipDataset(collection=collection(3), transform=small_transform(), merge_prob=0.5, samples_per_epoch=6)
    data.set_epoch(2)

    def batches(workers):
        loader = DataLoader(data, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_clips)
        return list(loader)

    single, parallel = batches(0), batches(2)
    assert len(single) == len(parallel) == 3
    for x, y in zip(single, parallel, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.num_objects, y.num_objects) and x.names == y.names
        assert torch.equal(x.frame_indices, y.frame_indices)


def test_collate_rejects_bad_samples():
    data = ClipDataset(collection=collection(1), transform=small_transform())
    sample = data[0]
    with pytest.raises(ValueError, match="lacks"):
        collate_clips([{k: v for k, v in sample.items() if k != "labels"}])
    other = dict(sample, images=sample["images"][:, :, :16])
    with pytest.raises(ValueError, match="sample 1"):
        collate_clips([sample, other])
    with pytest.raises(ValueError, match="empty"):
        collate_clips([])
