"""Inference speed of every model preset: FPS, milliseconds per stage and peak memory (issue 10).

For every preset (``voszoo.models.registry.list_models()``, or ``--models a,b``) and every frame size (``--sizes``,
default ``480p`` = 480x854 and ``240p`` = 240x427; or ``HxW``) the preset is built with random weights (every
``weights`` key of its config set to null: the encoders and BATMAN's RAFT are randomly initialised, as
``python -m voszoo.profiling`` and voszoo-bench profile them; speed does not depend on the weights) and runs a
synthetic ToyVOS video (``voszoo.data.toy.render_toyvos_video``, seed ``--seed``, video 0, rendered at the size)
through :class:`voszoo.inference.session.InferenceSession` with the preset's memory policy, one frame per ``step``:
the reference frame (its ToyVOS masks), ``--warmup`` untimed frames, then ``--frames`` timed frames.

Recorded per preset and size:

- ``fps``: timed frames over their wall time (session pre/post-processing included);
- ``stage_ms``: mean milliseconds per timed frame of ``backbone`` (encode), ``memory_write`` (memorize),
  ``matching`` and ``decoder`` (segment, split at the decoder's call) and ``other`` (the session's own work), from
  :class:`voszoo.stage_timing.StageTimer`; ``ms_per_frame`` is their sum;
- ``cpu_ms_per_frame``: CPU time of this process (every thread) per timed frame: unlike ``fps`` and ``stage_ms``
  it hardly grows when other processes compete for the cores (with one thread it is the work itself; with more,
  it includes OpenMP threads spinning at barriers), and ``load_average_1min`` after the run says how busy the
  machine was;
- ``peak_mem_mb``: peak memory growth of the whole session (reference frame included) over the memory in use
  before it, as ``voszoo.profiling`` measures it (CUDA allocator peak; on CPU the peak resident set size, which is
  only meaningful in a fresh process: by default every preset runs in its own child process, ``--no-isolate``
  runs them all in this one);
- the machine: device, torch version, CPU model name, threads, load average (other processes slow every number).

A failing preset becomes a row with ``status: failed`` and its error; the others still run and the script exits
with status 1. Results go to ``--out`` (default ``benchmarks/results/inference.json``) and a Markdown table is
printed.

    python benchmarks/bench_inference.py                                   # every preset, 480p and 240p
    python benchmarks/bench_inference.py --models stm_r18,aot_t --sizes 240p --frames 5 --warmup 1
    python benchmarks/bench_inference.py --device cuda --amp bf16 --sizes 480p
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voszoo.profiling import machine_info

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference.json"
NAMED_SIZES = {"480p": (480, 854), "240p": (240, 427)}
STAGE_COLUMNS = ("backbone", "memory_write", "matching", "decoder", "other")


# -- inputs ---------------------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """``"480p"`` / ``"240p"`` or ``"HxW"`` -> (label, (height, width))."""
    if text in NAMED_SIZES:
        return text, NAMED_SIZES[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise ValueError(f"--sizes: {text!r} is neither one of {', '.join(NAMED_SIZES)} nor HxW (e.g. 64x64)")
    height, width = int(match.group(1)), int(match.group(2))
    if min(height, width) < 32:
        raise ValueError(f"--sizes: {text!r} is too small; ToyVOS needs at least 32x32")
    return text, (height, width)


def render_video(size: tuple[int, int], *, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ToyVOS video of ``frames`` frames at ``size`` (H, W): images (T, H, W, 3) uint8 and the reference frame's
    labels (H, W) uint8."""
    from voszoo.data.toy import render_toyvos_video

    video, _ = render_toyvos_video(seed=seed, index=0, frames=frames, size=size)
    return video.frames, video.labels[0]


def preset_config(name: str, overrides: list[str]) -> Any:
    """The composed config of preset ``name`` with random initialisation (every ``weights`` key null)."""
    from voszoo.models.registry import random_weights_config

    return random_weights_config(name, overrides)


