"""What flushing subnormal floats to zero buys at inference (issue 22, item 2), in two parts.

``read``: STM's memory read (``model.reader``: affinity, softmax over memory positions, weighted sum of values) on
its own. A randomly initialised preset (``--read-model``, default ``stm``) runs a ToyVOS video at ``--read-size``
(default 480p) through an inference session that keeps every frame; the reader's inputs of the last frame are kept
and the read is timed with 1 and 6 memory frames (``--memory-frames``), with flush-to-zero on and off in turn
(``--repeats`` times each, interleaved; the median is kept). Also recorded: the fraction of the read's softmax
probabilities that are subnormal (0 < p < 1.18e-38) and the largest difference between the two reads.

Also recorded: the time to enter and leave an empty flush-to-zero block (``block_overhead_ms``).

``presets``: inference FPS and milliseconds per stage of every preset (``--models``) at ``--sizes`` with the
session's ``flush_denormal`` on and off, each run in its own child process by benchmarks/bench_inference.py (same
video, warm-up and timing; its module docstring says what every field counts), the two settings in alternating
order from one preset to the next. Resumable: a (preset, size, setting) already in ``--out`` is not run again
(``--fresh`` starts over), and the JSON is rewritten after every run.

    python benchmarks/bench_denormals.py                                     # both parts, every preset, 480p
    python benchmarks/bench_denormals.py --parts presets --models stm,aot_t --frames 3 --warmup 1
    python benchmarks/bench_denormals.py --parts read --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_inference
import numpy as np
import torch

from voszoo.profiling import machine_info

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "denormals.json"
SETTINGS = ("on", "off")
TINY = torch.finfo(torch.float32).tiny


# -- part 1: the memory read ----------------------------------------------------------------------------------------
def capture_read_inputs(
    name: str, *, size: tuple[int, int], frames: int, seed: int, video: str = "toyvos"
) -> tuple[torch.nn.Module, tuple]:
    """Run preset ``name`` (random init) over ``frames`` frames keeping every frame; returns its reader and the
    reader's positional inputs on the last frame (memory key (B, C_k, T, h, w), memory value, query key, query
    value). ``video``: ``toyvos`` (a ToyVOS video) or ``noise`` (uniform random pixels, as ``voszoo.profiling``
    feeds, with the ToyVOS reference masks)."""
    from voszoo.inference.session import InferenceSession
    from voszoo.memory import KeepAll
    from voszoo.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(bench_inference.preset_config(name, [])).eval()
    reader = getattr(model, "reader", None)
    if not isinstance(reader, torch.nn.Module):
        raise ValueError(f"--read-model: preset {name!r} has no `reader` module (an STM-style memory read)")
    captured: list[tuple] = []
    handle = reader.register_forward_pre_hook(lambda _module, args: captured.append(tuple(args)))
    images, labels = bench_inference.render_video(size, frames=max(frames, 3), seed=seed)
    images = images[:frames]
    if video == "noise":
        images = np.random.default_rng(seed).integers(0, 256, size=images.shape, dtype=np.uint8)
    elif video != "toyvos":
        raise ValueError(f"--read-video must be toyvos or noise, got {video!r}")
    session = InferenceSession(model, policy_factory=KeepAll, flush_denormal="off")
    try:
        for index, image in enumerate(images):
            session.step(image, labels if index == 0 else None)
    finally:
        handle.remove()
    return reader, captured[-1]


def subnormal_fraction(memory_key: torch.Tensor, query_key: torch.Tensor) -> float:
    """Fraction of the read's softmax probabilities that are subnormal, computed without flushing."""
    from voszoo.layers.memory_read import memory_affinity

    fractions = [
        float(((p > 0) & (p < TINY)).float().mean())
        for p in (memory_affinity(memory_key[i : i + 1], query_key[i : i + 1]) for i in range(memory_key.shape[0]))
    ]
    return sum(fractions) / len(fractions)


