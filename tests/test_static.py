"""Static-image pre-training clips: folder reading, affine warps, same output as video clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion
from torch.utils.data import DataLoader

from voszoo.data.io import VOSDataError, write_labels
from voszoo.data.static import StaticClipDataset, StaticImages
from voszoo.data.transforms import ClipTransform, normalize_image
from voszoo.types import collate_clips

SIZE = 40


def red_squares(count: int) -> tuple[np.ndarray, np.ndarray]:
    """A green image with ``count`` red squares and the instance map numbering them 1..count."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 1] = 200
    labels = np.zeros((SIZE, SIZE), np.uint8)
    for k in range(count):
        top, left = 6 + 14 * (k // 2), 6 + 14 * (k % 2)
        image[top : top + 10, left : left + 10] = (230, 0, 0)
        labels[top : top + 10, left : left + 10] = k + 1
    return image, labels


def write_folder(
    root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], *, binary: bool = False, suffix: str = ".jpg"
) -> Path:
    for name, (image, labels) in items.items():
        image_path = root / "images" / f"{name}{suffix}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path, quality=95)
        mask_path = root / "masks" / f"{name}.png"
        if binary:
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), mode="L").save(mask_path)
        else:
            write_labels(mask_path, labels)
    return root


def identity(min_object_area: int = 4) -> ClipTransform:
    return ClipTransform(
        size=(SIZE, SIZE),
        scale=(1, 1),
        ratio=(1, 1),
        hflip_prob=0.0,
        color_jitter=None,
        min_object_area=min_object_area,
    )


def no_warp(images: StaticImages, **kwargs) -> StaticClipDataset:
    return StaticClipDataset(
        images=images, transform=identity(), rotation=0.0, affine_scale=(1.0, 1.0), shear=0.0, translate=0.0, **kwargs
    )


def test_static_images_pairs_by_relative_stem(tmp_path):
    write_folder(tmp_path, {"b": red_squares(1), "COCO/a": red_squares(2)})
    images = StaticImages(tmp_path)
    assert images.names == ["COCO/a", "b"] and len(images) == 2
    image, labels = images.read(0)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(labels, red_squares(2)[1])


def test_missing_mask_is_named(tmp_path):
    write_folder(tmp_path, {"a": red_squares(1)})
    Image.fromarray(red_squares(1)[0]).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(VOSDataError, match=r"lonely\.png.*masks/lonely\.png"):
        StaticImages(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(VOSDataError, match="image folder not found"):
        StaticImages(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(VOSDataError, match="no images"):
        StaticImages(tmp_path)
    write_folder(tmp_path, {"a": red_squares(1)})
    write_labels(tmp_path / "masks" / "a.png", np.zeros((SIZE, SIZE - 1), np.uint8))
    with pytest.raises(VOSDataError, match="a.png: mask is 39x40"):
        StaticImages(tmp_path).read(0)


def test_binary_masks_become_object_one(tmp_path):
    write_folder(tmp_path, {"sal": red_squares(3)}, binary=True)
    _, labels = StaticImages(tmp_path, binary_masks=True).read(0)
    np.testing.assert_array_equal(labels, (red_squares(3)[1] > 0).astype(np.uint8))
    sample = no_warp(StaticImages(tmp_path, binary_masks=True))[0]
    assert sample["num_objects"] == 1


def test_without_warps_every_frame_is_the_image(tmp_path):
    image, labels = red_squares(2)
    write_folder(tmp_path, {"a": (image, labels)})
    images = StaticImages(tmp_path)
    sample = no_warp(images, num_frames=3, max_objects=5)[0]
    assert sample["name"] == "a" and sample["num_objects"] == 2
    assert sample["frame_indices"].tolist() == [0, 1, 2]
    expected = normalize_image(images.read(0)[0])  # the decoded JPEG
    for t in range(3):
        torch.testing.assert_close(sample["images"][t], expected)
        np.testing.assert_array_equal(sample["labels"][t].numpy(), labels)


def test_warped_frames_differ_and_masks_follow_the_image(tmp_path):
    write_folder(tmp_path, {f"img{i}": red_squares(4) for i in range(3)}, suffix=".png")  # no JPEG colour bleeding
    data = StaticClipDataset(
        images=StaticImages(tmp_path),
        transform=ClipTransform(size=(48, 48), scale=(0.7, 1.0), color_jitter=None, min_object_area=4),
        num_frames=4,
        max_objects=4,
        rotation=30.0,
        translate=0.1,
        shear=10.0,
    )
    for i in range(len(data)):
        sample = data[i]
        images, labels = sample["images"], sample["labels"].numpy()
        assert images.shape == (4, 3, 48, 48) and labels.shape == (4, 48, 48)
        assert not torch.equal(images[1], images[2])
        red = (images[:, 0] > 1.0).numpy()  # normalised red > 1 <=> red > 186: the squares (230), not the fill (124)
        for t in range(4):  # 2+ px from edges (bilinear warp and upscale blend there), colour and label agree
            objects = binary_erosion(labels[t] > 0, iterations=2)
            background = binary_erosion(labels[t] == 0, iterations=2)
            assert objects.sum() > 50 and background.sum() > 50
            assert red[t][objects].all() and not red[t][background].any()
        count = sample["num_objects"]
        assert set(np.unique(labels[0]).tolist()) - {0} == set(range(1, count + 1))


def test_max_objects_and_determinism(tmp_path):
    write_folder(tmp_path, {f"img{i}": red_squares(4) for i in range(2)})
    images = StaticImages(tmp_path)

    def make(seed=0):
        return StaticClipDataset(images=images, transform=identity(), max_objects=2, seed=seed, samples_per_epoch=4)

    a, b = make(), make()
    assert len(a) == 4
    for i in range(4):
        assert a[i]["num_objects"] == 2
        assert torch.equal(a[i]["images"], b[i]["images"]) and torch.equal(a[i]["labels"], b[i]["labels"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["images"], b[i]["images"]) for i in range(4))


def test_merged_static_clips_and_batches(tmp_path):
    write_folder(tmp_path, {f"img{i}": red_squares(1 + i) for i in range(3)})
    data = StaticClipDataset(
        images=StaticImages(tmp_path),
        transform=ClipTransform(size=(32, 32), min_object_area=4),
        max_objects=3,
        merge_prob=1.0,
    )
    clip = next(iter(DataLoader(data, batch_size=3, collate_fn=collate_clips)))
    assert clip.images.shape == (3, 3, 3, 32, 32) and clip.labels.dtype == torch.int64
    assert all("+" in name for name in clip.names)
    assert torch.all((clip.num_objects >= 1) & (clip.num_objects <= 3))


def test_images_without_objects_raise(tmp_path):
    write_folder(tmp_path, {"blank": red_squares(0)})
    with pytest.raises(VOSDataError, match="no clip with an object visible"):
        no_warp(StaticImages(tmp_path), max_tries=2)[0]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rotation=-1.0), "rotation"),
        (dict(affine_scale=(0.0, 1.0)), "affine_scale"),
        (dict(shear=95.0), "shear"),
        (dict(translate=2.0), "translate"),
        (dict(num_frames=0), "num_frames"),
        (dict(max_objects=0), "max_objects"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    write_folder(tmp_path, {"a": red_squares(1)})
    with pytest.raises(ValueError, match=name):
        StaticClipDataset(images=StaticImages(tmp_path), transform=identity(), **kwargs)
