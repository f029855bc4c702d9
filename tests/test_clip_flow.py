"""Ground-truth flow in training clips: ClipDataset(with_flow=True), the flow transform rules, chaining, collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from voszoo.data.clips import ClipDataset, chain_flows, compose_flows, merge_flows
from voszoo.data.davis import DAVIS, ToyVOS
from voszoo.data.io import VOSDataError
from voszoo.data.toy import generate_toyvos
from voszoo.data.transforms import ClipTransform, transform_flows
from voszoo.data.video import VideoCollection
from voszoo.types import Clip, collate_clips


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyflow") / "toyvos"
    return generate_toyvos(out, videos=6, frames=12, size=(64, 64), seed=0, workers=1, progress=False)


class _EveryThirdVideo:
    """A ToyVOS video annotated only on every third frame (like YouTube-VOS train's every fifth)."""

    def __init__(self, video):
        self._video = video

    def __getattr__(self, key):
        return getattr(self._video, key)

    @property
    def annotated_indices(self):
        return list(range(0, self._video.num_frames, 3))


class _EveryThird(VideoCollection):
    def __init__(self, base):
        self.base = base

    @property
    def sequences(self):
        return self.base.sequences

    def video(self, name):
        return _EveryThirdVideo(self.base.video(name))


def _warp_agreement(labels_a: np.ndarray, labels_b: np.ndarray, flow: np.ndarray) -> tuple[int, int]:
    """Pixels p inside an object of frame a (3x3 neighbourhood of one label) whose flow lands inside frame b on the
    same label: (agreeing, counted). ``flow`` (2, H, W): dx, dy in pixels; the label of b is read at round(p + f)."""
    h, w = labels_a.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x, y = cols + flow[0], rows + flow[1]
    inside = (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
    interior = ndimage.minimum_filter(labels_a, 3) == ndimage.maximum_filter(labels_a, 3)
    counted = inside & interior & (labels_a >= 1) & (labels_a != 255)
    xi = np.clip(np.rint(x).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(y).astype(np.int64), 0, h - 1)
    return int((labels_b[yi, xi][counted] == labels_a[counted]).sum()), int(counted.sum())


@pytest.mark.parametrize(
    ("gap", "hflip", "scale", "size"),
    [
        (1, 1.0, (1.0, 1.0), (64, 64)),  # flip only
        (1, 0.0, (0.4, 0.7), (48, 40)),  # crop + resize, non-square
        (3, 1.0, (0.4, 0.7), (40, 56)),  # chained over 3 frames, flip + crop + resize
        (3, 0.0, (0.3, 0.5), (64, 64)),  # upscaled about 1.6x
    ],
)
def test_flow_carries_objects_of_frame_a_onto_frame_b(toy_root, gap, hflip, scale, size):
    base = ToyVOS(toy_root, split="train")
    collection = base if gap == 1 else _EveryThird(base)  # every third frame annotated: every gap is exactly 3
    transform = ClipTransform(size=size, scale=scale, hflip_prob=hflip, color_jitter=None, min_object_area=5)
    dataset = ClipDataset(
        collection=collection,
        transform=transform,
        num_frames=3,
        max_gap=gap,
        max_objects=5,
        samples_per_epoch=12,
        with_flow=True,
    )
    counts = {"flow": [0, 0], "zero": [0, 0], "x negated": [0, 0]}
    for i in range(len(dataset)):
        sample = dataset[i]
        assert np.all(np.diff(sample["frame_indices"].numpy()) == gap)
        flows = sample["flows"]
        assert flows.dtype == torch.float32 and tuple(flows.shape) == (2, 2, *size)
        labels, flows = sample["labels"].numpy(), flows.numpy()
        for t in range(2):
            negated = flows[t] * np.array([-1.0, 1.0], dtype=np.float32)[:, None, None]
            for key, flow in (("flow", flows[t]), ("zero", 0 * flows[t]), ("x negated", negated)):
                agree, total = _warp_agreement(labels[t], labels[t + 1], flow)
                counts[key][0] += agree
                counts[key][1] += total
    rate = {key: agree / total for key, (agree, total) in counts.items()}
    assert counts["flow"][1] > 1000
    assert rate["flow"] > 0.9, rate
    # the check has teeth: no motion, or a flip that forgot to negate dx, carry objects clearly worse
    assert rate["flow"] > rate["zero"] + 0.04 and rate["flow"] > rate["x negated"] + 0.08, rate


def test_with_flow_draws_the_same_clips(toy_root):
    collection = ToyVOS(toy_root, split="train")
    transform = ClipTransform(size=(48, 48))
    plain = ClipDataset(collection=collection, transform=transform, samples_per_epoch=4, merge_prob=0.5, seed=3)
    flowing = ClipDataset(
        collection=collection, transform=transform, samples_per_epoch=4, merge_prob=0.5, seed=3, with_flow=True
    )
    for i in range(4):
        a, b = plain[i], flowing[i]
        assert "flows" not in a and tuple(b["flows"].shape) == (2, 2, 48, 48)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert a["name"] == b["name"]


def test_repeated_frame_has_zero_flow(toy_root):
    collection = ToyVOS(toy_root, split="train")  # 12 frames: a 14-frame clip must repeat its last frame
    transform = ClipTransform(size=(32, 32), color_jitter=None)
    sample = ClipDataset(collection=collection, transform=transform, num_frames=14, max_gap=1, with_flow=True)[0]
    assert sample["frame_indices"].tolist() == list(range(12)) + [11, 11]
    assert torch.count_nonzero(sample["flows"][11:]) == 0
    assert torch.count_nonzero(sample["flows"][:11]) > 0


def test_collection_without_flow_is_rejected(toy_root):
    davis = DAVIS(toy_root, year="2017", split="train")  # the same folders, read as DAVIS: no flow
    with pytest.raises(VOSDataError, match="DAVIS.*has none"):
        ClipDataset(collection=davis, transform=ClipTransform(size=(32, 32)), with_flow=True)
    ClipDataset(collection=davis, transform=ClipTransform(size=(32, 32)))  # without flow it is fine


# -- transform rules on hand-made fields ---------------------------------------------------------------------------


def _constant(dx: float, dy: float, height: int, width: int) -> np.ndarray:
    flow = np.zeros((1, height, width, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_resize_scales_components_and_flip_negates_x(interpolation):
    flow = _constant(2.0, -1.0, 10, 20)
    # crop 6 rows x 10 columns resized to 12 x 5: dx * 5/10 = 1, dy * 12/6 = -2
    out = transform_flows(flow, crop=(2, 4, 6, 10), size=(12, 5), flip=False, interpolation=interpolation)
    assert out.shape == (1, 12, 5, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], -2.0, rtol=1e-6)
    flipped = transform_flows(flow, crop=(2, 4, 6, 10), size=(12, 5), flip=True, interpolation=interpolation)
    np.testing.assert_allclose(flipped[..., 0], -1.0, rtol=1e-6)
    np.testing.assert_allclose(flipped[..., 1], -2.0, rtol=1e-6)


def test_crop_slices_and_flip_mirrors():
    rows, cols = np.meshgrid(np.arange(5.0), np.arange(7.0), indexing="ij")
    flow = np.stack([cols, 10 * rows], axis=-1)[None].astype(np.float32)  # dx = column, dy = 10 * row
    out = transform_flows(flow, crop=(1, 2, 3, 4), size=(3, 4), flip=False)
    np.testing.assert_array_equal(out[0, ..., 0], [[2, 3, 4, 5]] * 3)
    np.testing.assert_array_equal(out[0, ..., 1], [[10] * 4, [20] * 4, [30] * 4])
    out = transform_flows(flow, crop=(1, 2, 3, 4), size=(3, 4), flip=True)
    np.testing.assert_array_equal(out[0, ..., 0], [[-5, -4, -3, -2]] * 3)
    np.testing.assert_array_equal(out[0, ..., 1], [[10] * 4, [20] * 4, [30] * 4])


def test_clip_transform_with_flows_applies_the_clip_geometry():
    frames = [np.zeros((10, 20, 3), np.uint8)] * 3
    labels = [np.ones((10, 20), np.uint8)] * 3
    flows = [_constant(2.0, -1.0, 10, 20)[0], _constant(-4.0, 3.0, 10, 20)[0]]
    transform = ClipTransform(size=(5, 40), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=1.0, min_object_area=1)
    rng = np.random.default_rng(0)
    out_frames, out_labels, out_flows = transform.with_flows(frames, labels, flows, rng)
    assert len(out_flows) == 2 and out_flows[0].shape == (5, 40, 2)
    # area 200 at the output's aspect 8: 40 x 5 columns x rows, clamped to the frame: a 5 x 20 crop (rows x columns)
    # resized to 5 x 40: dx x 40/20 = 2, dy x 5/5 = 1, then the flip negates dx
    assert out_frames[0].shape == (5, 40, 3) and out_labels[0].shape == (5, 40)
    np.testing.assert_allclose(out_flows[0][..., 0], -4.0)
    np.testing.assert_allclose(out_flows[0][..., 1], -1.0)
    np.testing.assert_allclose(out_flows[1][..., 0], 8.0)
    np.testing.assert_allclose(out_flows[1][..., 1], 3.0)
    with pytest.raises(ValueError, match="needs 2 flow fields"):
        transform.with_flows(frames, labels, flows[:1], rng)
    with pytest.raises(ValueError, match="flow 1 must be"):
        transform.with_flows(frames, labels, [flows[0], flows[1][:5]], rng)


def test_compose_flows_by_warping():
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
    first = np.zeros((4, 6, 2), np.float32)
    first[..., 0], first[..., 1] = 1.5, 1.0  # every pixel moves by (1.5, 1)
    second = np.stack([0.5 * cols, -rows], axis=-1).astype(np.float32)  # dx = x / 2, dy = -y (linear: exact)
    out = compose_flows(first, second)
    x = np.minimum(cols + 1.5, 5.0)  # positions beyond the frame are clamped to its border
    y = np.minimum(rows + 1.0, 3.0)
    np.testing.assert_allclose(out[..., 0], 1.5 + 0.5 * x, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], 1.0 - y, rtol=1e-6)
    np.testing.assert_array_equal(chain_flows([], size=(4, 6)), np.zeros((4, 6, 2)))
    np.testing.assert_allclose(chain_flows([first, first, first], size=(4, 6))[0, 0], [4.5, 3.0])


def test_merge_flows_takes_the_pasted_clips_flow_where_pasted():
    first = np.full((1, 2, 2, 2), 1.0, np.float32)
    second = np.full((1, 2, 2, 2), 7.0, np.float32)
    second_labels = np.array([[[0, 1], [255, 2]], [[1, 1], [1, 1]]])  # frame 0 decides; frame 1 has no flow
    out = merge_flows(first, second, second_labels)
    np.testing.assert_array_equal(out[0, ..., 0], [[1, 7], [1, 7]])


def test_merged_samples_carry_flow(toy_root):
    collection = ToyVOS(toy_root, split="train")
    dataset = ClipDataset(
        collection=collection, transform=ClipTransform(size=(32, 32)), merge_prob=1.0, with_flow=True, seed=1
    )
    sample = dataset[0]
    assert "+" in sample["name"] and tuple(sample["flows"].shape) == (2, 2, 32, 32)


# -- Clip / collate ------------------------------------------------------------------------------------------------


def _sample(*, flows: bool, frames: int = 3) -> dict[str, object]:
    out: dict[str, object] = {
        "images": torch.zeros(frames, 3, 8, 8),
        "labels": torch.zeros(frames, 8, 8, dtype=torch.int64),
        "num_objects": 1,
        "name": "v",
        "frame_indices": torch.arange(frames),
    }
    if flows:
        out["flows"] = torch.full((frames - 1, 2, 8, 8), 2.0)
    return out


def test_collate_stacks_flows_all_or_none():
    clip = collate_clips([_sample(flows=True), _sample(flows=True)])
    assert tuple(clip.flows.shape) == (2, 2, 2, 8, 8) and clip.flows.dtype == torch.float32
    assert clip.to("cpu").flows is not None and torch.equal(clip.to("cpu").flows, clip.flows)
    assert collate_clips([_sample(flows=False)] * 2).flows is None
    with pytest.raises(ValueError, match=r"samples \[0\] carry 'flows' but samples \[1\] do not"):
        collate_clips([_sample(flows=True), _sample(flows=False)])


def test_clip_checks_the_flow_shape():
    clip = collate_clips([_sample(flows=False)])
    with pytest.raises(ValueError, match=r"flows must be \(B, T-1, 2, H, W\) = \(1, 2, 2, 8, 8\)"):
        Clip(
            images=clip.images,
            labels=clip.labels,
            num_objects=clip.num_objects,
            names=clip.names,
            frame_indices=clip.frame_indices,
            flows=torch.zeros(1, 3, 2, 8, 8),
        )
