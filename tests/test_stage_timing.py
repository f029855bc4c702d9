"""voszoo.stage_timing.StageTimer (stage attribution, outputs unchanged, clean removal) and
benchmarks/bench_inference.py end to end at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from voszoo.data.toy import render_toyvos_video
from voszoo.inference.session import InferenceSession
from voszoo.memory import KeepAll, MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel, labels_to_probs
from voszoo.models.registry import create_model
from voszoo.stage_timing import STAGES, StageTimer

_SPEC = importlib.util.spec_from_file_location(
    "bench_inference", Path(__file__).parents[1] / "benchmarks" / "bench_inference.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

KEYS = {*STAGES, "other", "total"}


# -- a model whose stages take known times ---------------------------------------------------------------------------
class _SleepyDecoder(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x * 2.0


class SleepyModel(VOSModel):
    """encode / memorize / segment sleep for known times; segment = ``match`` s of matching, then the decoder
    (``decode`` s) and ``post`` s after it. ``nested``: memorize calls encode (must count as memory write)."""

    multi_object = "per_object"
    stride = 1

    def __init__(
        self,
        *,
        encode: float,
        memorize: float,
        match: float,
        decode: float,
        post: float,
        use_decoder: bool = True,
        nested: bool = False,
    ) -> None:
        super().__init__()
        self.times = dict(encode=encode, memorize=memorize, match=match, post=post)
        self.decoder = _SleepyDecoder(decode)
        self.use_decoder = use_decoder
        self.nested = nested

    def encode(self, image: Tensor) -> FrameFeatures:
        time.sleep(self.times["encode"])
        return FrameFeatures(image=image)

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        if self.nested:
            self.encode(feats.image)
        time.sleep(self.times["memorize"])
        memory.write(frame_index, {"probs": probs})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        time.sleep(self.times["match"])
        logits = memory.stack("probs", dim=1).mean(1)
        if self.use_decoder:
            logits = self.decoder(logits)
        time.sleep(self.times["post"])
        return logits


def _run_direct(model: VOSModel, timer: StageTimer | None, frames: int) -> list[Tensor]:
    """Reference frame memorised, then ``frames`` frames encoded, segmented and memorised, each in a timer frame."""
    image = torch.zeros(1, 3, 4, 4)
    memory = model.new_memory(KeepAll(), num_objects=1)
    outputs = []
    for t in range(frames + 1):
        context = timer.frame() if timer is not None else torch.no_grad()
        with context:
            feats = model.encode(image)
            if t == 0:
                model.memorize(memory, feats, labels_to_probs(torch.ones(1, 4, 4, dtype=torch.long), 1), 0)
                continue
            logits = model.segment(memory, feats)
            model.memorize(memory, feats, torch.softmax(logits, dim=1), t)
            outputs.append(logits)
    return outputs


def test_stages_attributed_to_the_right_calls():
    # matching 50 ms and decoding 100 + 20 ms: a split at the wrong place would move >= 100 ms between them
    model = SleepyModel(encode=0.03, memorize=0.04, match=0.05, decode=0.10, post=0.02)
    with StageTimer(model) as timer:
        _run_direct(model, timer, frames=1)
    reference, frame = timer.frames
    assert set(frame) == KEYS
    # reference frame: encode + memorize only
    assert reference["backbone"] >= 30 and reference["memory_write"] >= 40
    assert reference["matching"] == 0 and reference["decoder"] == 0
    assert frame["backbone"] >= 30 and frame["memory_write"] >= 40
    assert 50 <= frame["matching"] < 50 + 100
    assert 120 <= frame["decoder"] < 120 + 50
    for record in timer.frames:
        assert all(record[key] >= 0 for key in KEYS)
        assert sum(record[s] for s in STAGES) <= record["total"] + 1e-6


def test_custom_clock_and_current_stage(monkeypatch):
    # a clock advanced only by the model's fake sleeps: every stage must come out exactly, and each sleep must see
    # the stage it is charged to in timer.stage (what the roofline's op census reads)
    ticks, seen = [0.0], []
    model = SleepyModel(encode=0.03, memorize=0.04, match=0.05, decode=0.10, post=0.02)
    timer = StageTimer(model, clock=lambda: ticks[0])

    def fake_sleep(seconds: float) -> None:
        ticks[0] += seconds
        seen.append((timer.stage, seconds))

    monkeypatch.setattr(time, "sleep", fake_sleep)
    assert timer.stage is None
    with timer:
        _run_direct(model, timer, frames=1)
        assert timer.stage is None
    frame = timer.frames[1]
    expected = {"backbone": 30.0, "memory_write": 40.0, "matching": 50.0, "decoder": 120.0, "other": 0.0}
    assert {key: round(frame[key], 6) for key in expected} == expected
    assert seen[-5:] == [
        ("backbone", 0.03),
        ("matching", 0.05),
        ("decoder", 0.10),
        ("decoder", 0.02),
        ("memory_write", 0.04),
    ]


def test_totals_within_external_wall_time_and_nested_calls_count_once():
    model = SleepyModel(encode=0.02, memorize=0.01, match=0.01, decode=0.01, post=0.0, nested=True)
    image = torch.zeros(1, 3, 4, 4)
    memory = model.new_memory(KeepAll(), num_objects=1)
    with StageTimer(model) as timer:
        start = time.perf_counter()
        with timer.frame():
            feats = model.encode(image)
            model.memorize(memory, feats, labels_to_probs(torch.ones(1, 4, 4, dtype=torch.long), 1), 0)
        wall_ms = (time.perf_counter() - start) * 1000.0
    (record,) = timer.frames
    assert record["total"] <= wall_ms + 1e-6
    # memorize's inner encode (20 ms) counts towards the memory write (>= 20 + 10 ms), not a second backbone call
    assert record["memory_write"] >= 30
    assert 20 <= record["backbone"] < 20 + 30
    assert record["total"] >= 20 + 30


def test_segment_without_decoder_call_is_all_matching():
    model = SleepyModel(encode=0.0, memorize=0.0, match=0.02, decode=0.0, post=0.02, use_decoder=False)
    with StageTimer(model) as timer:
        _run_direct(model, timer, frames=1)
    assert timer.frames[1]["matching"] >= 40
    assert timer.frames[1]["decoder"] == 0


def test_calls_outside_frames_are_not_timed_and_mean_skips():
    model = SleepyModel(encode=0.0, memorize=0.0, match=0.0, decode=0.0, post=0.0)
    with StageTimer(model) as timer:
        _run_direct(model, None, frames=1)
        assert timer.frames == []
        _run_direct(model, timer, frames=2)
        assert len(timer.frames) == 3
        mean = timer.mean(skip=1)
    expected = {key: (timer.frames[1][key] + timer.frames[2][key]) / 2 for key in KEYS}
    assert mean == pytest.approx(expected)
    with pytest.raises(ValueError, match="no frame after skip=3"):
        timer.mean(skip=3)


def test_hooks_and_wrappers_removed_even_after_an_error():
    model = SleepyModel(encode=0.0, memorize=0.0, match=0.0, decode=0.0, post=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        with StageTimer(model) as timer:
            assert "encode" in model.__dict__ and len(model.decoder._forward_pre_hooks) == 1
            with timer.frame():
                raise RuntimeError("boom")
    assert timer.frames == []  # a frame that raised is not recorded
    for name in ("encode", "memorize", "segment"):
        assert name not in model.__dict__
        assert getattr(model, name).__func__ is getattr(SleepyModel, name)
    assert len(model.decoder._forward_pre_hooks) == 0
    with pytest.raises(RuntimeError, match="enter the timer first"):
        with timer.frame():
            pass


def test_bad_decoder_attribute_names_the_way_out():
    model = SleepyModel(encode=0.0, memorize=0.0, match=0.0, decode=0.0, post=0.0)
    with pytest.raises(ValueError, match="no decoder submodule 'head'.*decoder_attr"):
        StageTimer(model, decoder_attr="head")
    with pytest.raises(ValueError, match="not a VOSModel"):
        StageTimer(nn.Linear(2, 2))


# -- real models ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_video():
    video, _ = render_toyvos_video(seed=0, index=0, frames=3, size=(64, 64))
    return video


def _session_run(model: VOSModel, video, timer: StageTimer | None) -> list[Tensor]:
    session = InferenceSession(model, policy_factory=KeepAll)
    probs = []
    for t in range(len(video.frames)):
        labels = video.labels[0] if t == 0 else None
        if timer is None:
            probs.append(session.step(video.frames[t], labels).probs)
        else:
            with timer.frame():
                probs.append(session.step(video.frames[t], labels).probs)
    return probs


# STM.segment (also MUNet, MGA), SITVOS.segment and IdentityVOSModel.segment (AOT, BATMAN): every segment in voszoo
@pytest.mark.parametrize("name", ["stm_r18", "sitvos_r18", "aot_t"])
def test_real_models_outputs_unchanged_and_stages_measured(name, toy_video):
    torch.manual_seed(0)
    model = create_model(name).eval()
    plain = _session_run(model, toy_video, None)
    with StageTimer(model) as timer:
        timed = _session_run(model, toy_video, timer)
    for a, b in zip(plain, timed, strict=True):
        assert torch.equal(a, b)
    assert len(timer.frames) == 3
    reference = timer.frames[0]
    assert reference["matching"] == 0 and reference["decoder"] == 0  # the session only memorises frame 0
    for record in timer.frames:
        assert set(record) == KEYS
        assert all(record[key] >= 0 for key in KEYS)
        assert sum(record[s] for s in STAGES) <= record["total"] + 1e-6
    for record in timer.frames[1:]:
        assert all(record[s] > 0 for s in STAGES)  # the decoder hook fired inside segment
    assert "segment" not in model.__dict__ and len(model.decoder._forward_pre_hooks) == 0


def test_logits_identical_with_and_without_timer():
    torch.manual_seed(0)
    model = create_model("stm_r18").eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 1, 3, 64, 64, generator=generator)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, 16:48, 8:30], labels[:, 16:48, 34:56] = 1, 2

    def logits() -> Tensor:
        with torch.no_grad():
            memory = model.new_memory(KeepAll(), num_objects=2)
            model.memorize(memory, model.encode(images[0]), labels_to_probs(labels, 2), 0)
            return model.segment(memory, model.encode(images[1]))

    plain = logits()
    with StageTimer(model) as timer:
        with timer.frame():
            timed = logits()
    assert torch.equal(plain, timed)
    assert timer.frames[0]["decoder"] > 0 and timer.frames[0]["matching"] > 0


# -- the benchmark script ---------------------------------------------------------------------------------------------
def test_bench_main_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "inference.json"
    argv = ["--models", "stm_r18", "--sizes", "64x64", "--frames", "3", "--warmup", "1", "--no-isolate"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] == torch.__version__
    assert result["machine"]["device"].startswith("cpu")
    assert result["machine"]["cpu"]
    assert result["settings"]["frames"] == 3 and result["settings"]["warmup"] == 1
    (row,) = result["results"]
    assert (row["preset"], row["size"], row["input"], row["status"]) == ("stm_r18", "64x64", [64, 64], "ok")
    assert row["timed_frames"] == 3
    video, _ = render_toyvos_video(seed=0, index=0, frames=5, size=(64, 64))
    assert row["objects"] == len(set(np.unique(video.labels[0]).tolist()) - {0})
    assert set(row["stage_ms"]) == {"backbone", "memory_write", "matching", "decoder", "other"}
    assert all(value > 0 for key, value in row["stage_ms"].items() if key != "other")
    assert row["stage_ms"]["other"] >= 0
    # fps = timed frames / their wall time, ms_per_frame = mean wall time per frame = stages + other
    assert row["fps"] * row["ms_per_frame"] == pytest.approx(1000.0)
    assert sum(row["stage_ms"].values()) == pytest.approx(row["ms_per_frame"])
    assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0
    assert row["cpu_ms_per_frame"] > 0 and row["load_average_1min"] >= 0
    assert row["flush_denormal"] is True and result["settings"]["flush_denormal"] == "auto"  # auto: on for CPU
    table = capsys.readouterr().out
    assert "| preset | size | FPS |" in table and "| stm_r18 | 64x64 |" in table


def test_bench_failing_preset_is_a_row_and_others_run(tmp_path, capsys):
    # AOT's FPN needs three skip channel counts: this override breaks aot_t only (stm_r18 already has these)
    out = tmp_path / "inference.json"
    argv = ["--models", "aot_t,stm_r18", "--sizes", "64x64", "--frames", "1", "--warmup", "0", "--no-isolate"]
    code = bench.main(
        [*argv, "--override=decoder.skip_channels=[128,64]", "--flush-denormal", "off", "--out", str(out)]
    )
    assert code == 1
    rows = {row["preset"]: row for row in json.loads(out.read_text())["results"]}
    assert rows["aot_t"]["status"] == "failed" and "skip_channels" in rows["aot_t"]["error"]
    assert rows["stm_r18"]["status"] == "ok" and rows["stm_r18"]["fps"] > 0
    assert rows["stm_r18"]["flush_denormal"] is False  # --flush-denormal off reaches the session
    captured = capsys.readouterr()
    assert "| aot_t | 64x64 |" in captured.out and "failed: " in captured.out
    assert "1 run(s) failed: aot_t (64x64)" in captured.err


def test_bench_worker_mode_writes_one_row(tmp_path):
    video, _ = render_toyvos_video(seed=0, index=0, frames=2, size=(64, 64))
    path = tmp_path / "video.npz"
    np.savez(path, images=video.frames, labels=video.labels[0])
    out = tmp_path / "row.json"
    argv = ["--worker", str(path), "--models", "stm_r18", "--sizes", "64x64", "--warmup", "0", "--out", str(out)]
    assert bench.main(argv) == 0
    row = json.loads(out.read_text())
    assert row["status"] == "ok" and row["timed_frames"] == 1 and row["preset"] == "stm_r18"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "nope"], "unknown preset(s) ['nope']"),
        (["--sizes", "64"], "neither one of 480p, 240p nor HxW"),
        (["--frames", "0"], "--frames must be >= 1"),
    ],
)
def test_bench_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_parse_size_named_and_explicit():
    assert bench.parse_size("480p") == ("480p", (480, 854))
    assert bench.parse_size("240p") == ("240p", (240, 427))
    assert bench.parse_size("64x96") == ("64x96", (64, 96))
