"""DAVIS 2016/2017, YouTube-VOS and ToyVOS readers on tiny synthetic datasets written by ``datasets_util``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets_util import (
    frame_image,
    make_davis,
    make_toyvos,
    make_youtube_vos,
    object_labels,
    toy_flow,
    youtube_vos_labels,
)

from voszoo.data.davis import DAVIS, ToyVOS
from voszoo.data.io import VOSDataError, write_labels
from voszoo.data.video import VideoCollection, VideoSource
from voszoo.data.youtube_vos import YouTubeVOS

SIZE = (24, 32)


def decode(path: Path) -> np.ndarray:
    """Independent reference decode of a frame file."""
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def davis_root(tmp_path: Path) -> Path:
    return make_davis(tmp_path / "davis", sequences={"bear": (4, 2), "cat": (3, 1)}, size=SIZE)


@pytest.fixture
def ytvos_root(tmp_path: Path) -> Path:
    videos = {"v1": (16, {1: 0, 2: 10}), "v2": (6, {1: 0})}
    return make_youtube_vos(tmp_path / "yt", split="valid", videos=videos, size=SIZE, all_frames=True)


# ----------------------------------------------------------------------------------------------------------- DAVIS


def test_davis2017_reads_frames_labels_and_objects(davis_root: Path) -> None:
    davis = DAVIS(davis_root)
    assert isinstance(davis, VideoCollection)
    assert list(davis.sequences) == ["bear", "cat"] and len(davis) == 2
    video = davis.video("bear")
    assert isinstance(video, VideoSource)
    assert list(video.frame_names) == ["00000", "00001", "00002", "00003"]
    assert video.num_frames == len(video) == 4
    assert video.size == (24, 32)
    assert list(video.annotated_indices) == [0, 1, 2, 3]
    frame = video.frame(2)
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, decode(davis_root / "JPEGImages/480p/bear/00002.jpg"))
    # JPEG is lossy: still close to what was drawn
    assert np.abs(frame.astype(int) - frame_image(2, object_labels(2, [1, 2], size=SIZE, slots=2))).mean() < 4
    labels = video.labels(2)
    assert labels.shape == (24, 32) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, object_labels(2, [1, 2], size=SIZE, slots=2))
    # by hand: band width 16; object 1 columns 1..14, rows (2+1) % 13 = 3 .. 14; object 2 columns 17..30, rows 4..15
    assert labels[3, 1] == 1 and labels[2, 1] == 0 and labels[14, 14] == 1 and labels[14, 15] == 0
    assert labels[4, 17] == 2 and labels[15, 30] == 2 and labels[16, 30] == 0 and labels[4, 31] == 0
    assert video.first_appearance == {1: 0, 2: 0}
    assert video.object_ids == [1, 2]
    assert davis.video("cat").first_appearance == {1: 0}
    assert [v.name for v in davis] == ["bear", "cat"]
    assert len(list(video.frames())) == 4


def test_davis2017_keeps_void(davis_root: Path) -> None:
    labels = object_labels(1, [1, 2], size=SIZE, slots=2)
    labels[0, :5] = 255
    write_labels(davis_root / "Annotations/480p/bear/00001.png", labels)
    read = DAVIS(davis_root).video("bear").labels(1)
    assert read[0, :5].tolist() == [255] * 5
    np.testing.assert_array_equal(read, labels)


def test_davis2016_pairs_split_file_and_binary_masks(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "d16", sequences={"blackswan": (3, 1), "car": (2, 1)}, size=SIZE, year="2016")
    first_line = (root / "ImageSets/480p/val.txt").read_text().splitlines()[0]
    assert first_line == "/JPEGImages/480p/blackswan/00000.jpg /Annotations/480p/blackswan/00000.png"
    with PIL.Image.open(root / "Annotations/480p/blackswan/00001.png") as image:
        assert sorted(np.unique(np.asarray(image)).tolist()) == [0, 255]
    davis = DAVIS(root, year="2016")
    assert list(davis.sequences) == ["blackswan", "car"]
    video = davis.video("blackswan")
    labels = video.labels(1)
    assert sorted(np.unique(labels).tolist()) == [0, 1]
    np.testing.assert_array_equal(labels, object_labels(1, [1], size=SIZE, slots=1))
    assert video.first_appearance == {1: 0}


def test_davis2016_split_inside_davis2017_binarises_multi_object_labels(davis_root: Path) -> None:
    (davis_root / "ImageSets/2016").mkdir()
    (davis_root / "ImageSets/2016/val.txt").write_text("bear\n")
    video = DAVIS(davis_root, year=2016).video("bear")
    np.testing.assert_array_equal(video.labels(0), (object_labels(0, [1, 2], size=SIZE, slots=2) > 0).astype(np.uint8))
    assert video.first_appearance == {1: 0}


def test_davis_full_resolution(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "full", sequences={"dog": (2, 1)}, size=(30, 40), resolution="Full-Resolution")
    video = DAVIS(root, resolution="Full-Resolution").video("dog")
    assert video.size == (30, 40) and video.frame(1).shape == (30, 40, 3)
    with pytest.raises(VOSDataError, match=r"JPEGImages/480p does not exist.*available resolutions: Full-Resolution"):
        DAVIS(root)


def test_davis_test_dev_only_first_frame_annotated(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "td", sequences={"x": (3, 2)}, size=SIZE, split="test-dev", first_frame_only=True)
    video = DAVIS(root, split="test-dev").video("x")
    assert list(video.annotated_indices) == [0]
    assert video.first_appearance == {1: 0, 2: 0}
    assert video.frame(2).shape == (24, 32, 3)
    with pytest.raises(KeyError, match=r"frame 1 \(00001\) has no annotation"):
        video.labels(1)


def test_toyvos_flow_and_davis_reads_toyvos(tmp_path: Path) -> None:
    root = make_toyvos(tmp_path / "toy", sequences={"shapes": (3, 2)}, size=SIZE)
    toy = ToyVOS(root)
    video = toy.video("shapes")
    flow = video.flow(1)
    assert flow.shape == (24, 32, 2) and flow.dtype == np.float32
    assert flow[0, 0, 0] == 1.5 and flow[5, 8, 1] == -2.0  # by hand: x = t + 0.5, y = -column / 4
    np.testing.assert_array_equal(video.flow(0), toy_flow(0, size=SIZE))
    with pytest.raises(KeyError, match="last frame"):
        video.flow(2)
    with pytest.raises(IndexError):
        video.flow(3)
    plain = DAVIS(root).video("shapes")
    np.testing.assert_array_equal(plain.labels(1), video.labels(1))
    assert plain.first_appearance == {1: 0, 2: 0}


def test_toyvos_flow_errors(tmp_path: Path) -> None:
    root = make_toyvos(tmp_path / "toy", sequences={"shapes": (4, 1)}, size=SIZE)
    (root / "Flow/shapes/00000.npy").unlink()
    np.save(root / "Flow/shapes/00001.npy", np.zeros((24, 32, 3), np.float32))
    (root / "Flow/shapes/00002.npy").write_bytes(b"not a numpy file")
    video = ToyVOS(root).video("shapes")
    with pytest.raises(VOSDataError, match=r"00000\.npy: flow file not found"):
        video.flow(0)
    with pytest.raises(VOSDataError, match=r"00001\.npy: expected float flow of shape \(H, W, 2\) = \(24, 32, 2\)"):
        video.flow(1)
    with pytest.raises(VOSDataError, match=r"00002\.npy: unreadable flow file"):
        video.flow(2)
    make_davis(root, sequences={"noflow": (2, 1)}, size=SIZE, split="train")
    with pytest.raises(VOSDataError, match=r"train\.txt lists 1 sequence\(s\) with no folder in .*Flow: noflow"):
        ToyVOS(root, split="train")


# ----------------------------------------------------------------------------------------------------- YouTube-VOS


def test_youtube_vos_valid_sparse_annotations_and_mid_video_object(ytvos_root: Path) -> None:
    yt = YouTubeVOS(ytvos_root)
    assert list(yt.sequences) == ["v1", "v2"]
    video = yt.video("v1")
    assert list(video.frame_names) == ["00000", "00005", "00010", "00015"]
    assert list(video.annotated_indices) == [0, 2]
    assert video.first_appearance == {1: 0, 2: 2}  # object 2 first appears at original frame 10 = index 2
    assert video.categories == {1: "thing1", 2: "thing2"}
    labels = video.labels(2)
    np.testing.assert_array_equal(labels, object_labels(10, [2], size=SIZE, slots=2))
    assert sorted(np.unique(labels).tolist()) == [0, 2]  # valid: only the new object
    np.testing.assert_array_equal(video.labels(0), object_labels(0, [1], size=SIZE, slots=2))
    with pytest.raises(KeyError, match="has no annotation"):
        video.labels(1)
    np.testing.assert_array_equal(video.frame(1), decode(ytvos_root / "valid/JPEGImages/v1/00005.jpg"))


def test_youtube_vos_all_frames(ytvos_root: Path) -> None:
    video = YouTubeVOS(ytvos_root, all_frames=True).video("v1")
    assert list(video.frame_names) == [f"{t:05d}" for t in range(16)]
    assert list(video.annotated_indices) == [0, 10]
    assert video.first_appearance == {1: 0, 2: 10}
    np.testing.assert_array_equal(video.frame(7), decode(ytvos_root / "valid_all_frames/JPEGImages/v1/00007.jpg"))
    np.testing.assert_array_equal(video.labels(10), object_labels(10, [2], size=SIZE, slots=2))
    assert YouTubeVOS(ytvos_root, all_frames=True).video("v2").num_frames == 6


def test_youtube_vos_train_every_fifth_frame(tmp_path: Path) -> None:
    root = make_youtube_vos(tmp_path / "yt", split="train", videos={"t1": (11, {1: 0, 2: 5})}, size=SIZE)
    video = YouTubeVOS(root, year="2018", split="train").video("t1")
    assert list(video.frame_names) == ["00000", "00005", "00010"]
    assert list(video.annotated_indices) == [0, 1, 2]
    assert video.first_appearance == {1: 0, 2: 1}
    assert sorted(np.unique(video.labels(2)).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(video.labels(1), youtube_vos_labels(5, {1: 0, 2: 5}, size=SIZE, only_new=False))
    assert sorted(np.unique(video.labels(0)).tolist()) == [0, 1]


def test_youtube_vos_meta_disagreements(ytvos_root: Path) -> None:
    meta_path = ytvos_root / "valid/meta.json"
    meta = json.loads(meta_path.read_text())
    # object 2's first frame has no label file
    meta["videos"]["v1"]["objects"]["2"]["frames"] = ["00005", "00010", "00015"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        VOSDataError, match=r"object 2 of video 'v1' first appears in frame '00005', but its annotation"
    ):
        YouTubeVOS(ytvos_root).video("v1")
    # object 2's first frame is not a frame
    meta["videos"]["v1"]["objects"]["2"]["frames"] = ["00012"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VOSDataError, match=r"frame '00012', which is not a frame in .*JPEGImages/v1"):
        YouTubeVOS(ytvos_root).video("v1")
    # meta says object 2 starts at 00000 but the label file there does not hold it
    meta["videos"]["v1"]["objects"]["2"]["frames"] = ["00000", "00005"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VOSDataError, match=r"00000\.png: .*object\(s\) \[2\] .* first appear in this frame"):
        YouTubeVOS(ytvos_root).video("v1").labels(0)
    # an object before its first appearance
    meta["videos"]["v1"]["objects"]["2"]["frames"] = ["00010"]
    meta_path.write_text(json.dumps(meta))
    write_labels(ytvos_root / "valid/Annotations/v1/00000.png", object_labels(0, [1, 2], size=SIZE, slots=2))
    with pytest.raises(VOSDataError, match=r"00000\.png: holds object\(s\) \[2\] before .* \(2 at frame 00010\)"):
        YouTubeVOS(ytvos_root).video("v1").labels(0)


def test_youtube_vos_label_not_in_meta(ytvos_root: Path) -> None:
    labels = object_labels(0, [1], size=SIZE, slots=2)
    labels[0, 0] = 7
    write_labels(ytvos_root / "valid/Annotations/v2/00000.png", labels)
    with pytest.raises(
        VOSDataError, match=r"v2/00000\.png: label values \[7\] are not objects of video 'v2' .*\(objects: 1\)"
    ):
        YouTubeVOS(ytvos_root).video("v2").labels(0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable meta file"),
        ('{"vids": {}}', 'found no "videos" mapping'),
        ('{"videos": {}}', "lists no videos"),
    ],
)
def test_youtube_vos_bad_meta_file(ytvos_root: Path, content: str, message: str) -> None:
    (ytvos_root / "valid/meta.json").write_text(content)
    with pytest.raises(VOSDataError, match=rf"meta\.json: .*{message}"):
        YouTubeVOS(ytvos_root)


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ({"x": {"frames": ["00000"]}}, r"object id 'x'; ids must be integers in 1\.\.254"),
        ({"1": {"category": "a", "frames": []}}, r"object 1 of video 'v2' needs a non-empty list of frame names"),
    ],
)
def test_youtube_vos_bad_meta_entry(ytvos_root: Path, objects: dict, message: str) -> None:
    meta_path = ytvos_root / "valid/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["v2"]["objects"] = objects
    meta_path.write_text(json.dumps(meta))
    yt = YouTubeVOS(ytvos_root)
    yt.video("v1")  # other videos still read
    with pytest.raises(VOSDataError, match=message):
        yt.video("v2")


# -------------------------------------------------------------------------------------------------------- laziness


def test_construction_opens_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    davis_root = make_davis(tmp_path / "davis", sequences={"a": (3, 1)}, size=SIZE)
    toy_root = make_toyvos(tmp_path / "toy", sequences={"a": (3, 1)}, size=SIZE)
    yt_root = make_youtube_vos(tmp_path / "yt", videos={"v": (11, {1: 0, 2: 5})}, size=SIZE, all_frames=True)
    opened: list[str] = []
    real_open = PIL.Image.open
    real_load = np.load

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    def counting_load(file, *args, **kwargs):
        opened.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    monkeypatch.setattr(np, "load", counting_load)
    videos = [
        DAVIS(davis_root).video("a"),
        ToyVOS(toy_root).video("a"),
        YouTubeVOS(yt_root).video("v"),
        YouTubeVOS(yt_root, all_frames=True).video("v"),
    ]
    for video in videos:
        assert video.num_frames >= 3 and len(video.annotated_indices) >= 1
    assert videos[2].first_appearance == {1: 0, 2: 1}  # from meta.json: no file read
    assert opened == []
    videos[0].frame(1)
    assert any(path.endswith("a/00001.jpg") for path in opened)
    opened.clear()
    videos[1].flow(0)  # the flow file, then the first frame's header for the expected (H, W)
    assert opened == [str(toy_root / "Flow/a/00000.npy"), str(toy_root / "JPEGImages/480p/a/00000.jpg")]


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(VOSDataError, match=r"DAVIS root folder \(year 2017\) .*nowhere does not exist"):
        DAVIS(tmp_path / "nowhere")
    with pytest.raises(VOSDataError, match=r"YouTube-VOS root folder \(year 2019\) .*nowhere does not exist"):
        YouTubeVOS(tmp_path / "nowhere")
    with pytest.raises(VOSDataError, match="does not exist"):
        ToyVOS(tmp_path / "nowhere")


def test_missing_split_file_lists_available_splits(davis_root: Path, ytvos_root: Path) -> None:
    with pytest.raises(
        VOSDataError, match=r"split 'train' not found \(.*ImageSets/2017/train\.txt.*ImageSets/2017: val"
    ):
        DAVIS(davis_root, split="train")
    with pytest.raises(VOSDataError, match=r"split 'val' not found .*no split files under"):
        DAVIS(davis_root, year="2016")
    with pytest.raises(VOSDataError, match=r"split 'train' not found \(.*train/meta\.json does not exist\).*: valid$"):
        YouTubeVOS(ytvos_root, split="train")


def test_listed_sequence_absent(davis_root: Path, ytvos_root: Path) -> None:
    (davis_root / "ImageSets/2017/val.txt").write_text("bear\nghost\ncat\n")
    with pytest.raises(
        VOSDataError, match=r"val\.txt lists 1 sequence\(s\) with no folder in .*JPEGImages/480p: ghost"
    ):
        DAVIS(davis_root)
    meta_path = ytvos_root / "valid/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["phantom"] = meta["videos"]["v2"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VOSDataError, match=r"meta\.json lists 1 sequence\(s\) with no folder in .*JPEGImages: phantom"):
        YouTubeVOS(ytvos_root)


def test_listed_sequence_without_annotation_folder(davis_root: Path) -> None:
    for path in (davis_root / "Annotations/480p/cat").iterdir():
        path.unlink()
    (davis_root / "Annotations/480p/cat").rmdir()
    with pytest.raises(VOSDataError, match=r"with no folder in .*Annotations/480p: cat"):
        DAVIS(davis_root)


def test_sequence_without_frames(davis_root: Path) -> None:
    for path in (davis_root / "JPEGImages/480p/cat").iterdir():
        path.unlink()
    davis = DAVIS(davis_root)  # listing the split stays cheap: the empty folder is found when the video is built
    with pytest.raises(VOSDataError, match=r"frame folder .*JPEGImages/480p/cat of sequence 'cat' holds no frames"):
        davis.video("cat")


def test_label_file_without_frame_and_first_frame_without_label(davis_root: Path) -> None:
    write_labels(davis_root / "Annotations/480p/bear/00009.png", np.zeros(SIZE, np.uint8))
    with pytest.raises(VOSDataError, match=r"1 label file\(s\) have no frame of the same name .*: 00009\.png"):
        DAVIS(davis_root).video("bear")
    (davis_root / "Annotations/480p/cat/00000.png").unlink()
    with pytest.raises(VOSDataError, match=r"'cat': its first frame 00000\.jpg has no annotation .*cat/00000\.png"):
        DAVIS(davis_root).video("cat")


def test_annotation_size_differs_from_frame(davis_root: Path, ytvos_root: Path) -> None:
    write_labels(davis_root / "Annotations/480p/bear/00001.png", np.ones((20, 30), np.uint8))
    video = DAVIS(davis_root).video("bear")
    video.labels(0)
    with pytest.raises(
        VOSDataError, match=r"bear/00001\.png: annotation is 20x30 \(HxW\) but its frame .*bear/00001\.jpg is 24x32"
    ):
        video.labels(1)
    write_labels(ytvos_root / "valid/Annotations/v1/00010.png", np.full((12, 16), 2, np.uint8))
    with pytest.raises(VOSDataError, match=r"v1/00010\.png: annotation is 12x16 .* is 24x32"):
        YouTubeVOS(ytvos_root, all_frames=True).video("v1").labels(10)


def test_frame_size_differs_within_video(davis_root: Path) -> None:
    PIL.Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(davis_root / "JPEGImages/480p/bear/00003.jpg")
    with pytest.raises(
        VOSDataError, match=r"00003\.jpg: frame is 10x12 \(HxW\) but the first frame .*00000\.jpg .* is 24x32"
    ):
        DAVIS(davis_root).video("bear").frame(3)


def test_unreadable_or_truncated_images(davis_root: Path) -> None:
    frame = davis_root / "JPEGImages/480p/bear/00002.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    (davis_root / "Annotations/480p/bear/00003.png").write_bytes(b"garbage, not a PNG")
    video = DAVIS(davis_root).video("bear")
    with pytest.raises(VOSDataError, match=r"bear/00002\.jpg: unreadable or truncated image"):
        video.frame(2)
    with pytest.raises(VOSDataError, match=r"bear/00003\.png: unreadable"):
        video.labels(3)
    (davis_root / "JPEGImages/480p/cat/00000.jpg").write_bytes(b"")
    with pytest.raises(VOSDataError, match=r"cat/00000\.jpg: unreadable"):
        _ = DAVIS(davis_root).video("cat").size


def test_davis2017_label_above_first_frame_objects(davis_root: Path) -> None:
    labels = object_labels(2, [1, 2], size=SIZE, slots=2)
    labels[0, 0] = 5
    write_labels(davis_root / "Annotations/480p/bear/00002.png", labels)
    video = DAVIS(davis_root).video("bear")
    video.labels(1)
    with pytest.raises(
        VOSDataError,
        match=r"00002\.png: label values \[5\] are neither objects of the first frame \(00000\.png: ids up to 2\)",
    ):
        video.labels(2)


def test_davis_first_frame_without_object(davis_root: Path) -> None:
    write_labels(davis_root / "Annotations/480p/cat/00000.png", np.zeros(SIZE, np.uint8))
    with pytest.raises(VOSDataError, match=r"cat/00000\.png: the first frame of 'cat' holds no object"):
        _ = DAVIS(davis_root).video("cat").first_appearance


def test_malformed_split_file(davis_root: Path) -> None:
    (davis_root / "ImageSets/2017/val.txt").write_text("bear\nsome/path without images\n")
    with pytest.raises(VOSDataError, match=r"val\.txt, line 2: expected a sequence name or a"):
        DAVIS(davis_root)
    (davis_root / "ImageSets/2017/val.txt").write_text("\n\n")
    with pytest.raises(VOSDataError, match=r"val\.txt: split file lists no sequences"):
        DAVIS(davis_root)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: DAVIS(root, year="2018"), r"DAVIS: unknown year '2018'; valid choices: '2016', '2017'"),
        (lambda root: DAVIS(root, split="test"), r"DAVIS 2017: unknown split 'test'; valid choices: 'train', 'val'"),
        (lambda root: DAVIS(root, year="2016", split="test-dev"), r"DAVIS 2016: unknown split 'test-dev'"),
        (lambda root: DAVIS(root, resolution="1080p"), r"unknown resolution '1080p'; .*'480p', 'Full-Resolution'"),
        (lambda root: YouTubeVOS(root, year="2017"), r"YouTubeVOS: unknown year '2017'; valid choices: '2018', '2019'"),
        (lambda root: YouTubeVOS(root, split="val"), r"unknown split 'val'; valid choices: 'train', 'valid', 'test'"),
        (lambda root: ToyVOS(root, split="nope"), r"unknown split 'nope'"),
    ],
)
def test_unknown_argument_values(tmp_path: Path, build, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build(tmp_path / "nowhere")  # checked before the disk is touched
    assert not isinstance(info.value, VOSDataError)


def test_unknown_video_name_lists_valid_names(davis_root: Path, ytvos_root: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"DAVIS 2017 val has no sequence 'dog'; it holds 2 sequences: bear, cat"):
        DAVIS(davis_root).video("dog")
    with pytest.raises(KeyError, match=r"YouTube-VOS 2019 valid has no sequence 'v9'; it holds 2 sequences: v1, v2"):
        YouTubeVOS(ytvos_root).video("v9")
    many = make_davis(tmp_path / "many", sequences={f"s{i}": (1, 1) for i in range(8)}, size=SIZE)
    with pytest.raises(KeyError, match=r"it holds 8 sequences: s0, s1, s2, s3, s4, \.\.\."):
        DAVIS(many).video("zzz")


def test_frame_index_out_of_range(davis_root: Path) -> None:
    video = DAVIS(davis_root).video("cat")
    with pytest.raises(IndexError, match=r"frame index 3 out of range 0\.\.2"):
        video.frame(3)
    with pytest.raises(IndexError):
        video.labels(-1)


def test_write_labels_is_atomic_and_keeps_the_palette(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4) % 4
    path = tmp_path / "seq" / "00000.png"
    write_labels(path, labels)
    with PIL.Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), labels)
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.png"]

    # A failure while writing leaves the earlier file intact and no temporary file behind.
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("voszoo.data.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, np.zeros((3, 4), dtype=np.uint8))
    with PIL.Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), labels)
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.png"]
