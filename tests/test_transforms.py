"""Clip-consistent augmentation: geometry shared by all frames and aligned between images and labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voszoo.data.transforms import (
    ClipTransform,
    normalize_image,
    resize_labels,
    visible_objects,
)
from voszoo.normalization import IMAGENET_MEAN, IMAGENET_STD

BLOCK = 16


def ramp_clip(num_frames: int = 3, size: int = 128) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames whose red channel is 2*x and green 2*y (pixel centre coordinates), blue a per-frame constant; labels
    are 16x16 blocks numbered 1 + bx + 8 * by, so a pixel's label is a known function of its position."""
    y, x = np.mgrid[0:size, 0:size]
    frames, labels = [], []
    for t in range(num_frames):
        frame = np.stack([2 * x, 2 * y, np.full_like(x, 40 * t)], axis=-1).astype(np.uint8)
        frames.append(frame)
        labels.append((1 + x // BLOCK + (size // BLOCK) * (y // BLOCK)).astype(np.uint8))
    return frames, labels


def block_of(x: np.ndarray, y: np.ndarray, size: int = 128) -> np.ndarray:
    return 1 + x // BLOCK + (size // BLOCK) * (y // BLOCK)


def geometry_only(**kwargs) -> ClipTransform:
    return ClipTransform(color_jitter=None, **kwargs)


@pytest.mark.parametrize("seed", range(12))
def test_labels_stay_aligned_with_image_and_frames_share_geometry(seed):
    transform = geometry_only(size=(24, 32), scale=(0.2, 1.0), ratio=(0.5, 2.0), hflip_prob=0.5, min_object_area=1)
    frames, labels = ramp_clip()
    out_frames, out_labels = transform(frames, labels, np.random.default_rng(seed))
    assert len(out_frames) == len(out_labels) == 3
    assert out_frames[0].shape == (24, 32, 3) and out_frames[0].dtype == np.uint8
    assert out_labels[0].shape == (24, 32) and out_labels[0].dtype == np.uint8
    for t in range(1, 3):  # identical inputs (but blue) -> identical geometry
        np.testing.assert_array_equal(out_frames[t][..., :2], out_frames[0][..., :2])
        np.testing.assert_array_equal(out_labels[t], out_labels[0])
        assert np.all(out_frames[t][..., 2] == 40 * t)  # no colour change without jitter
    # where the source position (read off the ramps) is well inside a block, the label must be that block's
    src_x = out_frames[0][..., 0].astype(np.float64) / 2
    src_y = out_frames[0][..., 1].astype(np.float64) / 2
    margin = 0.75
    inside = (
        (np.abs(src_x - BLOCK * np.round(src_x / BLOCK)) > margin)
        & (np.abs(src_y - BLOCK * np.round(src_y / BLOCK)) > margin)
        & (src_x > 2)
        & (src_x < 125)
        & (src_y > 2)
        & (src_y < 125)
    )
    assert inside.mean() > 0.4
    expected = block_of(np.round(src_x).astype(int), np.round(src_y).astype(int))
    np.testing.assert_array_equal(out_labels[0][inside], expected[inside])


def test_flip_probability_zero_one_and_half():
    frames, labels = ramp_clip(num_frames=2)

    def flipped(transform, seed):
        out, _ = transform(frames, labels, np.random.default_rng(seed))
        row = out[0][24, :, 0].astype(int)
        return row[-1] < row[0]  # red (= source x) decreasing along the output row

    never = geometry_only(size=(48, 48), scale=(0.5, 1.0), hflip_prob=0.0)
    always = geometry_only(size=(48, 48), scale=(0.5, 1.0), hflip_prob=1.0)
    half = geometry_only(size=(48, 48), scale=(0.5, 1.0), hflip_prob=0.5)
    assert not any(flipped(never, s) for s in range(10))
    assert all(flipped(always, s) for s in range(10))
    flips = [flipped(half, s) for s in range(40)]
    assert 8 <= sum(flips) <= 32


def test_identity_settings_return_the_input():
    frames, labels = ramp_clip(num_frames=2, size=64)
    labels[1][:5, :5] = 255
    transform = geometry_only(size=(64, 64), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0.0)
    out_frames, out_labels = transform(frames, labels, np.random.default_rng(0))
    for t in range(2):
        np.testing.assert_array_equal(out_frames[t], frames[t])
        np.testing.assert_array_equal(out_labels[t], labels[t])


def test_void_survives_downscaling():
    labels = np.zeros((64, 64), np.uint8)
    labels[:, :32] = 255
    labels[40:50, 40:50] = 1
    frames = [np.zeros((64, 64, 3), np.uint8)]
    transform = geometry_only(size=(32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0.0)
    _, out = transform(frames, [labels], np.random.default_rng(0))
    assert np.all(out[0][:, :16] == 255) and not np.any(out[0][:, 16:] == 255)
    assert set(np.unique(out[0]).tolist()) == {0, 1, 255}


def test_crop_is_redrawn_until_an_object_is_visible_in_the_first_frame():
    labels = np.zeros((100, 100), np.uint8)
    labels[2:12, 85:97] = 7  # a small object in a corner: most small crops miss it
    later = np.zeros((100, 100), np.uint8)  # later frames: object gone; they must not influence the choice
    frames = [np.zeros((100, 100, 3), np.uint8)] * 2
    transform = geometry_only(size=(40, 40), scale=(0.05, 0.1), hflip_prob=0.0, min_object_area=6, max_crop_tries=200)
    for seed in range(15):
        _, out = transform(frames, [labels, later], np.random.default_rng(seed))
        assert np.sum(out[0] == 7) >= 6
        assert not np.any(out[1] == 7)


def test_choose_crop_falls_back_to_the_whole_frame():
    transform = geometry_only(size=(40, 40), scale=(0.1, 0.2), max_crop_tries=3)
    assert transform.choose_crop(np.zeros((30, 50), np.uint8), np.random.default_rng(0)) == (0, 0, 30, 50)


def test_color_jitter_is_shared_by_the_clip_unless_frame_jitter():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    labels = np.ones((32, 32), np.uint8)
    common = dict(size=(32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0.0, color_jitter=(0.4, 0.4, 0.4, 0.1))
    shared = ClipTransform(**common)
    out, _ = shared([frame] * 3, [labels] * 3, np.random.default_rng(1))
    assert not np.array_equal(out[0], frame)
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])
    per_frame = ClipTransform(**common, frame_jitter=0.5)
    out, _ = per_frame([frame] * 3, [labels] * 3, np.random.default_rng(1))
    assert not np.array_equal(out[1], out[0])


def test_same_generator_state_gives_the_same_clip_and_global_rngs_are_unused():
    frames, labels = ramp_clip()
    transform = ClipTransform(size=(40, 40), frame_jitter=0.2)
    np.random.seed(1)
    torch.manual_seed(1)
    a = transform(frames, labels, np.random.default_rng(3))
    np.random.seed(2)
    torch.manual_seed(2)
    b = transform(frames, labels, np.random.default_rng(3))
    c = transform(frames, labels, np.random.default_rng(4))
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a[0], c[0], strict=True))


