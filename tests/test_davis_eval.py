"""The DAVIS 2017 protocol end to end: the official evaluator's outputs on the reference fixture, and the errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from voszoo.data.io import VOSDataError, read_labels, write_labels
from voszoo.evaluation.cli import main
from voszoo.evaluation.davis import evaluate_folders, evaluate_sequence

FIXTURE = Path(__file__).parent / "data" / "jf_fixture"
CSV_NAMES = ("global_results-val.csv", "per-sequence_results-val.csv")


def official_full_precision() -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(global row, {object: row}) of official_full_precision.csv (two CSV tables separated by a blank line)."""
    global_part, object_part = (FIXTURE / "official_full_precision.csv").read_text().strip().split("\n\n")
    global_row = {k: float(v) for k, v in next(csv.DictReader(global_part.splitlines())).items()}
    objects = {
        row.pop("Sequence"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(object_part.splitlines())
    }
    return global_row, objects


def read_sequence(folder: Path) -> np.ndarray:
    return np.stack([read_labels(path) for path in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def fixture_result():
    return evaluate_folders(FIXTURE / "gt", FIXTURE / "pred", workers=1, progress=False)


def test_csvs_are_byte_identical_to_the_official(fixture_result, tmp_path: Path) -> None:
    paths = fixture_result.write_csvs(tmp_path)
    assert [p.name for p in paths] == list(CSV_NAMES)
    for name in CSV_NAMES:
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name


def test_every_number_matches_the_official_to_1e9(fixture_result) -> None:
    global_row, objects = official_full_precision()
    ours_global = fixture_result.global_table()
    assert list(ours_global) == list(global_row)
    for key, value in global_row.items():
        assert ours_global[key] == pytest.approx(value, abs=1e-9), key
    rows = {row["Sequence"]: row for row in fixture_result.per_object_table()}
    assert list(rows) == list(objects)
    for name, expected in objects.items():
        for key, value in expected.items():
            assert rows[name][key] == pytest.approx(value, abs=1e-9), (name, key)


def test_in_memory_api_equals_folder_evaluation(fixture_result) -> None:
    for sequence in fixture_result.sequences:
        gt = read_sequence(FIXTURE / "gt" / sequence.name)
        pred = read_sequence(FIXTURE / "pred" / sequence.name)
        result = evaluate_sequence(gt, pred, name=sequence.name)
        assert result.frames == sequence.frames == tuple(f"{i:05d}" for i in range(1, gt.shape[0] - 1))
        assert np.array_equal(result.j, sequence.j) and np.array_equal(result.f, sequence.f)
        assert result.j.shape == (2, gt.shape[0] - 2)


def test_cli_with_a_process_pool_writes_official_csvs_and_full_json(tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(FIXTURE / "pred", pred)
    assert main(["--gt", str(FIXTURE / "gt"), "--pred", str(pred), "--workers", "2"]) == 0
    for name in CSV_NAMES:  # default --out is the prediction folder, as the official code
        assert (pred / name).read_bytes() == (FIXTURE / name).read_bytes()
    document = json.loads((pred / "results.json").read_text())
    global_row, objects = official_full_precision()
    for key, value in global_row.items():
        assert document["global"][key] == pytest.approx(value, abs=1e-9)
    alpha = document["sequences"][0]
    assert alpha["name"] == "alpha" and alpha["frames"] == [f"{i:05d}" for i in range(1, 9)]
    first = alpha["objects"][0]
    assert first["name"] == "alpha_1" and len(first["J"]) == len(first["F"]) == 8
    assert np.mean(first["J"]) == pytest.approx(objects["alpha_1"]["J-Mean"], abs=1e-9)
    assert np.mean(first["F"]) == pytest.approx(objects["alpha_1"]["F-Mean"], abs=1e-9)
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed and "charlie_2" in printed


def test_cli_sequences_subset_and_out(tmp_path: Path) -> None:
    code = main(["--gt", str(FIXTURE / "gt"), "--pred", str(FIXTURE / "pred"), "--out", str(tmp_path)]
                + ["--sequences", "charlie", "alpha", "--workers", "1", "--quiet"])  # fmt: skip
    assert code == 0
    lines = (tmp_path / CSV_NAMES[1]).read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["Sequence", "charlie_1", "charlie_2", "alpha_1", "alpha_2"]


# ---------------------------------------------------------------------------------------------------------------------
# Small synthetic sequences: protocol details and errors.


def make_dataset(root: Path, gt: np.ndarray, pred: np.ndarray, name: str = "seq") -> tuple[Path, Path]:
    for t in range(gt.shape[0]):
        write_labels(root / "gt" / name / f"{t:05d}.png", gt[t])
        write_labels(root / "pred" / name / f"{t:05d}.png", pred[t])
    return root / "gt", root / "pred"


def two_object_sequence(frames: int = 5) -> np.ndarray:
    gt = np.zeros((frames, 12, 16), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 7:10, 9:14] = 2
    return gt


def test_label_above_object_count_is_an_error_naming_sequence_frame_label(tmp_path: Path, capsys) -> None:
    gt = two_object_sequence()
    pred = gt.copy()
    pred[3, 0, 0] = 3
    gt_dir, pred_dir = make_dataset(tmp_path, gt, pred)
    with pytest.raises(VOSDataError, match=r"00003\.png.*sequence 'seq', frame '00003'.*predicted label 3.*2 object"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)
    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("voszoo-score: error:") and "predicted label 3" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(VOSDataError, match="frame '00002'.*predicted label 255"):
        bad = gt.copy()
        bad[2, 0, 0] = 255
        evaluate_sequence(gt, bad)
    negative = gt.astype(np.int64)
    negative[1, 0, 0] = -1
    with pytest.raises(VOSDataError, match="frame '00001'.*predicted label -1"):
        evaluate_sequence(gt, negative)


def test_first_and_last_frames_are_not_scored_and_void_is_background(tmp_path: Path) -> None:
    gt = two_object_sequence()
    gt[:, 0, :] = 255  # void band: background for both J and F
    pred = np.where(gt == 255, 0, gt).astype(np.uint8)
    pred[0] = 9  # first and last predictions are never read: a label above K there is no error
    pred[-1] = 9
    result = evaluate_sequence(gt, pred)
    assert result.frames == ("00001", "00002", "00003")
    assert np.array_equal(result.j, np.ones((2, 3))) and np.array_equal(result.f, np.ones((2, 3)))


def test_missing_object_is_empty_and_later_objects_are_ignored() -> None:
    gt = two_object_sequence()
    gt[2:, 0:2, 0:3] = 3  # object 3 appears after the first frame: K stays 2
    pred = np.where(gt == 2, 0, gt).astype(np.uint8)  # object 2 never predicted
    pred[pred == 3] = 0
    result = evaluate_sequence(gt, pred)
    assert result.num_objects == 2
    assert np.array_equal(result.j[1], np.zeros(3)) and np.array_equal(result.f[1], np.zeros(3))


def test_missing_prediction_files_are_listed_before_scoring(tmp_path: Path) -> None:
    gt = two_object_sequence()
    gt_dir, pred_dir = make_dataset(tmp_path, gt, gt.copy())
    make_dataset(tmp_path, gt, gt.copy(), name="other")
    (pred_dir / "seq" / "00002.png").unlink()
    (pred_dir / "seq" / "00004.png").unlink()  # the last frame is not needed
    shutil.rmtree(pred_dir / "other")
    with pytest.raises(VOSDataError, match=r"2 prediction folder\(s\)/file\(s\) missing: .*other.*seq/00002\.png"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)


def test_prediction_size_mismatch_is_an_error(tmp_path: Path) -> None:
    gt = two_object_sequence()
    gt_dir, pred_dir = make_dataset(tmp_path, gt, gt.copy())
    write_labels(pred_dir / "seq" / "00002.png", np.zeros((12, 15), dtype=np.uint8))
    with pytest.raises(VOSDataError, match=r"00002\.png.*prediction is 15x12 \(WxH\) but the ground truth is 16x12"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)


def test_too_short_sequence_and_no_object_are_errors(tmp_path: Path) -> None:
    gt = two_object_sequence(frames=2)
    gt_dir, pred_dir = make_dataset(tmp_path, gt, gt.copy())
    with pytest.raises(VOSDataError, match="at least 3"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)
    with pytest.raises(VOSDataError, match="no object"):
        evaluate_sequence(np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4), np.uint8))


def test_unknown_sequence_is_an_error(tmp_path: Path) -> None:
    gt = two_object_sequence()
    gt_dir, pred_dir = make_dataset(tmp_path, gt, gt.copy())
    with pytest.raises(VOSDataError, match="ground-truth sequence folder.*nope"):
        evaluate_folders(gt_dir, pred_dir, sequences=["seq", "nope"], workers=1, progress=False)


def test_davis2016_binary_mode(tmp_path: Path) -> None:
    # DAVIS 2016 ground truth is 0/255; any non-zero prediction is the object. Without the flag 255 would be void.
    mask = two_object_sequence() > 0
    gt = (mask * 255).astype(np.uint8)
    pred = (np.roll(mask, 1, axis=2) * np.uint8(7)).astype(np.uint8)
    gt_dir, pred_dir = make_dataset(tmp_path, gt, pred)
    result = evaluate_folders(gt_dir, pred_dir, davis2016=True, workers=1, progress=False)
    reference = evaluate_sequence(mask.astype(np.uint8), np.roll(mask, 1, axis=2).astype(np.uint8))
    assert np.array_equal(result.sequences[0].j, reference.j) and np.array_equal(result.sequences[0].f, reference.f)
    assert 0 < result.global_table()["J-Mean"] < 1
    with pytest.raises(VOSDataError, match="no object"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)


def test_decay_of_a_300_frame_sequence_by_hand() -> None:
    # 302 frames, 300 scored: the prediction equals the ground truth on the first 150 scored frames (J = F = 1) and is
    # empty on the last 150 (J = F = 0). Mean 0.5, recall 0.5; the first decay bin is v[0:76] (all 1) and the last
    # v[224:300] (all 0): decay 1. (The official code's uint8 bin indices wrap at 256 and give NaN here.)
    gt = np.zeros((302, 6, 6), dtype=np.uint8)
    gt[:, 2:4, 2:4] = 1
    pred = gt.copy()
    pred[151:] = 0
    result = evaluate_sequence(gt, pred)
    stats = result.statistics()[0]
    assert stats == {"J-Mean": 0.5, "J-Recall": 0.5, "J-Decay": 1.0, "F-Mean": 0.5, "F-Recall": 0.5, "F-Decay": 1.0}


def test_module_entry_point_in_a_fresh_process(tmp_path: Path) -> None:
    # A fresh interpreter has one thread, so the pool forks (the path the CLI takes outside pytest).
    import subprocess
    import sys

    command = [sys.executable, "-m", "voszoo.evaluation.cli", "--gt", str(FIXTURE / "gt"), "--pred"]
    command += [str(FIXTURE / "pred"), "--out", str(tmp_path), "--workers", "2", "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for name in CSV_NAMES:
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes()
    bad = subprocess.run(command[:6] + [str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "prediction folder not found" in bad.stderr


def test_greyscale_and_bilevel_predictions_are_label_maps(tmp_path: Path) -> None:
    from PIL import Image

    gt = (two_object_sequence() == 2).astype(np.uint8)  # one object, labels 0/1: a bilevel PNG can hold it
    gt_dir, pred_dir = make_dataset(tmp_path, gt, gt.copy())
    Image.fromarray(gt[1]).save(pred_dir / "seq" / "00001.png")  # mode "L"
    Image.fromarray(gt[2].astype(bool)).save(pred_dir / "seq" / "00002.png")  # mode "1"
    assert Image.open(pred_dir / "seq" / "00002.png").mode == "1"
    result = evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)
    assert np.array_equal(result.sequences[0].j, np.ones((1, 3)))
    assert np.array_equal(result.sequences[0].f, np.ones((1, 3)))
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(pred_dir / "seq" / "00003.png")  # RGB: refused
    with pytest.raises(VOSDataError, match=r"00003\.png.*mode 'RGB'"):
        evaluate_folders(gt_dir, pred_dir, workers=1, progress=False)


def test_cropped_folder_path_equals_naive_whole_frame_scores(tmp_path: Path) -> None:
    # Random multi-object label maps with objects on the image border, void and specks: the folder path (PIL crops to
    # the non-zero bounding box) must give the naive whole-frame J and F of every object and frame.
    from test_metrics import naive_f

    rng = np.random.default_rng(3)
    frames, height, width = 6, 21, 34
    gt = np.zeros((frames, height, width), dtype=np.uint8)
    pred = np.zeros_like(gt)
    for labels in (gt, pred):
        for t in range(frames):
            for k in (1, 2, 3):
                y, x = rng.integers(-3, height), rng.integers(-3, width)
                labels[t, max(y, 0) : y + rng.integers(1, 9), max(x, 0) : x + rng.integers(1, 12)] = k
            labels[t][rng.random((height, width)) < 0.02] = rng.integers(0, 4)
    gt[0, 0, 0] = 3  # K = 3 whatever the random draw
    gt[:, -2:, 5:9] = 255
    gt_dir, pred_dir = make_dataset(tmp_path, gt, pred)
    result = evaluate_folders(gt_dir, pred_dir, workers=1, progress=False).sequences[0]
    radius = 1  # ceil(0.008 * sqrt(21^2 + 34^2)) = ceil(0.32)
    for k in (1, 2, 3):
        for t in range(1, frames - 1):
            g, p = gt[t] == k, pred[t] == k
            union = np.count_nonzero(g | p)
            assert result.j[k - 1, t - 1] == (1.0 if union == 0 else np.count_nonzero(g & p) / union)
            assert result.f[k - 1, t - 1] == naive_f(p, g, radius)