# -- one preset -----------------------------------------------------------------------------------------------------
def bench_preset(
    name: str,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    warmup: int,
    device: torch.device,
    amp: str | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    flush_denormal: str = "auto",
) -> dict[str, Any]:
    """Benchmark preset ``name`` on ``images`` (T, H, W, 3) uint8 with reference ``labels`` (H, W): frame 0 is the
    reference, the next ``warmup`` are not timed, the rest are; ``flush_denormal`` is the session's setting (auto,
    on, off). Returns the measured fields of a result row."""
    from voszoo.inference.session import InferenceSession
    from voszoo.models.registry import build_memory_policy, build_model
    from voszoo.profiling import PeakMemory, count_params
    from voszoo.stage_timing import STAGES, StageTimer

    timed_frames = len(images) - 1 - warmup
    if timed_frames < 1:
        raise ValueError(f"{len(images)} frames leave no timed frame after the reference and {warmup} warm-up frames")
    cfg = preset_config(name, overrides or [])
    torch.manual_seed(seed)
    model = build_model(cfg).to(device).eval()
    session = InferenceSession(
        model,
        policy_factory=lambda: build_memory_policy(cfg),
        device=device,
        amp=None if amp == "none" else amp,
        flush_denormal=flush_denormal,
    )
    cpu_seconds = 0.0
    with PeakMemory(device) as peak, StageTimer(model, device=device) as timer:
        for index, image in enumerate(images):
            cpu_start = time.process_time()
            with timer.frame():
                session.step(image, labels if index == 0 else None)
            if index > warmup:
                cpu_seconds += time.process_time() - cpu_start
    stages = timer.mean(skip=1 + warmup)
    seconds = sum(frame["total"] for frame in timer.frames[1 + warmup :]) / 1000.0
    return {
        "fps": timed_frames / seconds,
        "ms_per_frame": stages["total"],
        "cpu_ms_per_frame": 1000.0 * cpu_seconds / timed_frames,
        "stage_ms": {stage: stages[stage] for stage in (*STAGES, "other")},
        "reference_frame_ms": timer.frames[0]["total"],
        "peak_mem_mb": peak.peak_mb,
        "params": count_params(model),
        "objects": int(np.count_nonzero(np.unique(labels))),
        "timed_frames": timed_frames,
        "memory_policy": repr(build_memory_policy(cfg)),
        "flush_denormal": session.flush_denormal,
        "load_average_1min": os.getloadavg()[0],
    }


def _row(name: str, label: str, size: tuple[int, int], **fields: Any) -> dict[str, Any]:
    return {"preset": name, "size": label, "input": list(size), **fields}


def run_in_process(name: str, label: str, size: tuple[int, int], **kwargs: Any) -> dict[str, Any]:
    """:func:`bench_preset` in this process, any exception turned into a failed row."""
    try:
        return _row(name, label, size, status="ok", **bench_preset(name, **kwargs))
    except Exception as error:  # a failing preset is a row, the others still run
        traceback.print_exc(file=sys.stderr)
        return _row(name, label, size, status="failed", error=f"{type(error).__name__}: {error}")


