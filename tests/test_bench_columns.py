"""The leaderboard's cost columns (voszoo.profiling) against hand-computed parameters and MACs, and the board's
published rows, table, plot and failure rule (voszoo.benchmark)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tiny_models import AffinityModel
from torch import Tensor, nn

import voszoo
from voszoo.benchmark import COLUMNS, MEASURED, failed_rows, format_markdown, published_rows, write_plot
from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel
from voszoo.profiling import count_macs, machine_info, main, profile_model


class OneConv(VOSModel):
    """encode = one 3x3 convolution; segment and memorize do no multiply-accumulate at all."""

    stride = 8
    multi_object = "per_object"

    def __init__(self, *, channels: int = 4, extra_mib: int = 0) -> None:
        super().__init__(criterion=nn.Linear(5, 5))  # a criterion's parameters are not the model's
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.extra_mib = extra_mib

    def encode(self, image: Tensor) -> FrameFeatures:
        return FrameFeatures(image=image, maps={"x": self.conv(image)})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        memory.write(frame_index, {"mask": probs})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        if self.extra_mib:  # a transient buffer of extra_mib MiB, written so that its pages are resident
            scratch = torch.ones(self.extra_mib * 1024 * 1024 // 4)
            feats.cache["sum"] = scratch.sum()
            del scratch
        return memory.stack("mask", dim=1)[:, -1].clamp_min(1e-6).log() + 0 * feats.maps["x"].mean()


class Attention(OneConv):
    """segment adds one scaled-dot-product attention over the conv features (2 heads)."""

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        x = feats.maps["x"].flatten(2).transpose(1, 2).reshape(1, -1, 2, 2).transpose(1, 2)  # (1, 2, HW, 2)
        out = F.scaled_dot_product_attention(x, x, x)
        return super().segment(memory, feats) + 0 * out.mean()


def test_one_conv_params_and_macs_at_the_padded_size() -> None:
    model = OneConv(channels=4)
    costs = profile_model(model, size=(30, 50), frames=2, num_objects=2, device="cpu")
    assert costs["params"] == 4 * 3 * 3 * 3 + 4  # weights + biases, the criterion's Linear(5, 5) not counted
    # the session pads 30x50 to the stride-8 grid, 32x56; a 3x3 conv, padding 1: Cout * Cin * k * k * Hout * Wout
    assert costs["macs_per_frame"] == 4 * 3 * 3 * 3 * 32 * 56
    assert costs["fps"] > 0 and costs["device"] == f"cpu ({torch.get_num_threads()} threads)"
    assert costs["peak_mem_mb"] is not None and costs["peak_mem_mb"] >= 0


def test_affinity_model_macs_count_the_memory_read() -> None:
    model = AffinityModel(channels=8, pool=4)
    costs = profile_model(model, size=(64, 64), frames=3, num_objects=2, device="cpu")
    assert costs["params"] == 8 * 3 * 3 * 3 + 8 + 1  # embed conv + bias + temperature
    hw = 16 * 16  # 64x64 pooled by 4
    conv = 8 * 3 * 3 * 3 * hw
    affinity = hw * 8 * hw  # (T*hw, C) @ (C, hw) with a one-frame memory, T = 1
    read = 3 * hw * hw  # (N+1, T*hw) @ (T*hw, hw), background + 2 objects
    assert costs["macs_per_frame"] == conv + affinity + read


def test_cpu_attention_kernel_is_counted() -> None:
    # 16x16 input, stride 8: no padding; the conv's 4 channels as 2 heads of 2 over 256 positions
    macs = count_macs(Attention(channels=4), size=(16, 16), num_objects=1)
    conv = 4 * 3 * 3 * 3 * 256
    attention = 2 * (256 * 256 * 2) * 2  # per head: Q K^T and A V, each 256 x 256 x 2
    assert macs == conv + attention


def test_peak_memory_sees_a_transient_buffer() -> None:
    costs = profile_model(OneConv(extra_mib=64), size=(32, 32), frames=2, num_objects=1, device="cpu")
    assert costs["peak_mem_mb"] >= 60  # two segment calls, each with 64 MiB alive for a moment


def test_machine_info_names_the_device_and_threads() -> None:
    info = machine_info("cpu")
    assert info["device"] == f"cpu ({torch.get_num_threads()} threads)"
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    assert isinstance(info["cpu"], str) and info["cpu"]


def test_profile_runs_the_session_with_the_fast_paths_it_is_given() -> None:
    costs = profile_model(OneConv(), size=(32, 32), frames=2, num_objects=1, device="cpu", channels_last=False)
    assert costs["fast_paths"] == {"amp": None, "compile": False, "channels_last": False, "flush_denormal": True}
    with pytest.raises(ValueError, match="amp must be"):
        profile_model(OneConv(), size=(32, 32), frames=2, num_objects=1, device="cpu", amp="fp8")


def test_profiling_cli_passes_the_fast_paths(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stm_r18", "--size", "64", "64", "--frames", "2", "--amp", "bf16", "--no-channels-last"]
    assert main([*argv, "--flush-denormal", "off"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fast_paths"] == {"amp": "bf16", "compile": False, "channels_last": False, "flush_denormal": False}


def test_bench_fast_paths_become_profiling_flags() -> None:
    from voszoo.benchmark import _fast_path_flags

    assert _fast_path_flags(None) == []
    assert _fast_path_flags(OmegaConf.create({"amp": None, "compile": False, "channels_last": True})) == []
    flags = _fast_path_flags(OmegaConf.create({"amp": "bf16", "compile": True, "channels_last": False}))
    assert flags == ["--amp", "bf16", "--compile", "--no-channels-last"]
    assert _fast_path_flags(OmegaConf.create({"flush_denormal": "auto"})) == []
    assert _fast_path_flags(OmegaConf.create({"flush_denormal": False})) == ["--flush-denormal", "off"]
    assert _fast_path_flags(OmegaConf.create({"flush_denormal": "on"})) == ["--flush-denormal", "on"]


def test_profile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frames"):
        profile_model(OneConv(), size=(32, 32), frames=1)
    with pytest.raises(ValueError, match="num_objects"):
        profile_model(OneConv(), size=(32, 32), num_objects=0)


def test_profiling_cli_reports_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["no_such_model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("voszoo-profile: error: unknown model 'no_such_model'") and "stm_r18" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


PUBLISHED = """
results:
  - {paper: "Paper A (2021), 001_x.txt", table: Table 1, method: AOT, variant: AOT-T, backbone: b, dataset: DAVIS 2017,
     split: val, static_pretraining: true, youtube_vos: false, J&F: 80.0, J: 78.0, F: 82.0, fps: 51.4, gpu: V100}
  - {paper: "Paper B (2022)", table: Table 2, method: STM, variant: base, backbone: b, dataset: DAVIS 2017,
     split: val, static_pretraining: null, youtube_vos: true, J&F: 81.5, J: 80.0, F: 83.0}
  - {paper: "Paper A (2021)", table: Table 3, method: AOT, variant: AOT-T, backbone: b, dataset: DAVIS 2017,
     split: test-dev, static_pretraining: true, youtube_vos: true, J&F: 70.0}
  - {paper: "Paper A (2021)", table: Table 4, method: AOT, variant: AOT-T, backbone: b, dataset: YouTube-VOS 2019,
     split: val, static_pretraining: true, youtube_vos: true, J&F: 79.0}
