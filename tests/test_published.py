"""voszoo.published.load_published: the shipped voszoo/resources/published.yaml loads (also as the default);
malformed rows fail by name."""

from pathlib import Path

import pytest

from voszoo.data.io import VOSDataError
from voszoo.published import load_published, shipped_published_file

SHIPPED = Path(__file__).parents[1] / "voszoo" / "resources" / "published.yaml"

GOOD_ROW = """\
  - paper: X (2020)
    table: Table 1
    method: X
    variant: X-S
    dataset: DAVIS 2017
    split: val
    backbone: ResNet-50
    static_pretraining: true
    youtube_vos: false
"""


def write(tmp_path, text):
    path = tmp_path / "published.yaml"
    path.write_text(text)
    return path


def test_shipped_file_loads_with_the_papers_numbers():
    rows = load_published(SHIPPED)
    assert {row["method"] for row in rows} == {"BATMAN", "AOT", "MUNet", "SITVOS", "MGA"}
    # spot checks against the paper text (AOT Table 1b; SITVOS Table 1; BATMAN Table 2)
    aot_t = [r for r in rows if r["variant"] == "AOT-T" and r["dataset"] == "DAVIS 2017" and r["split"] == "val"]
    assert len(aot_t) == 1 and (aot_t[0]["J&F"], aot_t[0]["J"], aot_t[0]["F"], aot_t[0]["fps"]) == (
        79.9,
        77.4,
        82.3,
        51.4,
    )
    sitvos = [r for r in rows if r["method"] == "SITVOS" and r["dataset"] == "DAVIS 2017"]
    assert sitvos[0]["J&F"] == 83.5 and sitvos[0]["gpu"] == "RTX 2080Ti"
    batman = [r for r in rows if r["method"] == "BATMAN" and r["split"] == "test-dev"]
    assert batman[0]["J&F"] == 82.2 and batman[0]["youtube_vos"] is True
    assert all(r["table"].startswith("Table ") for r in rows)
    assert shipped_published_file() == SHIPPED and load_published() == rows  # the package copy is the default


def test_valid_minimal_row_gets_optional_keys(tmp_path):
    rows = load_published(write(tmp_path, "results:\n" + GOOD_ROW + "    J&F: 80.0\n    J: 79.0\n    F: 81.0\n"))
    assert rows[0]["J&F"] == 80.0 and rows[0]["fps"] is None and rows[0]["J_seen"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", r"row 0 \(X / X-S\): missing required key\(s\) J&F"),
        ("    J&F: 180.0\n", r"row 0 \(X / X-S\): 'J&F' must be a number in \[0, 100\]"),
        ("    J&F: '80'\n", r"'J&F' must be a number"),
        ("    J&F: 80.0\n    fps: -1\n", r"'fps' must be a positive number"),
        ("    J&F: 80.0\n    J: 70.0\n    F: 80.0\n", r"'J&F' = 80.0 is not the mean of J, F \(75.00\)"),
        ("    J&F: 80.0\n    score: 1\n", r"unknown key\(s\) score"),
    ],
)
def test_malformed_rows_are_rejected_by_name(tmp_path, extra, message):
    with pytest.raises(VOSDataError, match=message):
        load_published(write(tmp_path, "results:\n" + GOOD_ROW + extra))


def test_bad_dataset_split_flag_and_file(tmp_path):
    row = GOOD_ROW + "    J&F: 80.0\n"
    with pytest.raises(VOSDataError, match="unknown dataset 'DAVIS 2018'; valid: DAVIS 2016"):
        load_published(write(tmp_path, "results:\n" + row.replace("DAVIS 2017", "DAVIS 2018")))
    with pytest.raises(VOSDataError, match="unknown split 'train'"):
        load_published(write(tmp_path, "results:\n" + row.replace("split: val", "split: train")))
    with pytest.raises(VOSDataError, match="'youtube_vos' must be true, false or null"):
        load_published(write(tmp_path, "results:\n" + row.replace("youtube_vos: false", "youtube_vos: maybe")))
    with pytest.raises(VOSDataError, match="list under the key 'results'"):
        load_published(write(tmp_path, "rows: []\n"))
    with pytest.raises(VOSDataError, match="does not exist"):
        load_published(tmp_path / "nope.yaml")