def block_overhead_ms(repeats: int = 50) -> dict[str, float]:
    """Milliseconds to enter and leave an empty flush-to-zero block (median, 10th and 90th percentile): with more
    than one thread, two wake-ups of the OpenMP team, each thread taking the GIL in turn."""
    from voszoo.inference.denormals import flush_denormals

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        with flush_denormals():
            pass
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return {
        "median": 1000 * statistics.median(seconds),
        "p10": 1000 * seconds[len(seconds) // 10],
        "p90": 1000 * seconds[(9 * len(seconds)) // 10],
        "threads": torch.get_num_threads(),
    }


def bench_read(args: argparse.Namespace) -> list[dict[str, Any]]:
    from voszoo.inference.denormals import flush_denormals

    label, size = bench_inference.parse_size(args.read_size)
    most = max(args.memory_frames)
    reader, (memory_key, memory_value, *query) = capture_read_inputs(
        args.read_model, size=size, frames=most + 1, seed=args.seed, video=args.read_video
    )
    rows = []
    for count in args.memory_frames:
        inputs = (memory_key[:, :, -count:], memory_value[:, :, -count:], *query)
        seconds: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
        outputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for _ in range(args.repeats):
                for setting in SETTINGS:
                    with flush_denormals(setting == "on"):
                        start = time.perf_counter()
                        outputs[setting] = reader(*inputs)
                        seconds[setting].append(time.perf_counter() - start)
            fraction = subnormal_fraction(inputs[0], inputs[2])
        on, off = (statistics.median(seconds[setting]) for setting in SETTINGS)
        rows.append(
            {
                "model": args.read_model,
                "size": label,
                "video": args.read_video,
                "memory_frames": count,
                "memory_key": list(inputs[0].shape),
                "query_key": list(inputs[2].shape),
                "seconds_flush_on": on,
                "seconds_flush_off": off,
                "speedup": off / on,
                "all_seconds": seconds,
                "subnormal_fraction": fraction,
                "max_abs_difference": float((outputs["on"] - outputs["off"]).abs().max()),
            }
        )
        print(
            f"read {args.read_model} {label} T={count}: off {off:.3f} s, on {on:.3f} s ({off / on:.2f}x), "
            f"{100 * fraction:.1f} % subnormal, max |diff| {rows[-1]['max_abs_difference']:.2e}",
            file=sys.stderr,
        )
    return rows


# -- part 2: every preset -------------------------------------------------------------------------------------------
def bench_presets(args: argparse.Namespace, result: dict[str, Any], out: Path) -> None:
    from voszoo.models.registry import list_models

    valid = list_models()
    models = valid if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in valid]
    if unknown or not models:
        raise ValueError(f"--models: unknown preset(s) {unknown or args.models!r}; valid: {', '.join(valid)}")
    sizes = [bench_inference.parse_size(text.strip()) for text in args.sizes.split(",") if text.strip()]
    rows = result.setdefault("presets", [])
    done = {(row["preset"], row["size"], row["flush_denormal_setting"]) for row in rows if row["status"] == "ok"}
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="voszoo-denormals-") as tmp:
        for label, size in sizes:
            images, labels = bench_inference.render_video(size, frames=1 + args.warmup + args.frames, seed=args.seed)
            video = Path(tmp) / f"{label}.npz"
            np.savez(video, images=images, labels=labels)
            for number, name in enumerate(models):
                order = SETTINGS if number % 2 == 0 else SETTINGS[::-1]  # neither setting always runs first
                for setting in order:
                    if (name, label, setting) in done:
                        continue
                    row = bench_inference.run_isolated(
                        name,
                        label,
                        size,
                        video_path=video,
                        warmup=args.warmup,
                        device=device,
                        amp="none",
                        overrides=[],
                        seed=args.seed,
                        threads=args.threads,
                        flush_denormal=setting,
                    )
                    row["flush_denormal_setting"] = setting
                    rows[:] = [
                        r
                        for r in rows
                        if (r["preset"], r["size"], r["flush_denormal_setting"]) != (name, label, setting)
                    ]
                    rows.append(row)
                    _write(result, out)
                    fps = f"{row['fps']:.3f} FPS" if row["status"] == "ok" else row["status"] + ": " + row["error"]
                    print(f"{name} {label} flush {setting}: {fps}", file=sys.stderr)


