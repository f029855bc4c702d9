"""benchmarks/bench_denormals.py end to end at a tiny size: the read part, the presets part, and resuming."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling bench_inference
    try:
        spec = importlib.util.spec_from_file_location("bench_denormals", BENCHMARKS / "bench_denormals.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_read_and_presets_are_written_and_a_second_run_resumes(bench, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "denormals.json"
    argv = ["--read-model", "stm_r18", "--read-size", "64x64", "--memory-frames", "1,2", "--repeats", "1"]
    argv += ["--models", "stm_r18", "--sizes", "64x64", "--frames", "1", "--warmup", "0", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["memory_frames"] for row in result["read"]] == [1, 2]
    assert result["block_overhead_ms"]["median"] > 0
    for row in result["read"]:
        assert row["memory_key"][2] == row["memory_frames"] and 0.0 <= row["subnormal_fraction"] <= 1.0
        assert row["seconds_flush_on"] > 0 and row["seconds_flush_off"] > 0
        assert row["max_abs_difference"] <= 1e-6
    rows = {row["flush_denormal_setting"]: row for row in result["presets"]}
    assert set(rows) == {"on", "off"} and all(row["status"] == "ok" for row in rows.values())
    assert rows["on"]["flush_denormal"] is True and rows["off"]["flush_denormal"] is False
    assert "| stm_r18 | 64x64 |" in capsys.readouterr().out

    def must_not_run(*args, **kwargs):
        raise AssertionError("a run already in the JSON was repeated")

    monkeypatch.setattr(bench.bench_inference, "run_isolated", must_not_run)
    assert bench.main(["--parts", "presets", "--models", "stm_r18", "--sizes", "64x64", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["presets"] == result["presets"]


def test_bad_arguments_are_named(bench, tmp_path, capsys) -> None:
    assert bench.main(["--parts", "reed", "--out", str(tmp_path / "x.json")]) == 2
    assert "--parts" in capsys.readouterr().err
    assert bench.main(["--memory-frames", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--memory-frames" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--models: unknown"):
        bench.main(["--parts", "presets", "--models", "nope", "--out", str(tmp_path / "x.json")])
