"""The procedural ToyVOS stream: determinism per (seed, index), the same renderer as the stored dataset, disjoint
from every generated dataset, exact flow, and clips and static pairs drawn from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voszoo.data.clips import ClipDataset
from voszoo.data.static import StaticClipDataset
from voszoo.data.toy import render_toyvos_video, sample_video
from voszoo.data.toy_render import render_video
from voszoo.data.toy_stream import StreamFirstFrames, ToyVOSStream, _stream_rng
from voszoo.data.transforms import ClipTransform

SMALL = dict(videos=50, frames=8, size=(64, 64))


def _clips(seed: int, **kwargs) -> ClipDataset:
    return ClipDataset(
        collection=ToyVOSStream(seed=seed, **SMALL),
        transform=ClipTransform(size=(48, 48), scale=(0.5, 1.0)),
        num_frames=3,
        max_gap=3,
        max_objects=2,
        seed=seed,
        **kwargs,
    )


def test_same_seed_and_index_give_identical_samples_in_any_order() -> None:
    first, second = _clips(3), _clips(3)
    forward = [first[i] for i in range(4)]
    backward = [second[i] for i in reversed(range(4))][::-1]  # another process reading in another order
    for a, b in zip(forward, backward, strict=True):
        assert a["name"] == b["name"]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    other_seed = _clips(4)[0]
    assert not torch.equal(other_seed["images"], forward[0]["images"])
    assert forward[0]["name"] != forward[1]["name"]  # one video per sample of an epoch


def test_stream_frames_are_the_renderers_frames_after_the_stored_jpeg_round_trip() -> None:
    raw = ToyVOSStream(seed=5, jpeg_quality=None, **SMALL).video("stream_0000007")
    layers, _ = sample_video(_stream_rng(5, 7), frames=SMALL["frames"], size=SMALL["size"])
    whole = render_video(layers, size=SMALL["size"])
    for t in (6, 2, 0):  # any order: each frame is rendered on its own
        assert np.array_equal(raw.frame(t), whole.frames[t]) and np.array_equal(raw.labels(t), whole.labels[t])
    assert np.allclose(raw.flow(3), whole.flow[3])
    compressed = ToyVOSStream(seed=5, **SMALL).video("stream_0000007").frame(2)
    assert compressed.shape == whole.frames[2].shape and not np.array_equal(compressed, whole.frames[2])
    assert np.abs(compressed.astype(int) - whole.frames[2].astype(int)).mean() < 8  # JPEG q90 noise, not another frame
    assert raw.first_appearance == {i: 0 for i in np.unique(whole.labels[0]) if i != 0}


def test_rendering_a_range_equals_that_slice_of_the_whole_video() -> None:
    layers, _ = sample_video(_stream_rng(0, 1), frames=8, size=(48, 64))
    whole = render_video(layers, size=(48, 64))
    part = render_video(layers, size=(48, 64), frames=7, start=3)
    assert np.array_equal(part.frames, whole.frames[3:7]) and np.array_equal(part.labels, whole.labels[3:7])
    assert np.array_equal(part.flow, whole.flow[3:6]) and np.array_equal(part.visible_area, whole.visible_area[3:7])
    with pytest.raises(ValueError, match="start"):
        render_video(layers, size=(48, 64), frames=3, start=3)


def test_stream_videos_are_never_videos_of_a_generated_dataset() -> None:
    stream = ToyVOSStream(seed=0, jpeg_quality=None, **SMALL)
    for index in range(3):
        generated, _ = render_toyvos_video(seed=0, index=index, frames=SMALL["frames"], size=SMALL["size"])
        assert not np.array_equal(stream.video(f"stream_{index:07d}").frame(0), generated.frames[0])


def test_clips_with_flow_and_static_pairs_come_from_the_stream() -> None:
    sample = _clips(1, with_flow=True)[2]
    assert sample["flows"].shape == (2, 2, 48, 48) and sample["images"].shape == (3, 3, 48, 48)
    static = StaticClipDataset(
        images=StreamFirstFrames(stream=ToyVOSStream(seed=1, **SMALL)),
        transform=ClipTransform(size=(48, 48), scale=(0.5, 1.0)),
        num_frames=3,
        seed=1,
    )
    pair = static[0]
    assert pair["images"].shape == (3, 3, 48, 48) and int(pair["labels"][0].max()) >= 1


def test_bad_arguments_and_names_are_named() -> None:
    with pytest.raises(ValueError, match="videos"):
        ToyVOSStream(videos=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ToyVOSStream(jpeg_quality=0)
    stream = ToyVOSStream(**SMALL)
    with pytest.raises(KeyError, match="stream_0000049"):
        stream.video("stream_0000050")
    with pytest.raises(KeyError, match="last frame"):
        stream.video("stream_0000000").flow(SMALL["frames"] - 1)
    assert len(stream.sequences) == 50 and stream.sequences[-1] == "stream_0000049"