def format_markdown(result: dict[str, Any]) -> str:
    """The read rows and, per preset and size, FPS and matching milliseconds with flushing off and on."""
    lines = []
    if result.get("read"):
        lines += [
            "| read | memory frames | subnormal p | off (s) | on (s) | speedup | max abs diff |",
            "|" + "---|" * 7,
        ]
        for row in result["read"]:
            cells = [
                f"{row['model']} {row['size']} {row['video']}",
                str(row["memory_frames"]),
                f"{100 * row['subnormal_fraction']:.1f} %",
            ]
            cells += [f"{row['seconds_flush_off']:.3f}", f"{row['seconds_flush_on']:.3f}", f"{row['speedup']:.2f}x"]
            lines.append("| " + " | ".join([*cells, f"{row['max_abs_difference']:.1e}"]) + " |")
        lines.append("")
    by_key = {(r["preset"], r["size"], r["flush_denormal_setting"]): r for r in result.get("presets", [])}
    keys = sorted({(preset, size) for preset, size, _ in by_key})
    if keys:
        header = "| preset | size | FPS off | FPS on | CPU ms/frame off | CPU ms/frame on | CPU speedup | load |"
        lines += [header, "|" + "---|" * 8]
        for preset, size in keys:
            off, on = by_key.get((preset, size, "off")), by_key.get((preset, size, "on"))
            if not (off and on and off["status"] == on["status"] == "ok"):
                lines.append(f"| {preset} | {size} | - | - | - | - | - | - |")
                continue
            cells = [f"{off['fps']:.3f}", f"{on['fps']:.3f}"]
            cells += [f"{off['cpu_ms_per_frame']:.0f}", f"{on['cpu_ms_per_frame']:.0f}"]
            cells += [f"{off['cpu_ms_per_frame'] / on['cpu_ms_per_frame']:.2f}x"]
            cells += [f"{off['load_average_1min']:.1f} / {on['load_average_1min']:.1f}"]
            lines.append("| " + " | ".join([preset, size, *cells]) + " |")
    return "\n".join(lines)


def _write(result: dict[str, Any], out: Path) -> None:
    from voszoo.data.io import atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_denormals.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="read,presets", help="comma-separated: read, presets")
    parser.add_argument("--read-model", default="stm", help="preset whose memory read is timed (an STM-style reader)")
    parser.add_argument("--read-size", default="480p", help="frame size of the read: 480p, 240p or HxW")
    parser.add_argument("--read-video", default="toyvos", help="frames of the read: toyvos or noise")
    parser.add_argument("--memory-frames", default="1,6", help="comma-separated memory frame counts of the read")
    parser.add_argument("--repeats", type=int, default=5, help="timed reads per setting and memory frame count")
    parser.add_argument("--models", help="comma-separated presets (default: every preset in conf/model)")
    parser.add_argument("--sizes", default="480p", help="comma-separated frame sizes: 480p, 240p or HxW")
    parser.add_argument("--frames", type=int, default=3, help="timed frames (after the reference and warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames after the reference frame")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="ToyVOS video seed and weight initialisation seed")
    parser.add_argument("--fresh", action="store_true", help="ignore the rows already in --out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        parts = [part.strip() for part in args.parts.split(",") if part.strip()]
        if not parts or set(parts) - {"read", "presets"}:
            raise ValueError(f"--parts: give read and/or presets, got {args.parts!r}")
        args.memory_frames = [int(count) for count in args.memory_frames.split(",")]
        if min(args.memory_frames) < 1:
            raise ValueError(f"--memory-frames must all be >= 1, got {args.memory_frames}")
        for flag in ("repeats", "frames"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
        if args.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
    except ValueError as error:
        print(f"bench_denormals: {error}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    if args.out.is_file() and not args.fresh:
        result = json.loads(args.out.read_text())
    result["machine"] = machine_info(torch.device("cpu"))
    result["settings"] = {
        "frames": args.frames,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "seed": args.seed,
        "read": f"{args.read_model} at {args.read_size}, {args.repeats} repeats per setting, median",
        "weights": "random init (every `weights` key null)",
        "command": "python "
        + " ".join(["benchmarks/bench_denormals.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if "read" in parts:
        result["read"] = [row for row in result.get("read", []) if row.get("video") != args.read_video]
        result["read"] += bench_read(args)
        result["block_overhead_ms"] = block_overhead_ms()
        _write(result, args.out)
    if "presets" in parts:
        bench_presets(args, result, args.out)
    print(format_markdown(result))
    print(f"written {args.out}")
    failed = [row for row in result.get("presets", []) if row["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
