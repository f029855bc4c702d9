"""ToyVOS generator: layout, determinism, first-frame visibility, exact flow, folder safety, CLI, scene statistics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from voszoo.data import toy
from voszoo.data.io import VOSDataError, read_labels
from voszoo.data.toy import generate_toyvos, main, render_toyvos_video
from voszoo.data.toy_render import Layer, render_video

SMALL = dict(videos=4, frames=6, size=(64, 80), seed=0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _sequences(root: Path) -> dict[str, list[str]]:
    return {split: (root / "ImageSets/2017" / f"{split}.txt").read_text().split() for split in ("train", "val")}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_toyvos(tmp_path_factory.mktemp("toy") / "small", workers=1, **SMALL)


@pytest.fixture(scope="module")
def moderate(tmp_path_factory) -> Path:
    """A default-like run, smaller images: enough videos for every phenomenon to show up."""
    root = tmp_path_factory.mktemp("toy") / "moderate"
    return generate_toyvos(root, videos=20, frames=12, size=(64, 64), seed=1, workers=2, progress=False)


# ------------------------------------------------------------------------------------------------------------ layout
def test_layout_and_formats(small: Path) -> None:
    splits = _sequences(small)
    # 4 videos: val = 4 // 5 -> at least 1, train = the rest
    assert splits == {"train": ["toy_train_000", "toy_train_001", "toy_train_002"], "val": ["toy_val_000"]}
    for name in splits["train"] + splits["val"]:
        images = sorted((small / "JPEGImages/480p" / name).iterdir())
        labels = sorted((small / "Annotations/480p" / name).iterdir())
        flows = sorted((small / "Flow" / name).iterdir())
        assert [p.name for p in images] == [f"{t:05d}.jpg" for t in range(6)]
        assert [p.name for p in labels] == [f"{t:05d}.png" for t in range(6)]
        assert [p.name for p in flows] == [f"{t:05d}.npy" for t in range(5)]
        for path in images:
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (80, 64))
        for path in labels:
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "P", (80, 64))
        for path in flows:
            flow = np.load(path)
            assert flow.dtype == np.float32 and flow.shape == (64, 80, 2)
            assert np.isfinite(flow).all()
        meta = json.loads((small / "Meta" / f"{name}.json").read_text())
        assert meta["name"] == name and meta["frames"] == 6 and meta["size"] == [64, 80]
    record = json.loads((small / "toyvos.json").read_text())
    assert record["parameters"] == {"videos": 4, "frames": 6, "size": [64, 80], "seed": 0}
    assert sorted(record["sequences"]) == sorted(splits["train"] + splits["val"])


def test_split_sizes_default_rule(tmp_path: Path) -> None:
    root = generate_toyvos(tmp_path / "d", videos=11, frames=3, size=(32, 32), workers=1, progress=False)
    splits = _sequences(root)
    assert len(splits["val"]) == 2 and len(splits["train"]) == 9  # val = 11 // 5
    assert len(set(splits["train"] + splits["val"])) == 11


def test_first_frame_objects_visible_and_labels_in_range(small: Path, moderate: Path) -> None:
    for root in (small, moderate):
        record = json.loads((root / "toyvos.json").read_text())
        height, width = record["parameters"]["size"]
        for name, summary in record["sequences"].items():
            count = summary["objects"]
            assert 1 <= count <= 4
            first = read_labels(root / "Annotations/480p" / name / "00000.png")
            areas = np.bincount(first.ravel(), minlength=count + 1)
            assert len(areas) == count + 1, f"{name}: labels above {count}"
            assert (areas[1:] >= 0.01 * height * width).all(), f"{name}: an object is barely visible: {areas}"
            for path in (root / "Annotations/480p" / name).iterdir():
                assert read_labels(path).max() <= count


# ------------------------------------------------------------------------------------------------------ determinism
def test_same_seed_is_byte_identical_for_any_worker_count(small: Path, tmp_path: Path) -> None:
    again = generate_toyvos(tmp_path / "again", workers=2, **SMALL)
    assert _files(small) == _files(again)
    other = generate_toyvos(tmp_path / "other", workers=1, **(SMALL | dict(seed=1)))
    first, second = _files(small), _files(other)
    assert first.keys() == second.keys()
    changed = [key for key in first if key.endswith(".jpg") and first[key] != second[key]]
    assert len(changed) == len([key for key in first if key.endswith(".jpg")])


# ------------------------------------------------------------------------------------------------------------- flow
def _pan_scene(shift: tuple[float, float], frames: int) -> list[Layer]:
    """A background whose camera moves the image content by ``shift`` (dx, dy) pixels per frame."""
    rng = np.random.default_rng(0)
    texture = rng.uniform(0, 255, size=(64, 64, 3)).astype(np.float32)
    affines = np.zeros((frames, 2, 3))
    affines[:, 0, 0] = affines[:, 1, 1] = 1.0
    affines[:, 0, 2] = shift[0] * np.arange(frames)
    affines[:, 1, 2] = shift[1] * np.arange(frames)
    return [Layer(texture=texture, radii=None, affines=affines)]


def test_background_flow_under_pure_camera_pan_equals_the_pan() -> None:
    video = render_video(_pan_scene((3.0, -2.0), frames=4), size=(40, 48))
    assert video.flow.shape == (3, 40, 48, 2)
    np.testing.assert_allclose(video.flow[..., 0], 3.0, atol=1e-9)
    np.testing.assert_allclose(video.flow[..., 1], -2.0, atol=1e-9)
    # content moves by (+3, -2): frame t+1 at (y - 2, x + 3) shows what frame t showed at (y, x)
    for t in range(3):
        np.testing.assert_array_equal(video.frames[t + 1][: 40 - 2, 3:], video.frames[t][2:, : 48 - 3])
    assert (video.labels == 0).all()


def test_object_flow_rotation_and_scale_hand_computed() -> None:
    """A disc of radius 10 centred at (30, 20) turns 90 degrees, then doubles in size, about its centre."""
    background = _pan_scene((0.0, 0.0), frames=3)[0]
    frames = np.zeros((3, 2, 3))
    frames[0, :, :2] = np.eye(2)
    frames[1, :, :2] = [[0.0, -1.0], [1.0, 0.0]]  # rotate +90 degrees: (x, y) -> (-y, x)
    frames[2, :, :2] = [[0.0, -2.0], [2.0, 0.0]]
    frames[:, :, 2] = [30.0, 20.0]
    disc = Layer(texture=np.full((8, 8, 3), 200, np.float32), radii=np.full(1024, 10.0), affines=frames, label=1)
    video = render_video([background, disc], size=(48, 64))
    # pixel (x=35, y=20) is 5 right of the centre; after the turn it is 5 below: flow (-5, +5)
    np.testing.assert_allclose(video.flow[0, 20, 35], [-5.0, 5.0], atol=1e-9)
    # pixel (x=30, y=24) is 4 below; after the turn it is 4 left: flow (-4, -4)
    np.testing.assert_allclose(video.flow[0, 24, 30], [-4.0, -4.0], atol=1e-9)
    # doubling about the centre sends centre + d to centre + 2d: flow = d
    np.testing.assert_allclose(video.flow[1, 17, 26], [-4.0, -3.0], atol=1e-9)
    # background pixels stay put (static camera)
    np.testing.assert_allclose(video.flow[0, 0, 0], [0.0, 0.0], atol=1e-12)
    # the disc itself: pixel centres within radius 10 of (30, 20)
    y, x = np.mgrid[0:48, 0:64]
    np.testing.assert_array_equal(video.labels[0], ((x - 30) ** 2 + (y - 20) ** 2 <= 100).astype(np.uint8))
    np.testing.assert_array_equal(video.labels[2], ((x - 30) ** 2 + (y - 20) ** 2 <= 400).astype(np.uint8))


def test_dataset_flow_carries_object_pixels_to_the_same_object(moderate: Path) -> None:
    """Object pixels of frame t, moved by the stored flow, land on the same object at t+1 wherever nothing that lies
    in front of it covers the destination."""
    record = json.loads((moderate / "toyvos.json").read_text())
    names = record["splits"]["train"] + record["splits"]["val"]
    hits = total = interior_hits = interior_total = 0
    for index, name in enumerate(names[:8]):
        rendered, meta = render_toyvos_video(seed=1, index=index, frames=12, size=(64, 64))
        depth_of_label = {layer["label"]: z for z, layer in enumerate(meta["layers"]) if layer["label"] > 0}
        labels = [read_labels(moderate / "Annotations/480p" / name / f"{t:05d}.png") for t in range(12)]
        np.testing.assert_array_equal(np.stack(labels), rendered.labels)  # the renderer is what was written
        for t in range(11):
            flow = np.load(moderate / "Flow" / name / f"{t:05d}.npy")
            for label, depth in depth_of_label.items():
                ys, xs = np.nonzero(labels[t] == label)
                interior = binary_erosion(labels[t] == label)[ys, xs]
                dx = np.rint(xs + flow[ys, xs, 0]).astype(int)
                dy = np.rint(ys + flow[ys, xs, 1]).astype(int)
                inside = (dx >= 0) & (dx < 64) & (dy >= 0) & (dy < 64)
                # layers are stored bottom-to-top, so a larger layer index is in front
                top_next = rendered.top[t + 1][dy[inside], dx[inside]]
                unhidden = top_next <= depth
                same = labels[t + 1][dy[inside], dx[inside]][unhidden] == label
                hits, total = hits + same.sum(), total + same.size
                interior_hits += same[interior[inside][unhidden]].sum()
                interior_total += interior[inside][unhidden].sum()
    assert total > 5000
    assert hits / total >= 0.9  # boundary pixels may round onto the neighbour
    assert interior_hits / interior_total >= 0.995


# ---------------------------------------------------------------------------------------------------- folder safety
def test_idempotent_and_force(small: Path, tmp_path: Path) -> None:
    root = generate_toyvos(tmp_path / "d", workers=1, **SMALL)
    marker = root / "toyvos.json"
    stamp = marker.stat().st_mtime_ns
    (root / "JPEGImages/480p/toy_train_000/00000.jpg").write_bytes(b"not rewritten")
    assert generate_toyvos(root, workers=1, **SMALL) == root
    assert marker.stat().st_mtime_ns == stamp  # nothing was redone
    assert (root / "JPEGImages/480p/toy_train_000/00000.jpg").read_bytes() == b"not rewritten"

    generate_toyvos(root, workers=1, force=True, **SMALL)
    assert _files(root) == _files(small)  # regenerated from scratch

    with pytest.raises(VOSDataError, match="force"):
        generate_toyvos(root, workers=1, **(SMALL | dict(frames=5)))
    generate_toyvos(root, workers=1, force=True, **(SMALL | dict(frames=5)))
    assert json.loads(marker.read_text())["parameters"]["frames"] == 5
    assert len(list((root / "JPEGImages/480p/toy_val_000").iterdir())) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_refuses_foreign_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for force in (False, True):
        with pytest.raises(VOSDataError, match="not a ToyVOS dataset"):
            generate_toyvos(foreign, workers=1, force=force, **SMALL)
    assert (foreign / "thesis.tex").read_text() == "precious"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(VOSDataError, match="not a folder"):
        generate_toyvos(file, workers=1, **SMALL)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_toyvos(empty, workers=1, **SMALL) / "toyvos.json").is_file()


def test_a_folder_made_meanwhile_is_never_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator used to delete whatever stood at the target when it renamed its staging folder into place."""
    target = tmp_path / "d"
    write_video = toy._write_video

    def user_creates_the_folder(task: tuple) -> tuple[str, dict]:
        target.mkdir(exist_ok=True)
        (target / "notes.txt").write_text("precious")
        return write_video(task)

    monkeypatch.setattr(toy, "_write_video", user_creates_the_folder)
    with pytest.raises(VOSDataError, match="something else was written there while ToyVOS was being generated"):
        generate_toyvos(target, workers=1, **SMALL)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder or lock file left


