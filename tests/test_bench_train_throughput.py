"""benchmarks/bench_train_throughput.py: paper crops of every preset, the timing arithmetic, and the MAC count of a
tiny training step by stage with its GPU estimate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from voszoo.models.registry import list_models, without_weights

_SPEC = importlib.util.spec_from_file_location(
    "bench_train_throughput", Path(__file__).parents[1] / "benchmarks" / "bench_train_throughput.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_every_preset_has_its_paper_crop():
    # the papers' training crops and clip lengths (STM Sec. 4, AOT's DATA_SEQ_LEN, MUNet Sec. 3.5)
    expected = {"stm": (384, 3), "stm_r18": (384, 3), "aot_l": (465, 5), "r50_aot_l": (465, 5), "munet_r18": (400, 6)}
    for name, recipe in expected.items():
        assert bench.paper_recipe(name)[:2] == recipe
    for name in list_models():
        side, frames, source = bench.paper_recipe(name)
        assert side >= 384 and frames >= 3 and source
    with pytest.raises(ValueError, match="no paper crop known"):
        bench.paper_recipe("not_a_preset")


def test_timing_counts_only_the_steps_after_warmup():
    # stamps: start, then 4 steps of 5, 1, 2, 2 s wall and 4, 1, 1.5, 1.5 s CPU; warm-up 1 step
    stamps = [0.0, 5.0, 6.0, 8.0, 10.0]
    cpu = [0.0, 4.0, 5.0, 6.5, 8.0]
    timing = bench._timing(stamps, warmup=1, samples_per_step=4, cpu=cpu)
    assert timing["samples_per_s"] == pytest.approx(12 / 5.0)
    assert timing["step_seconds_median"] == pytest.approx(2.0)
    assert timing["cpu_s_per_step"] == pytest.approx(4.0 / 3, abs=1e-4)  # rounded to 4 digits
    assert timing["samples_per_cpu_s"] == pytest.approx(12 / 4.0, abs=1e-3)


def test_step_macs_by_stage_and_the_gpu_estimate():
    overrides = bench.paper_overrides("aot_t", 1)
    overrides += ["data.train.transform.size=[64,64]", "data.train.num_frames=2", "trainer.device=cpu"]
    cfg = bench.compose_train(overrides)
    with open_dict(cfg):
        cfg.model = without_weights(cfg.model)
    torch.manual_seed(0)
    macs = bench.count_step_macs(cfg, gpu_tmacs=10.0)
    forward = macs["forward_gmacs"]
    assert forward["backbone"] > 0 and forward["matching"] > 0 and forward["decoder"] > 0
    # a backward computes at most two gradients per forward multiplication (frozen parts: fewer)
    assert 0 < macs["backward_gmacs"] <= 2 * sum(forward.values()) + 1e-9
    assert macs["step_gmacs"] == pytest.approx(sum(forward.values()) + macs["backward_gmacs"])
    # the estimate: the step's MACs at 10 TMAC/s, in ms, shared out over the stages
    assert macs["gpu_ms_estimate_total"] == pytest.approx(macs["step_gmacs"] * 1e9 / 10e12 * 1000)