def run_isolated(
    name: str,
    label: str,
    size: tuple[int, int],
    *,
    video_path: Path,
    warmup: int,
    device: torch.device,
    amp: str,
    overrides: list[str],
    seed: int,
    threads: int | None,
    flush_denormal: str = "auto",
) -> dict[str, Any]:
    """The same in a fresh child process (this script with ``--worker``), so that the CPU peak memory is that of
    this preset's session alone and a crash of one preset cannot end the run."""
    with tempfile.TemporaryDirectory(prefix="voszoo-bench-") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(video_path), "--models", name]
        command += ["--sizes", label, "--warmup", str(warmup), "--device", str(device), "--amp", amp]
        command += ["--seed", str(seed), "--out", str(out), "--flush-denormal", flush_denormal]
        command += [f"--override={override}" for override in overrides]
        if threads is not None:
            command += ["--threads", str(threads)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.is_file():
            return json.loads(out.read_text())
    tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
    return _row(name, label, size, status="failed", error=f"worker exited with {completed.returncode}: {tail}")


# -- output ---------------------------------------------------------------------------------------------------------
def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (milliseconds per frame, means over the timed frames)."""
    header = ["preset", "size", "FPS", "ms/frame", "backbone", "memory write", "matching", "decoder", "other"]
    header += ["peak mem (MB)", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["status"] == "ok":
            stages = [_number(row["stage_ms"][stage], 1) for stage in STAGE_COLUMNS]
            cells = [_number(row["fps"], 2), _number(row["ms_per_frame"], 1), *stages, _number(row["peak_mem_mb"], 0)]
            status = "ok"
        else:
            cells = ["-"] * 8
            status = "failed: " + row["error"].replace("|", "/").replace("\n", " ")
        lines.append("| " + " | ".join([row["preset"], row["size"], *cells, status]) + " |")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_inference.py",
        description="Inference FPS, milliseconds per stage (backbone, memory write, matching, decoder) and peak "
        "memory of every voszoo preset on a synthetic ToyVOS video, randomly initialised.",
    )
    parser.add_argument("--models", help="comma-separated presets (default: every preset in conf/model)")
    parser.add_argument("--sizes", default="480p,240p", help="comma-separated frame sizes: 480p, 240p or HxW")
    parser.add_argument("--frames", type=int, default=10, help="timed frames (after the reference and warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames after the reference frame")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast on CUDA")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--flush-denormal",
        choices=("auto", "on", "off"),
        default="auto",
        help="flush subnormal floats to zero during each session step (auto: on a CPU device)",
    )
    parser.add_argument("--seed", type=int, default=0, help="ToyVOS video seed and weight initialisation seed")
    parser.add_argument(
        "--override", action="append", default=[], help="model config override for every preset (repeat)"
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each preset in a fresh child process (default; needed for meaningful CPU peak memory)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # child mode: one preset on a saved video
    return parser


def _check(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, tuple[int, int]]]]:
    from voszoo.models.registry import list_models

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    valid = list_models()
    models = valid if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in valid]
    if unknown or not models:
        raise ValueError(f"--models: unknown preset(s) {unknown or args.models!r}; valid: {', '.join(valid)}")
    sizes = [parse_size(s.strip()) for s in args.sizes.split(",") if s.strip()]
    if not sizes:
        raise ValueError("--sizes: give at least one size")
    return models, sizes


def _worker(args: argparse.Namespace, device: torch.device) -> int:
    """Child mode: one preset on the video saved at ``args.worker``; the row goes to ``args.out``."""
    from voszoo.data.io import atomic_write_bytes

    (label, size), name = parse_size(args.sizes), args.models
    with np.load(args.worker) as video:
        images, labels = video["images"], video["labels"]
    row = run_in_process(
        name,
        label,
        size,
        images=images,
        labels=labels,
        warmup=args.warmup,
        device=device,
        amp=args.amp,
        overrides=args.override,
        seed=args.seed,
        flush_denormal=args.flush_denormal,
    )
    atomic_write_bytes(args.out, (json.dumps(row) + "\n").encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tqdm import tqdm

    from voszoo.data.io import VOSDataError, atomic_write_bytes
    from voszoo.device import resolve_device

    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        device = torch.device(resolve_device(args.device))
        if args.worker is not None:
            return _worker(args, device)
        models, sizes = _check(args)
    except (ValueError, VOSDataError) as error:
        print(f"bench_inference: {error}", file=sys.stderr)
        return 2

    video_frames = 1 + args.warmup + args.frames
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="voszoo-bench-videos-") as tmp:
        videos = {}
        for label, size in sizes:
            images, labels = render_video(size, frames=video_frames, seed=args.seed)
            path = Path(tmp) / f"{label}.npz"
            if args.isolate:
                np.savez(path, images=images, labels=labels)
            videos[label] = (path, images, labels)
        jobs = [(name, label, size) for name in models for label, size in sizes]
        for name, label, size in tqdm(jobs, desc="presets", unit="run", disable=None, file=sys.stderr):
            path, images, labels = videos[label]
            common = dict(warmup=args.warmup, device=device, amp=args.amp, overrides=args.override, seed=args.seed)
            common["flush_denormal"] = args.flush_denormal
            if args.isolate:
                row = run_isolated(name, label, size, video_path=path, threads=args.threads, **common)
            else:
                row = run_in_process(name, label, size, images=images, labels=labels, **common)
            rows.append(row)

    result = {
        "machine": machine_info(device),
        "settings": {
            "frames": args.frames,
            "warmup": args.warmup,
            "seed": args.seed,
            "video": f"ToyVOS render_toyvos_video(seed={args.seed}, index=0)",
            "weights": "random init (every `weights` key null, RAFT included)",
            "amp": args.amp,
            "isolate": args.isolate,
            "overrides": list(args.override),
            "flush_denormal": args.flush_denormal,
            "minutes": round((time.time() - started) / 60.0, 2),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(format_markdown(rows))
    print(f"written {args.out}")
    failed = [f"{row['preset']} ({row['size']})" for row in rows if row["status"] != "ok"]
    if failed:
        print(f"bench_inference: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