def test_concurrent_runs_take_turns_and_the_loser_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs with other parameters on one folder both reported success and left one dataset. Now the second
    waits for the first (which holds the lock mid-generation), then refuses the other parameters; a third run with
    the first run's parameters waits too and finds the dataset ready."""
    target = tmp_path / "d"
    first_started, let_first_finish = threading.Event(), threading.Event()
    write_video = toy._write_video

    def paused_in_the_first_run(task: tuple) -> tuple[str, dict]:
        if threading.current_thread().name == "first" and not first_started.is_set():
            first_started.set()
            assert let_first_finish.wait(30)
        return write_video(task)

    monkeypatch.setattr(toy, "_write_video", paused_in_the_first_run)
    outcomes: dict[str, object] = {}

    def run(name: str, **parameters: object) -> None:
        try:
            outcomes[name] = generate_toyvos(target, workers=1, **(SMALL | parameters))
        except Exception as error:  # the test inspects it
            outcomes[name] = error

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert first_started.wait(30)
    others = [
        threading.Thread(target=run, args=("other",), kwargs=dict(frames=5), name="other"),
        threading.Thread(target=run, args=("same",), name="same"),
    ]
    for thread in others:
        thread.start()
    time.sleep(0.5)  # both are now waiting for the lock
    assert not outcomes
    let_first_finish.set()
    for thread in [first, *others]:
        thread.join(60)
    assert outcomes["first"] == target and outcomes["same"] == target
    assert isinstance(outcomes["other"], VOSDataError) and "not {" in str(outcomes["other"])
    assert json.loads((target / "toyvos.json").read_text())["parameters"]["frames"] == SMALL["frames"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("videos", 1),
        ("frames", 2),
        ("size", (31, 64)),
        ("size", (64,)),
        ("size", 64),
        ("seed", -1),
        ("workers", 0),
        ("videos", 2.5),
    ],
)
def test_bad_arguments(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        generate_toyvos(tmp_path / "d", progress=False, **{argument: value})
    assert not (tmp_path / "d").exists()


# -------------------------------------------------------------------------------------------------------------- CLI
def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--videos", "2", "--frames", "3", "--size", "32", "40", "--workers", "1"]
    assert main(args + ["--no-progress"]) == 0
    assert _sequences(out) == {"train": ["toy_train_000"], "val": ["toy_val_000"]}
    with Image.open(out / "JPEGImages/480p/toy_val_000/00002.jpg") as image:
        assert image.size == (40, 32)
    assert main(args + ["--no-progress"]) == 0  # idempotent
    capsys.readouterr()

    assert main(["--out", str(tmp_path / "bad"), "--frames", "2"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 2 and error[0].startswith("voszoo-toyvos: error: ") and "frames" in error[0]
    assert error[1].startswith("hint: ")
    assert main(["--out", str(out), "--videos", "3", "--frames", "3", "--size", "32", "40"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--videos", "many"]) != 0
    assert main([]) != 0  # --out is required
    assert "--out" in capsys.readouterr().err


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voszoo.data.toy", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "--videos" in result.stdout and "--force" in result.stdout


# ------------------------------------------------------------------------------------------------------- statistics
def test_scene_phenomena_occur(moderate: Path) -> None:
    """Distractors, occlusions and objects leaving then re-entering the view each happen somewhere."""
    record = json.loads((moderate / "toyvos.json").read_text())
    distractors = occlusions = excursions = 0
    for name in record["splits"]["train"] + record["splits"]["val"]:
        meta = json.loads((moderate / "Meta" / f"{name}.json").read_text())
        labels = np.stack([read_labels(moderate / "Annotations/480p" / name / f"{t:05d}.png") for t in range(12)])
        for layer in meta["layers"][1:]:
            visible, in_view = np.asarray(layer["visible_area"]), np.asarray(layer["in_view_area"])
            assert (visible <= in_view).all()
            if layer["role"] == "distractor":
                assert layer["label"] == 0 and 1 <= layer["look_alike_of"] <= meta["objects"]
                distractors += bool(visible.max() > 0)
                continue
            # the recorded visible area is what the label files show
            counts = (labels == layer["label"]).sum(axis=(1, 2))
            np.testing.assert_array_equal(visible, counts)
            # occlusion: visible area drops between frames while the whole mask stays in view and does not shrink
            drops = (visible[1:] < 0.8 * visible[:-1]) & (in_view[1:] >= in_view[:-1] * 0.95) & (in_view[1:] > 0)
            occlusions += bool(drops.any())
            # leaving and coming back: absent from the labels (and wholly out of view) between visible frames
            gone = np.flatnonzero((counts == 0) & (in_view == 0))
            excursions += bool(gone.size and counts[: gone[0]].any() and counts[gone[-1] :].any())
    assert distractors >= 3 and occlusions >= 3 and excursions >= 3, (distractors, occlusions, excursions)
