"""benchmarks/overfit_batch.py: the accuracy shares it reports, the batch it picks, and a 2-step run."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

_SPEC = importlib.util.spec_from_file_location(
    "overfit_batch", Path(__file__).parents[1] / "benchmarks" / "overfit_batch.py"
)
overfit_batch = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(overfit_batch)


def test_identity_stats_counts_found_right_and_swapped_pixels() -> None:
    labels = torch.tensor([[1, 1, 2, 2], [0, 0, 0, 255]]).view(1, 1, 2, 4)
    pred = torch.tensor([[1, 2, 2, 0], [1, 0, 0, 2]]).view(1, 1, 2, 4)
    logits = F.one_hot(pred, 3).permute(0, 1, 4, 2, 3).float()  # (B, T, N+1, H, W)
    stats = overfit_batch.identity_stats(logits, labels)
    # truth: 4 object pixels; found (void left out): 4 pixels, 3 of them on objects -> IoU 3 / 5
    assert stats["fg_iou"] == pytest.approx(3 / 5)
    assert stats["right_id"] == pytest.approx(2 / 4)
    assert stats["wrong_id"] == pytest.approx(1 / 4)


def test_pick_batch_takes_multi_object_clips_and_names_a_shortfall() -> None:
    data = [{"num_objects": n} for n in (1, 2, 1, 3)]
    assert [s["num_objects"] for s in overfit_batch.pick_batch(data, 2, min_objects=2)] == [2, 3]
    with pytest.raises(ValueError, match="--min-objects 4"):
        overfit_batch.pick_batch(data, 1, min_objects=4)


def test_two_steps_on_a_tiny_toyvos_write_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    overrides = [
        "model=stm_r18",
        "trainer.batch_size=2",
        "data.train.transform.size=[64,64]",
        "data.generate.videos=5",
        "data.generate.frames=5",
        "data.generate.size=[64,64]",
        f"data.root={tmp_path / 'toy'}",
    ]
    code = overfit_batch.main(["--steps", "2", "--every", "1", "--min-objects", "1", "--json", str(out), *overrides])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r[mode][k] <= 1.0 for r in rows for mode in ("train", "eval") for k in r[mode])
