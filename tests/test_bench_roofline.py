"""benchmarks/bench_roofline.py: the MAC counting against analytic counts, the charging of ops to stages, the ratio
and the diagnosis of a slow stage, and one tiny end-to-end run (JSON merged, resumed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.memory import KeepAll, MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel, labels_to_probs
from voszoo.stage_timing import StageTimer

_SPEC = importlib.util.spec_from_file_location(
    "bench_roofline", Path(__file__).parents[1] / "benchmarks" / "bench_roofline.py"
)
roofline = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(roofline)


def _census() -> roofline.OpCensus:
    return roofline.OpCensus(stage_of=lambda: None, peak_macs=1e10, bandwidth=1e10)


def _macs(census: roofline.OpCensus) -> float:
    return sum(record["macs"] for record in census.records.values())


r = torch.rand


@pytest.mark.parametrize(
    ("name", "run", "analytic"),
    [
        # convolution: Cout x Hout x Wout x (Cin / groups) x kh x kw per image
        ("conv3x3", lambda: F.conv2d(r(2, 3, 10, 12), r(8, 3, 3, 3), padding=1), 2 * 8 * 10 * 12 * 27),
        ("strided", lambda: F.conv2d(r(1, 4, 9, 9), r(6, 4, 3, 3), stride=2), 6 * 4 * 4 * 4 * 9),
        ("grouped", lambda: F.conv2d(r(1, 4, 5, 5), r(6, 2, 1, 1), groups=2), 6 * 25 * 2),
        ("transposed", lambda: F.conv_transpose2d(r(1, 4, 5, 5), r(4, 3, 2, 2), stride=2), 4 * 3 * 4 * 25),
        ("linear3d", lambda: F.linear(r(2, 5, 7), r(11, 7), r(11)), 2 * 5 * 7 * 11),
        ("mm", lambda: r(13, 17) @ r(17, 19), 13 * 17 * 19),
        ("bmm", lambda: torch.einsum("bik,bkj->bij", r(3, 4, 5), r(3, 5, 6)), 3 * 4 * 5 * 6),
        # attention: Q K^T and P V, each B x heads x L x S x D
        ("sdpa", lambda: F.scaled_dot_product_attention(*(r(1, 2, n, 8) for n in (16, 24, 24))), 2 * 2 * 16 * 24 * 8),
        ("elementwise", lambda: torch.softmax(r(4, 5), 1) + torch.relu(r(4, 5)), 0),
    ],
)  # fmt: skip
def test_census_counts_the_analytic_macs(name, run, analytic):
    census = _census()
    with torch.no_grad(), census:
        run()  # the inputs are drawn inside the census too: rand has no MACs
    assert _macs(census) == analytic


def test_census_bytes_views_and_roof():
    census = roofline.OpCensus(stage_of=lambda: "s", peak_macs=100.0, bandwidth=1000.0)
    a, b = torch.rand(8, 16), torch.rand(16, 4)
    with census:
        a.t()  # a view: no bytes
        torch.mm(a, b)  # 512 MACs, (128 + 64 + 32) x 4 bytes
    view = census.records[("s", "aten.t")]
    mm = census.records[("s", "aten.mm")]
    assert view["bytes"] == 0 and view["macs"] == 0
    assert mm["macs"] == 512 and mm["bytes"] == (128 + 64 + 32) * 4
    # roof: max(512 / 100, 896 / 1000) = 5.12 s: compute-bound, so no memory-bound time
    assert mm["roof_seconds"] == pytest.approx(5.12) and mm["mem_bound_seconds"] == 0


class _TwoStageModel(VOSModel):
    """encode: one conv; segment: a matmul read, then the decoder conv; memorize: nothing counted."""

    multi_object = "per_object"
    stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.decoder = nn.Conv2d(4, 2, 1, bias=False)

    def encode(self, image: Tensor) -> FrameFeatures:
        return FrameFeatures(image=self.encoder(image))

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        memory.write(frame_index, {"key": feats.image})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        key = memory.stack("key", dim=1)[:, 0].flatten(2)  # (B, C, HW)
        query = feats.image.flatten(2)
        affinity = torch.softmax(key.transpose(1, 2) @ query, dim=1)  # (B, HW, HW)
        read = (key @ affinity).view_as(feats.image)
        return self.decoder(read)


def test_ops_are_charged_to_the_stage_running():
    model = _TwoStageModel().eval()
    image = torch.rand(1, 3, 6, 5)
    hw = 30
    memory = model.new_memory(KeepAll(), num_objects=1)
    timer = StageTimer(model)
    census = roofline.OpCensus(stage_of=lambda: timer.stage, peak_macs=1e10, bandwidth=1e10)
    with torch.no_grad(), timer:
        model.memorize(memory, model.encode(image), labels_to_probs(torch.ones(1, 6, 5, dtype=torch.long), 1), 0)
        with timer.frame(), census:
            feats = model.encode(image)
            logits = model.segment(memory, feats)
            torch.argmax(logits, dim=1)  # the session's post-processing: "other"
    stages = {}
    for (stage, _op), record in census.records.items():
        stages[stage] = stages.get(stage, 0.0) + record["macs"]
    assert stages["backbone"] == 4 * hw * 3 * 9
    assert stages["matching"] == 2 * hw * 4 * hw  # K^T Q, then K A
    assert stages["decoder"] == 2 * hw * 4
    assert stages["other"] == 0


def _record(seconds: float, macs: float = 0.0, nbytes: float = 0.0, mem_bound: float = 0.0, view: bool = False):
    record = {"calls": 1, "seconds": seconds, "macs": macs, "bytes": nbytes, "roof_seconds": 0.0}
    return {**record, "mem_bound_seconds": mem_bound, "view": float(view)}


def _stage(ops: dict[str, dict[str, float]], cpu_seconds: float) -> dict:
    return roofline.summarise_stage(ops, cpu_seconds=cpu_seconds, frames=1, peak_gmacs=40.0, bandwidth_gbs=20.0)


def test_ratio_and_reasons():
    # 20 GMACs in 0.5 s of CPU time: 40 GMAC/s, the attainable rate: ratio 1, no reason
    fast = _stage({"aten.convolution": _record(0.5, macs=20e9, nbytes=1e8)}, cpu_seconds=0.5)
    assert fast["achieved_gmacs"] == pytest.approx(40.0) and fast["ratio"] == pytest.approx(1.0)
    assert fast["reason"] is None
    # the same MACs, but 1.5 s of softmax beside them: ratio 0.25, elementwise named with its share (1.5 / 2.0)
    slow = _stage(
        {"aten.convolution": _record(0.5, macs=20e9), "aten._softmax": _record(1.5)},
        cpu_seconds=2.0,
    )
    assert slow["ratio"] == pytest.approx(0.25)
    assert slow["reason"].startswith("elementwise: 75% of its CPU time") and "_softmax 1500 ms" in slow["reason"]
    assert slow["reason"].endswith("; then compute-bound MAC ops 25%")  # a runner-up of >= 20 % is named
    # MAC ops that are memory-bound take most of the time
    membound = _stage({"aten.bmm": _record(1.0, macs=1e9, nbytes=4e9, mem_bound=1.0)}, cpu_seconds=1.0)
    assert membound["reason"].startswith("memory-bound: 100%") and "0.2 MACs/byte" in membound["reason"]
    # compute-bound MAC ops at 10 GMAC/s, a quarter of the mm
    kernels = _stage({"aten.convolution": _record(1.0, macs=10e9, nbytes=1e8)}, cpu_seconds=1.0)
    assert kernels["reason"].startswith("kernel efficiency") and "10.0 GMAC/s, 25% of the mm" in kernels["reason"]
    # copies dominate; then views plus the time outside every op (the stage's CPU time minus its ops': 0.85 s)
    layout = _stage({"aten.copy_": _record(0.6), "aten.mm": _record(0.1, macs=1e8)}, cpu_seconds=0.8)
    assert layout["reason"].startswith("data layout: 75%")
    overhead = _stage({"aten.mm": _record(0.1, macs=1e8), "aten.view": _record(0.05, view=True)}, cpu_seconds=1.0)
    assert overhead["reason"].startswith("framework overhead: 90%")


def test_end_to_end_tiny_run_merges_and_resumes(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    argv = ["--models", "aot_t", "--size", "64x64", "--mm-size", "256", "--no-isolate", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert roofline.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # main sets --threads (1) for the process
    row = json.loads(out.read_text())["results"][0]
    assert row["status"] == "ok" and row["threads"] == 1 and row["size"] == "64x64"
    stages = row["stages"]
    assert row["macs_per_frame"] == pytest.approx(sum(s["macs"] for s in stages.values()))
    assert stages["backbone"]["macs"] > 0 and stages["decoder"]["macs"] > 0 and stages["other"]["macs"] == 0
    assert row["achieved_gmacs"] == pytest.approx(row["macs_per_frame"] / row["cpu_s_per_frame"] / 1e9)
    assert row["ratio"] == pytest.approx(row["achieved_gmacs"] / row["attainable_gmacs"])
    assert "| aot_t | 64x64 |" in capsys.readouterr().out
    # a second run skips the measured preset (resumable); the row is untouched
    try:
        assert roofline.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text())["results"] == [row]


@pytest.mark.parametrize(("groups", "input_grad"), [(1, True), (16, True), (16, False)])
def test_convolution_backward_counts_each_gradient_once_per_forward_multiplication(groups, input_grad):
    # a depthwise 5x5 conv's weight gradient: torch's own formula ignores groups and counts it 16x here
    x = torch.rand(2, 16, 6, 6, requires_grad=input_grad)
    w = torch.rand(16, 16 // groups, 5, 5, requires_grad=True)
    forward_macs = 2 * 16 * 36 * (16 // groups) * 25  # B x Cout x HW x Cin/groups x k^2
    census = _census()
    with census:
        y = F.conv2d(x, w, padding=2, groups=groups)
    assert _macs(census) == forward_macs
    census = _census()
    with census:
        y.sum().backward()
    assert _macs(census) == forward_macs * (2 if input_grad else 1)
