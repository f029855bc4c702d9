"""Memory over a long video, with and without a ``max_frames`` cap, for every model preset (issue 10).

For every preset (``voszoo.models.registry.list_models()``, or ``--models a,b``) the preset is built with random
weights (every ``weights`` key of its config null: speed and memory do not depend on them) and runs a synthetic
video of ``--frames`` frames at ``--size`` through :class:`voszoo.inference.session.InferenceSession`, twice: with
the preset's memory policy capped at ``--max-frames`` long-term entries, and uncapped (``max_frames=None``). The
video is a ToyVOS clip (``voszoo.data.toy.render_toyvos_video``, seed ``--seed``, video 0) of ``--clip-frames``
frames played forwards and backwards until ``--frames`` (rendering 1000 frames at 480p would itself take gigabytes);
frame 0 carries its ToyVOS masks.

Recorded after every frame:

- ``held_mb``: what the session's memory banks hold (:meth:`voszoo.memory.MemoryBank.held_bytes`: entries,
  stacking buffers and per-video state, every storage counted once), exact;
- ``peak_mb``: the peak memory growth since the video started over the memory in use just before it, as
  ``voszoo.profiling`` measures it: on CPU the peak resident set size (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size before; on CUDA ``torch.cuda.max_memory_allocated`` minus the
  allocated memory before. Every run is in its own child process, so memory kept from earlier runs hides nothing.

Reported per run: both at frame ``--at`` (default 100; the last frame if the video is shorter) and at the end, and
their ratio end / at (issue 10 asks for a peak within 10% of its frame-100 value with a cap). Results go to ``--out``
(default ``benchmarks/results/long_video.json``), a PNG of the curves next to it if matplotlib is importable, and a
Markdown table is printed. A failing run becomes a row with ``status: failed``; the others still run and the script
exits with status 1.

``--caps capped`` runs only the capped run (an uncapped memory that keeps every 5th frame makes a 1000-frame video at
full size take hours for the heavier presets, and the reduced size already shows its growth). The JSON is rewritten
after every run, and ``--resume`` keeps the ``ok`` rows already in ``--out`` that were measured with the same
settings and runs only the missing ones, so a full-size benchmark can be spread over several sessions, one preset at
a time.

    python benchmarks/bench_long_video.py                                   # every preset, 1000 frames at 480x854
    python benchmarks/bench_long_video.py --models stm_r18,aot_t --frames 30 --size 48x64
"""

from __future__ import annotations

import argparse
import json
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

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "long_video.json"
_MIB = 1024.0 * 1024.0


# -- inputs ---------------------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (height, width), at least 32x32 (ToyVOS and the model strides need it)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if match is None:
        raise ValueError(f"--size: {text!r} does not look like HxW (e.g. 480x854)")
    height, width = int(match.group(1)), int(match.group(2))
    if min(height, width) < 32:
        raise ValueError(f"--size: {text!r} is too small; ToyVOS needs at least 32x32")
    return height, width


def ping_pong(count: int, frames: int) -> list[int]:
    """Indices into a clip of ``count`` frames that play it forwards, backwards, forwards... for ``frames`` frames
    (0, 1, ..., count-1, count-2, ..., 1, 0, 1, ...): consecutive frames are always neighbours in the clip."""
    if count == 1:
        return [0] * frames
    period = 2 * (count - 1)
    return [t % period if t % period < count else period - t % period for t in range(frames)]


def preset_config(name: str) -> Any:
    """The composed config of preset ``name`` with random initialisation (every ``weights`` key null)."""
    from voszoo.models.registry import random_weights_config

    return random_weights_config(name)