def test_normalize_image_values_and_layouts():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255
    out = normalize_image(image)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    for c in range(3):
        assert out[c, 1, 1].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-6)
        assert out[c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
    stack = np.stack([image, image])  # (T, H, W, 3)
    torch.testing.assert_close(normalize_image(stack)[1], out)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    torch.testing.assert_close(normalize_image(chw), out)
    torch.testing.assert_close(normalize_image(chw.float() / 255), out)
    with pytest.raises(ValueError, match="H, W, 3"):
        normalize_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="3, H, W"):
        normalize_image(torch.zeros(4, 4, 4))


def test_resize_labels_picks_the_pixel_under_each_centre():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    # 4 -> 2: output centres at 1.0 and 3.0 in input units -> rows/cols 1 and 3
    np.testing.assert_array_equal(resize_labels(labels, (2, 2)), [[5, 7], [13, 15]])
    up = resize_labels(np.array([[1, 2], [3, 4]], np.uint8), (4, 4))
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_visible_objects_counts_pixels_and_ignores_background_and_void():
    labels = np.zeros((10, 10), np.uint8)
    labels[0, :5] = 3  # 5 pixels
    labels[1, :2] = 1  # 2 pixels
    labels[5:, :] = 255
    assert visible_objects(labels, min_area=1) == [1, 3]
    assert visible_objects(labels, min_area=3) == [3]
    assert visible_objects(labels, min_area=6) == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(size=(0, 10)), "size"),
        (dict(size=(10, 10), scale=(0.0, 1.0)), "scale"),
        (dict(size=(10, 10), scale=(0.9, 0.5)), "scale"),
        (dict(size=(10, 10), ratio=(2.0, 1.0)), "ratio"),
        (dict(size=(10, 10), hflip_prob=1.5), "hflip_prob"),
        (dict(size=(10, 10), color_jitter=(0.1, 0.1, 0.1, 0.7)), "color_jitter"),
        (dict(size=(10, 10), color_jitter=(0.1, 0.1, 0.1)), "color_jitter"),
        (dict(size=(10, 10), frame_jitter=2.0), "frame_jitter"),
        (dict(size=(10, 10), min_object_area=0), "min_object_area"),
        (dict(size=(10, 10), max_crop_tries=0), "max_crop_tries"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ClipTransform(**kwargs)


def test_mismatched_clip_inputs_are_rejected():
    transform = ClipTransform(size=(8, 8))
    rng = np.random.default_rng(0)
    frame = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="label map 1"):
        transform([frame, frame], [np.zeros((10, 10)), np.zeros((9, 10))], rng)
    with pytest.raises(ValueError, match="frame 1"):
        transform([frame, frame.astype(np.float32)], [np.zeros((10, 10))] * 2, rng)
    with pytest.raises(ValueError, match="as many label maps"):
        transform([frame], [], rng)
