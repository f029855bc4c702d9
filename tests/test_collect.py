"""voszoo-collect (voszoo.collect) on a synthetic Hydra multirun folder: rows, Markdown, CSV, JSON, failed jobs,
errors; the benchmarks/collect.py shim."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from voszoo import collect
from voszoo.data.io import VOSDataError

ROOT = Path(__file__).resolve().parents[1]


def make_job(root: Path, num: str, overrides: list[str], metrics: dict | None) -> None:
    job = root / num
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    base = ["model=stm_r18", "trainer=quick"]
    make_job(root, "0", [*base, "optim.lr=0.0001"], {"J&F": 0.5, "J": 0.4, "F": 0.6, "fps": 12.5, "steps": 2})
    make_job(root, "1", [*base, "optim.lr=0.0003"], None)  # failed job
    make_job(
        root,
        "10",
        [*base, "optim.lr=0.001", "+extra.flag=true"],
        {"J&F": 0.75, "J": 0.7, "F": 0.8, "fps": 10.0, "steps": 2, "train_loss": 0.25, "model": "stm_r18"},
    )
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_rows_in_natural_order_with_overrides_and_metrics(sweep):
    rows = collect.collect(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "10"]
    assert list(rows[0]) == [
        "job",
        "status",
        "model",
        "trainer",
        "optim.lr",
        "extra.flag",
        "J&F",
        "J",
        "F",
        "fps",
        "steps",
        "train_loss",
    ]
    assert rows[0]["optim.lr"] == "0.0001" and rows[0]["extra.flag"] is None and rows[0]["J&F"] == 0.5
    assert rows[0]["train_loss"] is None and rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("failed: no metrics.json") and rows[1]["J&F"] is None
    assert rows[2]["extra.flag"] == "true" and rows[2]["train_loss"] == 0.25


def test_varying_only_and_sort(sweep):
    rows = collect.collect(sweep, varying_only=True, sort="J&F")
    assert [r["job"] for r in rows] == ["10", "0", "1"]  # failed job (no J&F) last
    assert "model" not in rows[0] and "trainer" not in rows[0] and "optim.lr" in rows[0]
    by_lr = collect.collect(sweep, sort="optim.lr")
    assert [r["optim.lr"] for r in by_lr] == ["0.001", "0.0003", "0.0001"]
    with pytest.raises(ValueError, match="not a column"):
        collect.collect(sweep, sort="nope")


def test_cli_prints_markdown_and_writes_csv_json(sweep, tmp_path, capsys):
    out_csv, out_json = tmp_path / "out" / "r.csv", tmp_path / "out" / "r.json"
    assert collect.main([str(sweep), "--varying-only", "--csv", str(out_csv), "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "| job | status | optim.lr | extra.flag | J&F | J | F | fps | steps | train_loss |"
    assert lines[2] == "| 0 | ok | 0.0001 | - | 0.5 | 0.4 | 0.6 | 12.5 | 2 | - |"
    assert lines[4] == "| 10 | ok | 0.001 | true | 0.75 | 0.7 | 0.8 | 10 | 2 | 0.25 |"
    assert any(line.startswith("- job 1: failed: no metrics.json") for line in lines)
    assert "1 of 3 jobs have no metrics" in captured.err
    with out_csv.open() as f:
        table = list(csv.DictReader(f))
    assert [r["job"] for r in table] == ["0", "1", "10"]
    assert table[0]["J&F"] == "0.5" and table[1]["J&F"] == "" and table[2]["extra.flag"] == "true"
    data = json.loads(out_json.read_text())
    assert data[2]["J&F"] == 0.75 and data[1]["J&F"] is None and data[0]["optim.lr"] == "0.0001"


def test_cli_default_outputs_in_sweep_dir(sweep, capsys):
    assert collect.main([str(sweep)]) == 0
    assert (sweep / "results.csv").is_file() and len(json.loads((sweep / "results.json").read_text())) == 3


def test_folder_without_jobs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(VOSDataError, match="no Hydra jobs under .*overrides.yaml"):
        collect.collect(tmp_path / "empty")
    assert collect.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collect: no Hydra jobs") and err.count("\n") == 1
    assert collect.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreadable_metrics_and_bad_overrides(tmp_path):
    make_job(tmp_path, "0", ["a=1"], None)
    (tmp_path / "0" / "metrics.json").write_text("{not json")
    assert collect.collect(tmp_path)[0]["status"].startswith("failed: unreadable metrics.json")
    make_job(tmp_path, "1", ["novalue"], {})
    with pytest.raises(VOSDataError, match="'novalue' does not have the form key=value"):
        collect.collect(tmp_path)


def test_parse_overrides():
    parsed = collect.parse_overrides(["model=aot_t", "+a.b=[1,2]", "++c=x=y", "~d"])
    assert parsed == {"model": "aot_t", "a.b": "[1,2]", "c": "x=y", "~d": ""}


def test_benchmarks_collect_py_is_the_same_command(sweep):
    """The old ``python benchmarks/collect.py`` keeps working as a shim of voszoo-collect."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "collect.py"), str(sweep), "--no-write", "--sort", "J&F"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == collect.to_markdown(collect.collect(sweep, sort="J&F"))