# -- one run --------------------------------------------------------------------------------------------------------
def run_video(
    name: str,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    frames: int,
    max_frames: int | None,
    at: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    """Preset ``name`` on ``frames`` frames played ping-pong from the clip ``images`` (T, H, W, 3) uint8, reference
    ``labels`` (H, W), with its memory policy capped at ``max_frames``. Returns the measured fields of a row."""
    from tqdm import tqdm

    from voszoo.inference.session import InferenceSession
    from voszoo.models.registry import build_memory_policy, build_model
    from voszoo.profiling import PeakMemory

    cfg = preset_config(name)
    torch.manual_seed(seed)
    model = build_model(cfg).to(device).eval()
    session = InferenceSession(
        model, policy_factory=lambda: build_memory_policy(cfg, max_frames=max_frames), device=device
    )
    peak = PeakMemory(device)
    held_mb, peak_mb = [], []
    started = time.perf_counter()
    peak.start(strict=True)  # a growth curve needs a resettable peak
    order = ping_pong(len(images), frames)
    for t, index in enumerate(tqdm(order, desc=f"{name} max_frames={max_frames}", disable=None, file=sys.stderr)):
        session.step(images[index], labels if t == 0 else None)
        held = sum(memory.held_bytes() for group in session.groups for memory in group.memories)
        held_mb.append(round(held / _MIB, 4))
        peak_mb.append(round(peak.read(), 3))
    seconds = time.perf_counter() - started
    return {
        "policy": repr(build_memory_policy(cfg, max_frames=max_frames)),
        "objects": int(np.count_nonzero(np.unique(labels))),
        "seconds": round(seconds, 2),
        **summary(held_mb, peak_mb, at=at),
        "held_mb": held_mb,
        "peak_mb": peak_mb,
    }


def summary(held_mb: list[float], peak_mb: list[float], *, at: int) -> dict[str, Any]:
    """Values after frame ``at`` (1-based) and after the last frame, and their ratios end / at."""

    def ratio(end: float, start: float) -> float | None:
        return round(end / start, 4) if start > 0 else None

    i = min(at, len(peak_mb)) - 1
    return {
        "at_frame": i + 1,
        "held_mb_at": held_mb[i],
        "held_mb_end": held_mb[-1],
        "held_ratio": ratio(held_mb[-1], held_mb[i]),
        "peak_mb_at": peak_mb[i],
        "peak_mb_end": peak_mb[-1],
        "peak_ratio": ratio(peak_mb[-1], peak_mb[i]),
    }


def _row(name: str, max_frames: int | None, **fields: Any) -> dict[str, Any]:
    return {"preset": name, "max_frames": max_frames, **fields}


def run_in_process(name: str, max_frames: int | None, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_video` in this process, any exception turned into a failed row."""
    try:
        return _row(name, max_frames, status="ok", **run_video(name, max_frames=max_frames, **kwargs))
    except Exception as error:  # a failing run is a row, the others still run
        traceback.print_exc(file=sys.stderr)
        return _row(name, max_frames, status="failed", error=f"{type(error).__name__}: {error}")


def run_isolated(name: str, max_frames: int | None, *, clip_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same in a fresh child process (this script with ``--worker``): the CPU peak is this run's alone."""
    with tempfile.TemporaryDirectory(prefix="voszoo-long-video-") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(clip_path), "--models", name]
        command += ["--frames", str(args.frames), "--at", str(args.at), "--device", args.device]
        command += ["--seed", str(args.seed), "--out", str(out), "--max-frames", str(max_frames or 0)]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # stderr: progress
        if out.is_file():
            return json.loads(out.read_text())
    return _row(name, max_frames, status="failed", error=f"worker exited with {completed.returncode} (see stderr)")


# -- output ---------------------------------------------------------------------------------------------------------
def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    header = ["preset", "max_frames", "at frame", "held MB at", "held MB end", "peak MB at", "peak MB end"]
    header += ["peak end/at", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cap = "none" if row["max_frames"] is None else str(row["max_frames"])
        if row["status"] == "ok":
            cells = [str(row["at_frame"]), _number(row["held_mb_at"], 2), _number(row["held_mb_end"], 2)]
            cells += [_number(row["peak_mb_at"], 1), _number(row["peak_mb_end"], 1), _number(row["peak_ratio"], 3)]
            status = "ok"
        else:
            cells = ["-"] * 6
            status = "failed: " + row["error"].replace("|", "/").replace("\n", " ")
        lines.append("| " + " | ".join([row["preset"], cap, *cells, status]) + " |")
    return "\n".join(lines)


def write_png(rows: list[dict[str, Any]], path: Path) -> bool:
    """Per preset, peak memory (solid) and held memory (dashed) against the frame, capped and uncapped. Returns
    False (and writes nothing) when matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    presets = list(dict.fromkeys(row["preset"] for row in rows if row["status"] == "ok"))
    if not presets:
        return False
    columns = min(4, len(presets))
    lines = -(-len(presets) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for ax in axes.flat[len(presets) :]:
        ax.axis("off")
    for ax, preset in zip(axes.flat, presets, strict=False):
        for row in rows:
            if row["preset"] != preset or row["status"] != "ok":
                continue
            label = "no cap" if row["max_frames"] is None else f"max_frames={row['max_frames']}"
            x = np.arange(1, len(row["peak_mb"]) + 1)
            (line,) = ax.plot(x, row["peak_mb"], label=f"peak, {label}")
            ax.plot(x, row["held_mb"], linestyle="--", color=line.get_color(), label=f"held, {label}")
        ax.set_title(preset)
        ax.set_xlabel("frame")
        ax.set_ylabel("MB")
        ax.legend(fontsize=6)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# -- command line ---------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_long_video.py",
        description="Held and peak memory after every frame of a long synthetic video, for every voszoo preset with "
        "and without a max_frames memory cap (randomly initialised weights).",
    )
    parser.add_argument("--models", help="comma-separated presets (default: every preset in conf/model)")
    parser.add_argument("--frames", type=int, default=1000, help="frames of the video (default 1000)")
    parser.add_argument("--size", default="480x854", help="frame size HxW (default 480x854)")
    parser.add_argument("--max-frames", type=int, default=5, help="long-term memory cap of the capped run (default 5)")
    parser.add_argument("--at", type=int, default=100, help="frame compared with the end (default 100)")
    parser.add_argument("--clip-frames", type=int, default=50, help="ToyVOS frames rendered, played ping-pong")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="ToyVOS video seed and weight initialisation seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--caps", choices=("both", "capped", "uncapped"), default="both", help="which runs per preset (default both)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the ok rows of --out measured with these settings; run the rest"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # child mode: one run on a saved clip
    return parser


def _check(args: argparse.Namespace) -> list[str]:
    from voszoo.models.registry import list_models

    for option, value, least in (
        ("--frames", args.frames, 1),
        ("--at", args.at, 1),
        ("--clip-frames", args.clip_frames, 1),
        ("--max-frames", args.max_frames, 1),
    ):
        if value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    parse_size(args.size)
    valid = list_models()
    models = valid if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in valid]
    if unknown or not models:
        raise ValueError(f"--models: unknown preset(s) {unknown or args.models!r}; valid: {', '.join(valid)}")
    return models


def _worker(args: argparse.Namespace, device: torch.device) -> int:
    """Child mode: one preset, one cap (``--max-frames 0`` = none) on the clip saved at ``args.worker``."""
    from voszoo.data.io import atomic_write_bytes

    with np.load(args.worker) as clip:
        images, labels = clip["images"], clip["labels"]
    max_frames = args.max_frames or None
    row = run_in_process(
        args.models,
        max_frames,
        images=images,
        labels=labels,
        frames=args.frames,
        at=args.at,
        device=device,
        seed=args.seed,
    )
    atomic_write_bytes(args.out, (json.dumps(row) + "\n").encode())
    return 0


def resumed_rows(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``ok`` rows of an earlier result at ``path`` (none if it does not exist); ValueError naming the file and
    the setting when it was measured with other settings (its rows would not be comparable)."""
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
        earlier_settings, rows = earlier["settings"], earlier["results"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--resume: {path} is not a bench_long_video result ({error})") from error
    for key, value in settings.items():
        if earlier_settings.get(key) != value:
            raise ValueError(
                f"--resume: {path} was measured with {key}={earlier_settings.get(key)!r}, this run asks for {value!r}; "
                "use another --out or the same settings"
            )
    return [row for row in rows if row.get("status") == "ok"]


def _has_row(rows: list[dict[str, Any]], name: str, max_frames: int | None) -> bool:
    return any(row["preset"] == name and row["max_frames"] == max_frames for row in rows)


def _write(out: Path, device: torch.device, settings: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    from voszoo.data.io import atomic_write_bytes

    result = {"machine": machine_info(device), "settings": settings, "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(result) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from voszoo.data.io import VOSDataError
    from voszoo.device import resolve_device

    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        device = torch.device(resolve_device(args.device))
        if args.worker is not None:
            return _worker(args, device)
        models = _check(args)
    except (ValueError, VOSDataError) as error:
        print(f"bench_long_video: {error}", file=sys.stderr)
        return 2

    from voszoo.data.toy import render_toyvos_video

    size = parse_size(args.size)
    settings = {
        "frames": args.frames,
        "size": list(size),
        "max_frames": args.max_frames,
        "at": args.at,
        "clip_frames": min(args.clip_frames, args.frames),
        "seed": args.seed,
        "video": f"ToyVOS render_toyvos_video(seed={args.seed}, index=0), played forwards and backwards",
        "weights": "random init (every `weights` key null, RAFT included)",
        "units": "MB = 2**20 bytes; peak_mb = peak growth since the video started, held_mb = memory banks",
    }
    try:
        rows = resumed_rows(args.out, settings) if args.resume else []
    except ValueError as error:
        print(f"bench_long_video: {error}", file=sys.stderr)
        return 2
    caps = {"both": (args.max_frames, None), "capped": (args.max_frames,), "uncapped": (None,)}[args.caps]
    todo = [(name, cap) for name in models for cap in caps if not _has_row(rows, name, cap)]
    if args.resume:
        print(f"bench_long_video: {len(rows)} run(s) kept from {args.out}, {len(todo)} to run", file=sys.stderr)
    started = time.time()
    minutes = 0.0
    if todo:
        clip, _ = render_toyvos_video(seed=args.seed, index=0, frames=settings["clip_frames"], size=size)
        with tempfile.TemporaryDirectory(prefix="voszoo-long-video-clip-") as tmp:
            clip_path = Path(tmp) / "clip.npz"
            np.savez(clip_path, images=clip.frames, labels=clip.labels[0])
            del clip
            for name, max_frames in todo:
                row = run_isolated(name, max_frames, clip_path=clip_path, args=args)
                row["minutes"] = round((time.time() - started) / 60.0 - minutes, 2)
                minutes += row["minutes"]
                rows.append(row)
                _write(args.out, device, settings, rows)  # after every run: a killed benchmark keeps what it measured
    else:
        _write(args.out, device, settings, rows)
    print(format_markdown(rows))
    print(f"written {args.out}")
    png = args.out.with_suffix(".png")
    if write_png(rows, png):
        print(f"written {png}")
    else:
        print("no PNG: matplotlib is not importable", file=sys.stderr)
    failed = [f"{row['preset']} (max_frames={row['max_frames']})" for row in rows if row["status"] != "ok"]
    if failed:
        print(f"bench_long_video: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