"""


def test_published_rows_match_dataset_and_split_and_name_their_source(tmp_path: Path) -> None:
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED)
    rows = published_rows("davis2017", "val", path=path)
    assert [row["entry"] for row in rows] == ["STM base", "AOT-T"]  # best J&F first; test-dev and YouTube-VOS left out
    stm, aot = rows
    assert stm["source"] == "published (Paper B (2022), Table 2)" and stm["status"] == "published"
    assert aot["source"] == "published (Paper A (2021), Table 1)"  # the seed-file name is dropped
    assert aot["J&F"] == pytest.approx(0.80) and aot["J"] == pytest.approx(0.78) and aot["F"] == pytest.approx(0.82)
    assert aot["fps"] == 51.4 and aot["device"] == "V100" and stm["device"] == "GPU not named"
    assert stm["train data"] == "static images: not stated, YouTube-VOS: yes"
    assert [row["entry"] for row in published_rows("youtube_vos2019", "valid", path=path)] == ["AOT-T"]
    assert published_rows("toyvos", "val", path=path) == []
    with pytest.raises(ValueError, match="davis2017"):
        published_rows("kitti", "val", path=path)


def test_markdown_table_marks_sources_and_formats_units() -> None:
    measured = {"entry": "stm", "status": "ok", "source": MEASURED, "J&F": 0.5, "J": 0.4, "F": 0.6}
    measured.update(params=9_336_578, macs_per_frame=88_279_787_520, fps=0.134, peak_mem_mb=339.1, minutes=2.25)
    published = {"entry": "AOT-T", "status": "published", "source": "published (Paper A, Table 1)", "J&F": 0.799}
    failed = {"entry": "broken", "status": "failed: boom", "source": MEASURED}
    lines = format_markdown([measured, published, failed]).splitlines()
    assert len(lines) == 5 and lines[0].count("|") == len(COLUMNS) + 1
    assert lines[2].startswith("| stm | ok | measured (here) | 50.0 | 40.0 | 60.0 | 9.34 | 88.3 | 0.134 | 339.1 |")
    assert lines[3].startswith("| AOT-T | published | published (Paper A, Table 1) | 79.9 | - | - | - |")
    assert failed_rows([measured, published, failed]) == [failed]  # published rows never fail the run


def test_plot_is_written_or_skipped_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"entry": "a", "source": MEASURED, "J&F": 0.5, "fps": 2.0},
        {"entry": "b", "source": "published (P, T)", "J&F": 0.8, "fps": 40.0},
    ]
    caplog.set_level(logging.INFO, logger="voszoo.bench")
    path = write_plot(rows, tmp_path / "board.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert path is None and not (tmp_path / "board.png").exists()
        assert [r.message for r in caplog.records if "matplotlib" in r.message] == [
            "matplotlib is not installed: no J&F-FPS plot (pip install matplotlib to get one)"
        ]
    else:
        assert path == tmp_path / "board.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_trains_every_quick_experiment_and_generates_a_row_for_every_other_preset(tmp_path: Path) -> None:
    from voszoo.benchmark import board_entries
    from voszoo.hydra_compose import compose_config

    conf = Path(__file__).resolve().parents[1] / "conf"
    board = compose_config("leaderboard")
    entries = board_entries(board)
    quick = sorted(p.stem for p in (conf / "experiment").glob("*_quick.yaml"))
    trained = sorted(str(o).removeprefix("experiment=") for e in entries if "train" in e for o in e.train)
    assert trained == quick
    # every model preset is one row: trained through a quick experiment, or its cost columns alone (generated)
    trained_presets = [compose_config("train", list(e.train)).model.name for e in entries if "train" in e]
    cost_only = [str(e.cost_only) for e in entries if "cost_only" in e]
    assert not any("cost_only" in e for e in board.entries)  # none kept by hand
    assert sorted([*trained_presets, *cost_only]) == voszoo.list_models()
    # a preset of one's own (a --config-dir folder) gets its row without an edit to the board
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_stm.yaml").write_text("defaults:\n  - stm_r18\n  - _self_\n\nname: my_stm\n")
    mine = board_entries(board, [f"file://{tmp_path}"])
    assert [str(e.name) for e in mine if str(e.name) not in {str(x.name) for x in entries}] == ["my_stm"]
    demo_entries = board_entries(compose_config("bench"))  # the demo board generates nothing: its own two entries
    assert [str(e.name) for e in demo_entries] == ["copy_first_frame", "stm_r18_quick"]
    demo = OmegaConf.load(conf / "bench.yaml")
    assert [e.name for e in demo.entries] == ["copy_first_frame", "stm_r18_quick"]  # the demo stays small
    assert OmegaConf.to_container(demo.profile) == {
        "enabled": True,
        "size": [480, 854],
        "frames": 3,
        "num_objects": 2,
        "device": "auto",
    }
