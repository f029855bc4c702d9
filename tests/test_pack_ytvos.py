"""YouTube-VOS submission packer on a tiny synthetic meta.json and predictions."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from voszoo.data.io import DAVIS_PALETTE, VOSDataError, write_labels
from voszoo.evaluation.youtube_vos import main, pack_submission, required_frames

META = {
    "videos": {
        "vid_a": {"objects": {"1": {"frames": ["00000", "00005", "00010"]}, "2": {"frames": ["00005", "00010"]}}},
        "vid_b": {"objects": {"3": {"category": "cat", "frames": ["00010", "00015"]}}},
    }
}
SIZES = {"vid_a": (6, 10), "vid_b": (8, 5)}  # (H, W)


def labels_for(video: str, frame: str) -> np.ndarray:
    height, width = SIZES[video]
    value = int(frame) // 5 + (1 if video == "vid_a" else 3)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[1:3, 1 : 2 + int(frame) // 5] = value
    return labels


@pytest.fixture
def predictions(tmp_path: Path) -> tuple[Path, Path]:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(META))
    pred = tmp_path / "pred"
    for video, frames in (("vid_a", ["00000", "00005", "00010"]), ("vid_b", ["00010", "00015"])):
        for frame in frames:
            write_labels(pred / video / f"{frame}.png", labels_for(video, frame))
    (pred / "vid_a" / "00001.png").write_bytes(b"not needed, not packed")
    return pred, meta


def test_required_frames_are_the_union_of_object_frames(predictions) -> None:
    _, meta = predictions
    assert required_frames(meta) == {"vid_a": ["00000", "00005", "00010"], "vid_b": ["00010", "00015"]}


def test_zip_holds_palette_pngs_at_original_size(predictions, tmp_path: Path) -> None:
    pred, meta = predictions
    out = pack_submission(pred, meta, tmp_path / "sub" / "submission.zip", progress=False)
    assert out == tmp_path / "sub" / "submission.zip"
    assert [p.name for p in out.parent.iterdir()] == ["submission.zip"]  # no temporary file left behind
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert names == [
            "Annotations/vid_a/00000.png",
            "Annotations/vid_a/00005.png",
            "Annotations/vid_a/00010.png",
            "Annotations/vid_b/00010.png",
            "Annotations/vid_b/00015.png",
        ]
        for name in names:
            _, video, file = name.split("/")
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.format == "PNG" and image.mode == "P"
            assert image.size == SIZES[video][::-1]
            assert np.array_equal(np.asarray(image), labels_for(video, file[:-4]))
            palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
            assert np.array_equal(palette[:4], DAVIS_PALETTE[:4])  # black, (128,0,0), (0,128,0), (128,128,0)
            assert palette[1].tolist() == [128, 0, 0]


def test_missing_frame_is_named_and_nothing_is_written(predictions, tmp_path: Path, capsys) -> None:
    pred, meta = predictions
    (pred / "vid_a" / "00005.png").unlink()
    out = tmp_path / "submission.zip"
    with pytest.raises(VOSDataError, match=r"1 frame file\(s\) missing: .*vid_a/00005\.png"):
        pack_submission(pred, meta, out, progress=False)
    assert not out.exists()
    assert main([str(pred), "--meta", str(meta), "--out", str(out), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("voszoo-pack-ytvos: error:") and "vid_a/00005.png" in error
    assert not out.exists()


def test_missing_video_and_many_missing_frames_are_summarised(tmp_path: Path) -> None:
    frames = [f"{5 * i:05d}" for i in range(9)]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {"v1": {"objects": {"1": {"frames": frames}}}, "v2": {"objects": {}}}}))
    with pytest.raises(VOSDataError, match="video 'v2' has no \"objects\""):
        required_frames(meta)
    meta.write_text(
        json.dumps({"videos": {"v1": {"objects": {"1": {"frames": frames}}}, "v2": META["videos"]["vid_b"]}})
    )
    (tmp_path / "pred" / "v1").mkdir(parents=True)
    with pytest.raises(VOSDataError) as info:
        pack_submission(tmp_path / "pred", meta, tmp_path / "s.zip", progress=False)
    message = str(info.value)
    assert "1 video folder(s) missing" in message and "v2" in message
    assert "9 frame file(s) missing" in message and "(and 4 more)" in message


def test_unreadable_png_and_size_mismatch_are_refused(predictions, tmp_path: Path) -> None:
    pred, meta = predictions
    (pred / "vid_a" / "00005.png").write_bytes(b"\x89PNG broken")
    write_labels(pred / "vid_b" / "00015.png", np.zeros((8, 6), dtype=np.uint8))
    out = tmp_path / "submission.zip"
    out.write_bytes(b"previous")
    with pytest.raises(VOSDataError) as info:
        pack_submission(pred, meta, out, progress=False)
    message = str(info.value)
    assert message.startswith("2 unusable prediction file(s)")
    assert "vid_a/00005.png: unreadable" in message
    assert "vid_b/00015.png: size 6x8 differs from 5x8 of 00010.png" in message
    assert out.read_bytes() == b"previous"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "pred", "submission.zip"]


def test_cli_writes_the_zip(predictions, tmp_path: Path, capsys) -> None:
    pred, meta = predictions
    out = tmp_path / "submission.zip"
    assert main([str(pred), "--meta", str(meta), "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert len(zipfile.ZipFile(out).namelist()) == 5
