"""Roofline ratio of every preset (issue 22, item 1): the MAC rate one inference step achieves against the machine's
attainable matmul rate, per preset and per stage, and why a stage stays below half of it.

In one run, per preset (each in its own child process, results merged into ``--out`` as they finish, so an
interrupted run resumes; ``--force`` re-measures presets already there):

- **attainable**: the best of ``--mm-repeats`` fp32 ``torch.mm`` of ``--mm-size`` squared matrices (n^3 MACs) on the
  same threads, in CPU time; beside it the copy bandwidth (a 256 MB ``copy_``, bytes read + written per CPU second),
  the other roof. Both are measured in the child right before its preset, so that ratio and rates share a moment.
- **achieved**: MACs of one inference step / its CPU time. The step is a frame of a ToyVOS video (video 0, 2
  objects, the preset's memory policy, random weights) through :class:`~voszoo.inference.session.InferenceSession`:
  the reference frame, ``--warmup`` untimed frames, then ``--frames`` timed ones, each split into stages by
  :class:`voszoo.stage_timing.StageTimer` with ``time.thread_time`` as its clock (CPU time of the thread: with one
  torch thread, the whole step's work, and hardly changed by other processes on the cores); wall time and the
  1-minute load average are recorded beside it.
- **counted**: a second session runs the same frames; the timed frames run under an op census (a
  ``TorchDispatchMode``) that charges every aten op to the stage running (``StageTimer.stage``) with its MACs (the
  formulas of ``voszoo.profiling.count_macs``: ``torch.utils.flop_counter`` plus CPU SDPA), its CPU time and the
  bytes it reads and writes (tensor arguments and outputs; views move none). Element-wise ops, softmax,
  normalisation, pooling, interpolation and indexing count 0 MACs, as in ``count_macs``.

Per stage (``backbone`` = encoder, ``memory_write``, ``matching`` = matcher / memory read, ``decoder``, ``other`` =
the session's pre/post-processing): MACs, CPU ms, achieved GMAC/s, ratio, the roofline bound (per op
max(MACs / attainable, bytes / bandwidth), summed) and, below 50 %, the reason, from the census: the largest share
of the stage's CPU time among MAC ops that are memory-bound (their MACs per byte below the machine balance
attainable / bandwidth), MAC ops that are compute-bound yet slower than the mm (kernel efficiency: small channel
counts, odd shapes, layout), element-wise ops, resampling, data layout (copies, cat, pad, index) and what runs
outside any op (Python, dispatch: the stage's time minus its ops' time).

    python benchmarks/bench_roofline.py                              # every preset, 480p, 1 thread
    python benchmarks/bench_roofline.py --models stm_r18,aot_t --size 240p
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "roofline.json"
NAMED_SIZES = {"480p": (480, 854), "240p": (240, 427)}
STAGE_NAMES = ("backbone", "memory_write", "matching", "decoder", "other")
LAYOUT_OPS = {
    "copy_", "clone", "_to_copy", "contiguous", "cat", "stack", "constant_pad_nd", "index", "index_select",
    "gather", "scatter", "scatter_add", "index_put_", "index_put", "im2col", "col2im", "flip", "roll", "masked_fill",
    "repeat", "reflection_pad2d", "replication_pad2d", "unfold",
}  # fmt: skip
RESAMPLING_OPS = {
    "upsample_bilinear2d", "upsample_nearest2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "grid_sampler_2d",
    "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "max_pool2d",
}  # fmt: skip
FRAMEWORK_OPS = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "full", "full_like", "zeros",
    "zeros_like", "ones", "ones_like", "new_zeros", "new_ones", "arange", "scalar_tensor", "lift_fresh", "detach",
    "alias", "_local_scalar_dense", "set_", "resize_", "item",
}  # fmt: skip  # allocation and bookkeeping: no data moved worth the name, dispatch cost only
RATIO_GOAL = 0.5
CLASS_LABELS = {
    "mac_memory_bound": "memory-bound MAC ops",
    "mac_compute_bound": "compute-bound MAC ops",
    "elementwise": "elementwise ops",
    "resampling": "resampling",
    "layout": "data layout",
    "framework": "framework overhead",
}


# -- the machine's roofs --------------------------------------------------------------------------------------------
def attainable_mm(*, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The best fp32 ``torch.mm`` rate of ``size`` squared matrices over ``repeats`` runs: GMAC/s in CPU time (of the
    process: every torch thread) and in wall time."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: packing buffers, thread pool
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        torch.mm(a, b, out=out)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    macs = float(size) ** 3
    return {"size": size, "gmacs_cpu": macs / best_cpu / 1e9, "gmacs_wall": macs / best_wall / 1e9}


def copy_bandwidth(*, megabytes: int = 256, repeats: int = 5) -> float:
    """Best ``copy_`` bandwidth of a ``megabytes`` fp32 tensor, GB/s of bytes read + written per CPU second."""
    source = torch.rand(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        target.copy_(source)
        best = min(best, time.process_time() - start)
    return 2.0 * source.nbytes / best / 1e9


# -- op census ------------------------------------------------------------------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a kernel reads or writes for ``tensor``: its elements, capped by its storage (broadcast views)."""
    nbytes = tensor.numel() * tensor.element_size()
    try:
        return min(nbytes, tensor.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return nbytes


def op_class(name: str, macs: float, *, view: bool = False) -> str:
    """``mac``, ``framework`` (views, allocation), ``layout``, ``resampling`` or ``elementwise`` (everything else:
    activations, norms, softmax, reductions, arithmetic) for an aten op name (``"aten.add"``)."""
    if macs > 0:
        return "mac"
    short = name.rsplit(".", 1)[-1]
    if view or short in FRAMEWORK_OPS:
        return "framework"
    if short in LAYOUT_OPS:
        return "layout"
    if short in RESAMPLING_OPS:
        return "resampling"
    return "elementwise"


def _conv_kind(packet: Any, args: tuple) -> str:
    """``"[depthwise]"``, ``"[grouped]"``, ``"[1x1]"`` or ``""`` for a convolution (their kernels differ most)."""
    if packet is not torch.ops.aten.convolution or len(args) < 9:
        return ""
    weight, groups = args[1], args[8]
    if groups > 1:
        return "[depthwise]" if weight.shape[1] == 1 else "[grouped]"
    return "[1x1]" if all(k == 1 for k in weight.shape[2:]) else ""


class OpCensus(TorchDispatchMode):
    """Charges every aten op run inside it to ``stage_of()`` (None: ``"outside"``): calls, CPU seconds
    (``time.thread_time`` around the kernel), MACs (``voszoo.profiling.mac_formulas``), bytes of its tensor
    arguments and outputs (0 for views) and its roofline time max(MACs / ``peak_macs``, bytes / ``bandwidth``).

    Attributes:
        records: ``{(stage, op name): {"calls", "seconds", "macs", "bytes", "roof_seconds", "mem_bound_seconds"}}``;
            ``mem_bound_seconds`` is the time of MAC ops whose bytes / bandwidth exceed MACs / peak.
    """

    def __init__(self, *, stage_of: Callable[[], str | None], peak_macs: float, bandwidth: float) -> None:
        super().__init__()
        from voszoo.profiling import mac_formulas

        self.stage_of = stage_of
        self.peak_macs, self.bandwidth = peak_macs, bandwidth
        self.formulas = mac_formulas()
        self.records: dict[tuple[str, str], dict[str, float]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.thread_time()
        out = func(*args, **kwargs)
        seconds = time.thread_time() - start
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        macs = formula(*args, **kwargs, out_val=out) / 2.0 if formula is not None else 0.0
        nbytes = 0
        if not func.is_view:
            tensors = tree_flatten((args, kwargs, out))[0]
            nbytes = sum(_tensor_bytes(t) for t in tensors if isinstance(t, torch.Tensor))
        compute, memory = macs / self.peak_macs, nbytes / self.bandwidth
        key = (self.stage_of() or "outside", str(packet) + _conv_kind(packet, args))
        record = self.records.setdefault(
            key, dict.fromkeys(("calls", "seconds", "macs", "bytes", "roof_seconds", "mem_bound_seconds"), 0.0)
        )
        record["view"] = float(func.is_view)
        record["calls"] += 1
        record["seconds"] += seconds
        record["macs"] += macs
        record["bytes"] += nbytes
        record["roof_seconds"] += max(compute, memory)
        if macs > 0 and memory > compute:
            record["mem_bound_seconds"] += seconds
        return out


# -- analysis -------------------------------------------------------------------------------------------------------
def summarise_stage(
    ops: dict[str, dict[str, float]], *, cpu_seconds: float, frames: int, peak_gmacs: float, bandwidth_gbs: float
) -> dict[str, Any]:
    """One stage's figures from its census ``ops`` ({op name: record}, summed over ``frames`` frames) and its CPU
    seconds per frame from the timed run: MACs, achieved rate, ratio, roofline bound, time by op class, the ops
    that take longest, and the reason when the ratio is below :data:`RATIO_GOAL`."""
    per_frame = {
        name: {key: value if key == "view" else value / frames for key, value in record.items()}
        for name, record in ops.items()
    }
    macs = sum(r["macs"] for r in per_frame.values())
    kinds = ("mac_memory_bound", "mac_compute_bound", "elementwise", "resampling", "layout", "framework")
    classes = dict.fromkeys(kinds, 0.0)
    for name, r in per_frame.items():
        kind = op_class(name, r["macs"], view=bool(r.get("view")))
        if kind == "mac":
            classes["mac_memory_bound"] += r["mem_bound_seconds"]
            classes["mac_compute_bound"] += r["seconds"] - r["mem_bound_seconds"]
        else:
            classes[kind] += r["seconds"]
    op_seconds = sum(r["seconds"] for r in per_frame.values())
    classes["framework"] += max(cpu_seconds - op_seconds, 0.0)  # outside every op: Python, dispatch
    mac_seconds = classes["mac_memory_bound"] + classes["mac_compute_bound"]
    mac_bytes = sum(r["bytes"] for r in per_frame.values() if r["macs"] > 0)
    achieved = macs / cpu_seconds / 1e9 if cpu_seconds > 0 else 0.0
    top = sorted(per_frame.items(), key=lambda item: -item[1]["seconds"])[:4]
    summary = {
        "macs": macs,
        "cpu_ms": 1000.0 * cpu_seconds,
        "achieved_gmacs": achieved,
        "ratio": achieved / peak_gmacs,
        "op_cpu_ms": 1000.0 * op_seconds,
        "mac_ops_gmacs": macs / mac_seconds / 1e9 if mac_seconds > 0 else None,
        "mac_ops_intensity": macs / mac_bytes if mac_bytes > 0 else None,
        "bytes": sum(r["bytes"] for r in per_frame.values()),
        "roofline_ms": 1000.0 * sum(r["roof_seconds"] for r in per_frame.values()),
        "class_ms": {kind: 1000.0 * seconds for kind, seconds in classes.items()},
        "top_ops": [
            {"op": name, "ms": 1000.0 * r["seconds"], "gmacs": r["macs"] / 1e9, "mb": r["bytes"] / 2**20}
            for name, r in top
        ],
    }
    summary["reason"] = diagnose(summary, peak_gmacs=peak_gmacs, bandwidth_gbs=bandwidth_gbs)
    return summary


def diagnose(stage: dict[str, Any], *, peak_gmacs: float, bandwidth_gbs: float) -> str | None:
    """Why a stage is below :data:`RATIO_GOAL` of the attainable rate: the op class that takes the largest share of
    its CPU time, with the measurement behind it; None when it is not below."""
    if stage["ratio"] >= RATIO_GOAL:
        return None
    classes = stage["class_ms"]
    total = sum(classes.values())
    if total <= 0:
        return "no measurable CPU time"
    (kind, ms), (second, second_ms) = sorted(classes.items(), key=lambda item: -item[1])[:2]
    share = f"{ms / total:.0%} of its CPU time"
    runner_up = f"; then {CLASS_LABELS[second]} {second_ms / total:.0%}" if second_ms >= 0.2 * total else ""
    return _reason(kind, share, stage, peak_gmacs=peak_gmacs, bandwidth_gbs=bandwidth_gbs) + runner_up


def _reason(kind: str, share: str, stage: dict[str, Any], *, peak_gmacs: float, bandwidth_gbs: float) -> str:
    ops = ", ".join(f"{op['op'].removeprefix('aten.')} {op['ms']:.0f} ms" for op in stage["top_ops"][:3])
    balance = peak_gmacs / bandwidth_gbs
    intensity = stage["mac_ops_intensity"]
    if kind == "mac_memory_bound":
        return (
            f"memory-bound: {share} in MAC ops that move more bytes than the attainable rate can use "
            f"({intensity:.1f} MACs/byte over the stage's MAC ops; machine balance {balance:.1f}); top: {ops}"
        )
    if kind == "mac_compute_bound":
        rate = stage["mac_ops_gmacs"] or 0.0
        return (
            f"kernel efficiency: {share} in compute-bound MAC ops that run at {rate:.1f} GMAC/s, "
            f"{rate / peak_gmacs:.0%} of the mm (shapes / data layout of the kernels); top: {ops}"
        )
    if kind == "framework":
        return (
            f"framework overhead: {share} outside kernels (Python, dispatch, views, allocation: the stage's CPU "
            f"time minus its kernels'); top ops: {ops}"
        )
    if kind == "layout":
        return f"data layout: {share} in copies, cat, padding and indexing; top: {ops}"
    if kind == "resampling":
        return f"resampling: {share} in interpolation, grid sampling and pooling (no MACs); top: {ops}"
    return f"elementwise: {share} in ops without MACs (activations, norms, softmax, reductions, arithmetic); top: {ops}"


# -- one preset -----------------------------------------------------------------------------------------------------
def measure_preset(
    name: str,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    warmup: int,
    overrides: list[str] | None = None,
    seed: int = 0,
    mm_size: int = 2048,
    mm_repeats: int = 5,
) -> dict[str, Any]:
    """The roofline figures of preset ``name`` on ``images`` (T, H, W, 3) uint8 with reference ``labels``: frame 0
    is the reference, the next ``warmup`` are untimed, the rest timed (then counted in a second session)."""
    from voszoo.inference.session import InferenceSession
    from voszoo.models.registry import build_memory_policy, build_model, random_weights_config
    from voszoo.stage_timing import StageTimer

    timed = len(images) - 1 - warmup
    if timed < 1:
        raise ValueError(f"{len(images)} frames leave no timed frame after the reference and {warmup} warm-up frames")
    load_before = os.getloadavg()[0]
    mm = attainable_mm(size=mm_size, repeats=mm_repeats)
    bandwidth = copy_bandwidth()
    cfg = random_weights_config(name, overrides or [])
    torch.manual_seed(seed)
    model = build_model(cfg).eval()

    def session() -> InferenceSession:
        return InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg), device=torch.device("cpu"))

    timing, walls, process = session(), [], []
    with StageTimer(model, clock=time.thread_time) as timer:
        for index, image in enumerate(images):
            wall, cpu = time.perf_counter(), time.process_time()
            with timer.frame():
                timing.step(image, labels if index == 0 else None)
            walls.append(time.perf_counter() - wall)
            process.append(time.process_time() - cpu)
    del timing
    stage_cpu = timer.mean(skip=1 + warmup)

    counting = session()
    census = OpCensus(stage_of=lambda: counter.stage, peak_macs=mm["gmacs_cpu"] * 1e9, bandwidth=bandwidth * 1e9)
    with StageTimer(model) as counter:
        for index, image in enumerate(images):
            with counter.frame():
                if index <= warmup:
                    counting.step(image, labels if index == 0 else None)
                    continue
                with census:
                    counting.step(image)

    mm_after = attainable_mm(size=mm_size, repeats=mm_repeats)  # the better of before and after is the roof
    peak = max(mm["gmacs_cpu"], mm_after["gmacs_cpu"])
    by_stage: dict[str, dict[str, dict[str, float]]] = {stage: {} for stage in STAGE_NAMES}
    for (stage, op), record in census.records.items():
        by_stage.setdefault(stage, {})[op] = record
    stages = {
        stage: summarise_stage(
            by_stage[stage],
            cpu_seconds=stage_cpu[stage] / 1000.0,
            frames=timed,
            peak_gmacs=peak,
            bandwidth_gbs=bandwidth,
        )
        for stage in STAGE_NAMES
    }
    macs = sum(stage["macs"] for stage in stages.values())
    cpu_seconds = stage_cpu["total"] / 1000.0
    achieved = macs / cpu_seconds / 1e9
    return {
        "attainable_gmacs": peak,
        "attainable_gmacs_before_after": [mm["gmacs_cpu"], mm_after["gmacs_cpu"]],
        "attainable_gmacs_wall": max(mm["gmacs_wall"], mm_after["gmacs_wall"]),
        "bandwidth_gbs": bandwidth,
        "macs_per_frame": macs,
        "cpu_s_per_frame": cpu_seconds,
        "process_cpu_s_per_frame": float(np.mean(process[1 + warmup :])),
        "wall_s_per_frame": float(np.mean(walls[1 + warmup :])),
        "achieved_gmacs": achieved,
        "ratio": achieved / peak,
        "roofline_ms": sum(stage["roofline_ms"] for stage in stages.values()),
        "stages": stages,
        "objects": int(np.count_nonzero(np.unique(labels))),
        "timed_frames": timed,
        "memory_policy": repr(build_memory_policy(cfg)),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _row(name: str, label: str, size: tuple[int, int], **fields: Any) -> dict[str, Any]:
    return {"preset": name, "size": label, "input": list(size), "threads": torch.get_num_threads(), **fields}


def run_in_process(name: str, label: str, size: tuple[int, int], **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_preset` here, an exception turned into a failed row."""
    started = time.time()
    try:
        row = _row(name, label, size, status="ok", **measure_preset(name, **kwargs))
    except Exception as error:  # a failing preset is a row, the others still run
        traceback.print_exc(file=sys.stderr)
        row = _row(name, label, size, status="failed", error=f"{type(error).__name__}: {error}")
    row["minutes"] = round((time.time() - started) / 60.0, 2)
    return row


def run_isolated(name: str, label: str, *, video: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same in a child process (this script with ``--worker``): a crash or a memory blow-up of one preset
    cannot end the run, and every preset starts from a fresh allocator."""
    with tempfile.TemporaryDirectory(prefix="voszoo-roofline-") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(video), "--models", name]
        command += ["--size", label, "--warmup", str(args.warmup), "--threads", str(args.threads)]
        command += ["--seed", str(args.seed), "--mm-size", str(args.mm_size), "--out", str(out)]
        command += [f"--override={override}" for override in args.override]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.is_file():
            return json.loads(out.read_text())
    tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
    return {"preset": name, "size": label, "status": "failed", "error": f"worker exited {completed.returncode}: {tail}"}


# -- output ---------------------------------------------------------------------------------------------------------
def merge_row(result: dict[str, Any], row: dict[str, Any]) -> None:
    """Put ``row`` into ``result["results"]``, replacing the row of the same preset and size."""
    rows = result.setdefault("results", [])
    rows[:] = [r for r in rows if (r["preset"], r["size"]) != (row["preset"], row["size"])] + [row]


def run_attainable(result: dict[str, Any]) -> float:
    """The machine's attainable rate over a whole run: the best mm rate measured in it (at the start and around
    every preset). Measured under other processes' load, each mm is a lower bound of the roof; the best is the
    closest, so ratios against it are conservative."""
    rates = [row["attainable_gmacs"] for row in result.get("results", []) if row.get("status") == "ok"]
    start = result.get("machine", {}).get("attainable_mm_at_start", {}).get("gmacs_cpu")
    return max([*rates, *([start] if start else [])])


def format_markdown(rows: list[dict[str, Any]], *, attainable: float | None = None) -> str:
    """Two tables: per preset (rates, ratio, ratio per stage) and the stages below the goal with their reasons.
    Ratios are against ``attainable`` (GMAC/s; default: each row's own mm rate)."""
    header = ["preset", "size", "GMACs/frame", "CPU s/frame", "wall s/frame", "achieved GMAC/s", "mm in its child"]
    header += ["ratio", *(f"{stage} ratio (ms)" for stage in STAGE_NAMES), "load"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reasons = ["| preset | stage | ratio | share of frame CPU | roofline bound / CPU time | reason |"]
    reasons.append("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["preset"], r["size"])):
        if row["status"] != "ok":
            lines.append(f"| {row['preset']} | {row['size']} | failed: {row['error'][:120].replace('|', '/')} |")
            continue
        peak = attainable or row["attainable_gmacs"]
        stages = {name: {**stage, "ratio": stage["achieved_gmacs"] / peak} for name, stage in row["stages"].items()}
        for stage in stages.values():
            stage["reason"] = diagnose(stage, peak_gmacs=peak, bandwidth_gbs=row["bandwidth_gbs"])
        cells = [f"{row['macs_per_frame'] / 1e9:.1f}", f"{row['cpu_s_per_frame']:.2f}"]
        cells.append(f"{row['wall_s_per_frame']:.2f}")
        ratio = row["achieved_gmacs"] / peak
        cells += [f"{row['achieved_gmacs']:.1f}", f"{row['attainable_gmacs']:.1f}", f"**{ratio:.0%}**"]
        cells += [f"{stages[s]['ratio']:.0%} ({stages[s]['cpu_ms']:.0f})" for s in STAGE_NAMES]
        cells.append("{} / {}".format(*row["load_average_1min"]))
        lines.append("| " + " | ".join([row["preset"], row["size"], *cells]) + " |")
        frame_ms = 1000.0 * row["cpu_s_per_frame"]
        for stage in STAGE_NAMES:
            figures = stages[stage]
            if figures["reason"] is None or figures["cpu_ms"] < 0.05 * frame_ms:
                continue  # below the goal but under 5 % of the frame: not what holds the preset back
            bound = figures["roofline_ms"] / figures["cpu_ms"] if figures["cpu_ms"] > 0 else 0.0
            reasons.append(
                f"| {row['preset']} | {stage} | {figures['ratio']:.0%} | {figures['cpu_ms'] / frame_ms:.0%} | "
                f"{bound:.0%} | {figures['reason'].replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(reasons)


# -- command line ---------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_roofline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated presets (default: every preset in conf/model)")
    parser.add_argument("--size", default="480p", help="frame size: 480p, 240p or HxW")
    parser.add_argument("--frames", type=int, default=1, help="timed (and counted) frames")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames after the reference frame")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (mm and presets alike)")
    parser.add_argument("--mm-size", type=int, default=2048, help="side of the attainable-rate matmul")
    parser.add_argument("--seed", type=int, default=0, help="ToyVOS video seed and weight initialisation seed")
    parser.add_argument("--override", action="append", default=[], help="model config override (repeat)")
    parser.add_argument("--force", action="store_true", help="re-measure presets already in --out")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True, help="a child per preset")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON merged into (default: {DEFAULT_OUT})")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # child mode: one preset on a saved video
    return parser


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    if text in NAMED_SIZES:
        return text, NAMED_SIZES[text]
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit()) or min(int(height), int(width)) < 32:
        raise ValueError(f"--size: {text!r} is neither one of {', '.join(NAMED_SIZES)} nor HxW (>= 32x32)")
    return text, (int(height), int(width))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from voszoo.data.io import atomic_write_bytes
    from voszoo.models.registry import list_models
    from voszoo.profiling import machine_info

    try:
        if args.threads < 1 or args.frames < 1 or args.warmup < 0:
            raise ValueError("need --threads >= 1, --frames >= 1 and --warmup >= 0")
        torch.set_num_threads(args.threads)
        label, size = parse_size(args.size)
        valid = list_models()
        models = valid if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in valid]
        if unknown or not models:
            raise ValueError(f"--models: unknown preset(s) {unknown or args.models!r}; valid: {', '.join(valid)}")
    except ValueError as error:
        print(f"bench_roofline: {error}", file=sys.stderr)
        return 2
    common = dict(warmup=args.warmup, overrides=args.override, seed=args.seed, mm_size=args.mm_size)
    if args.worker is not None:
        with np.load(args.worker) as video:
            row = run_in_process(models[0], label, size, images=video["images"], labels=video["labels"], **common)
        atomic_write_bytes(args.out, (json.dumps(row) + "\n").encode())
        return 0

    from voszoo.data.toy import render_toyvos_video

    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    done = {(r["preset"], r["size"]) for r in result.get("results", []) if r.get("status") == "ok"}
    todo = [m for m in models if args.force or (m, label) not in done]
    result["machine"] = {**machine_info("cpu"), "attainable_mm_at_start": attainable_mm(size=args.mm_size)}
    result["settings"] = {
        "size": label, "frames": args.frames, "warmup": args.warmup, "threads": args.threads, "seed": args.seed,
        "video": f"ToyVOS render_toyvos_video(seed={args.seed}, index=0)", "weights": "random init",
        "overrides": list(args.override), "clock": "time.thread_time (CPU time); wall beside it",
    }  # fmt: skip
    video, _ = render_toyvos_video(seed=args.seed, index=0, frames=1 + args.warmup + args.frames, size=size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="voszoo-roofline-video-") as tmp:
        path = Path(tmp) / "video.npz"
        np.savez(path, images=video.frames, labels=video.labels[0])
        for name in todo:
            print(f"{name} ({label}) ...", file=sys.stderr, flush=True)
            if args.isolate:
                row = run_isolated(name, label, video=path, args=args)
            else:
                row = run_in_process(name, label, size, images=video.frames, labels=video.labels[0], **common)
            merge_row(result, row)
            atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
            if row["status"] != "ok":
                failed.append(name)
    attainable = run_attainable(result)
    print(
        f"attainable (best fp32 {args.mm_size}^3 mm of the run, CPU time, {args.threads} thread(s)): "
        f"{attainable:.1f} GMAC/s"
    )
    print(format_markdown(result.get("results", []), attainable=attainable))
    print(f"written {args.out}")
    if failed:
        print(f"bench_roofline: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
