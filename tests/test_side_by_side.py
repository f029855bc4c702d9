"""benchmarks/side_by_side_common.py: the pieces of the side-by-side scripts that do not need an official checkout
(size parsing, logit comparison, module stubs, the shared model input, the Markdown table, the results file)."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "side_by_side_common", Path(__file__).parents[1] / "benchmarks" / "side_by_side_common.py"
)
common = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(common)


def test_parse_size_accepts_h_x_w_and_rejects_the_rest():
    assert common.parse_size("96x160") == (96, 160)
    assert common.parse_size("480X854") == (480, 854)
    for bad in ("96", "96x", "x160", "96*160", "16x160"):
        with pytest.raises(argparse.ArgumentTypeError, match="size"):
            common.parse_size(bad)


def test_compare_logits_hand_computed():
    official = torch.zeros(3, 2, 2)
    official[1, 0, 0] = 4.0  # largest |official logit| 4; argmax: channel 1 at (0, 0), else channel 0
    voszoo = official.clone()
    voszoo[2, 1, 1] = 0.5  # one pixel differs by 0.5 and its argmax flips to channel 2
    row = common.compare_logits(official, voszoo)
    assert row["max_abs_diff"] == pytest.approx(0.5)
    assert row["logit_scale"] == pytest.approx(4.0)
    assert row["rel_diff"] == pytest.approx(0.125)
    assert row["label_agreement"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shapes differ"):
        common.compare_logits(official, voszoo[:2])


def test_compare_video_reads_both_sides(tmp_path):
    for side, value in (("official", 1.0), ("voszoo", 1.25)):
        (tmp_path / side).mkdir()
        for t in (1, 2):
            torch.save(torch.full((2, 3, 3), value * t), tmp_path / side / f"logits_{t:04d}.pt")
    rows = common.compare_video(tmp_path / "official", tmp_path / "voszoo", 3)
    assert [r["frame"] for r in rows] == [1, 2]
    assert [r["max_abs_diff"] for r in rows] == pytest.approx([0.25, 0.5])
    assert [r["rel_diff"] for r in rows] == pytest.approx([0.25, 0.25])


def test_stub_missing_modules_only_stubs_what_is_missing():
    names = ["voszoo_sbs_missing", "voszoo_sbs_missing.sub", "json"]
    try:
        stubbed = common.stub_missing_modules(names)
        assert stubbed == ["voszoo_sbs_missing", "voszoo_sbs_missing.sub"]
        import voszoo_sbs_missing.sub  # noqa: F401  (importable now)

        assert sys.modules["voszoo_sbs_missing"].sub is sys.modules["voszoo_sbs_missing.sub"]
        assert hasattr(sys.modules["json"], "dumps")  # the real module, untouched
    finally:
        for name in names[:2]:
            sys.modules.pop(name, None)


def test_model_input_pads_right_bottom_and_raw_undoes_normalisation():
    inputs = common.ModelInput((40, 50), stride=16, device=torch.device("cpu"))
    assert inputs.padded == (48, 64)
    image = np.full((40, 50, 3), 255, dtype=np.uint8)
    image[0, 0] = (0, 128, 255)
    frame, raw = inputs.frame(image), inputs.raw(image)
    assert frame.shape == raw.shape == (1, 3, 48, 64)
    # white normalises to (1 - mean) / std; padding is 0 after normalisation, i.e. the mean colour in [0, 1]
    assert frame[0, 0, 5, 5].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert frame[0, :, 45, 60].abs().max().item() == 0.0
    assert raw[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=1e-6)
    assert raw[0, :, 45, 60].tolist() == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[10:20, 5:9] = 3
    given = inputs.labels(labels)
    assert given.shape == (1, 1, 48, 64)
    assert torch.equal(inputs.crop(given)[0, 0], torch.from_numpy(labels).float())
    assert given[0, 0, 40:].abs().sum() == 0 and given[0, 0, :, 50:].abs().sum() == 0


def _row(model, **extra):
    side = {"fps": 2.0, "peak_mem_mb": 100.0}
    return (
        {"model": model, "status": "ok", "max_abs_diff": 2e-6, "max_rel_diff": 1e-6, "agree": True}
        | {
            "fps_ratio": 1.5,
            "official": side,
            "voszoo": {"fps": 3.0, "peak_mem_mb": 50.0},
        }
        | extra
    )


def test_markdown_table_and_merge(tmp_path):
    rows = [_row("aot_t"), {"model": "aot_l", "status": "failed", "error": "boom\ntraceback"}]
    table = common.markdown_table(rows).splitlines()
    assert table[2] == "| aot_t | 2.00e-06 | 1.00e-06 | yes | 2.00 | 3.00 | 1.50 | 100 | 50 |"
    assert table[3].startswith("| aot_l | failed: boom |")
    out = tmp_path / "results.json"
    common.merge_results(out, rows)
    common.merge_results(out, [_row("aot_t", fps_ratio=9.0)])
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["aot_l", "aot_t"]
    assert results["aot_t"]["fps_ratio"] == 9.0 and results["aot_l"]["status"] == "failed"


def test_check_arguments_names_the_argument():
    args = argparse.Namespace(frames=4, warmup=1, tolerance=1e-4, threads=None, device="cpu")
    common.check_arguments(args)
    for key, value, message in (
        ("frames", 1, "--frames"),
        ("warmup", 3, "--warmup"),
        ("tolerance", 0.0, "--tolerance"),
        ("device", "tpu", "--device"),
    ):
        bad = argparse.Namespace(**(vars(args) | {key: value}))
        with pytest.raises(ValueError, match=message):
            common.check_arguments(bad)


def test_protocol_mode_png_identity_and_label_agreement(tmp_path):
    labels = np.zeros((6, 8), np.uint8)
    labels[2:4, 3:7] = 1
    other = labels.copy()
    other[0, 0] = 1  # one pixel of 48 differs
    for folder, frame1 in (("a", labels), ("b", other)):
        common.save_frame_output(tmp_path / folder, 0, logits=None, labels=labels)
        common.save_frame_output(tmp_path / folder, 1, logits=torch.zeros(2, 6, 8), labels=frame1)
    assert common._pngs_identical(tmp_path / "a" / "labels_0000.png", tmp_path / "b" / "labels_0000.png") == {
        "png_identical": True,
        "labels_identical": True,
    }
    assert not common._pngs_identical(tmp_path / "a" / "labels_0001.png", tmp_path / "b" / "labels_0001.png")[
        "labels_identical"
    ]
    assert common._label_agreement(tmp_path / "a", tmp_path / "b") == pytest.approx(47 / 48)  # frame 0 not counted


def test_protocol_table():
    jf = {key: {"J": 0.5, "F": 0.7, "J&F": 0.6} for key in ("official", "voszoo_official", "voszoo_voszoo")}
    frame = {"png_identical": True}
    row = {
        "model": "stm",
        "status": "ok",
        "official_model_input": [480, 864],
        "voszoo_model_input": [480, 864],
        "max_abs_diff": 2e-5,
        "max_rel_diff": 1e-5,
        "jf_mean": jf,
        "protocols_label_agreement": 0.99,
        "per_sequence": {"a": {"per_frame": [frame, {"png_identical": False}]}, "b": {"per_frame": [frame]}},
    }
    table = common.protocol_table([row, {"model": "aot_t", "status": "failed", "error": "boom"}]).splitlines()
    assert table[2] == "| stm | 480x864 | 480x864 | 3 | 2.00e-05 | 1.00e-05 | 2/3 | 0.6000 | 0.6000 | 0.6000 | 0.9900 |"
    assert table[3].startswith("| aot_t | failed: boom |") and table[3].count("|") == table[2].count("|")
