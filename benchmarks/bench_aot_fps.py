"""AOT inference speed (frames per second) at 480p on this machine's CPU, randomly initialised.

Builds the AOT preset(s) from the config tree, runs a short random video (854x480 by default, DAVIS' 480p size,
padded to 864x480 by the session) with ``--objects`` objects through :class:`voszoo.inference.InferenceSession` and
times every frame after the reference frame (which only memorises) and ``--warmup`` further frames. Speed does not
depend on the weights, so no checkpoint is needed; it does depend on the memory schedule (AOT-L's long-term memory
grows every 5th frame, so its FPS falls on long videos). Results are printed and merged into
``benchmarks/results/aot_fps.json`` (one entry per preset, the latest run wins).

    python benchmarks/bench_aot_fps.py --model aot_t --frames 6
    python benchmarks/bench_aot_fps.py --model aot_t aot_s aot_b aot_l r50_aot_l --frames 12 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from voszoo.profiling import machine_info

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "aot_fps.json"


def _square_masks(height: int, width: int, num_objects: int, rng: np.random.Generator) -> np.ndarray:
    """A label map with ``num_objects`` non-overlapping squares (ids 1..N) on a coarse grid."""
    labels = np.zeros((height, width), dtype=np.uint8)
    side = min(height, width) // 6
    cols = width // side
    cells = rng.choice((height // side) * cols, size=num_objects, replace=False)
    for obj, cell in enumerate(cells, start=1):
        y, x = divmod(int(cell), cols)
        labels[y * side : (y + 1) * side, x * side : (x + 1) * side] = obj
    return labels


def benchmark(name: str, *, frames: int, warmup: int, height: int, width: int, objects: int, seed: int) -> dict:
    from voszoo.inference.session import InferenceSession
    from voszoo.models.registry import build_memory_policy, build_model, compose_model_config

    cfg = compose_model_config(name)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg))
    rng = np.random.default_rng(seed)
    video = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]
    times = []
    for index, frame in enumerate(video):
        start = time.perf_counter()
        session.step(frame, _square_masks(height, width, objects, rng) if index == 0 else None)
        times.append(time.perf_counter() - start)
    timed = times[1 + warmup :]
    if not timed:
        raise ValueError(f"--frames {frames} leaves no timed frame after the reference and {warmup} warm-up frames")
    mean = statistics.fmean(timed)
    return {
        "model": name,
        "fps": round(1.0 / mean, 3),
        "seconds_per_frame_mean": round(mean, 4),
        "seconds_per_frame_median": round(statistics.median(timed), 4),
        "reference_frame_seconds": round(times[0], 4),
        "timed_frames": len(timed),
        "frames": frames,
        "warmup_frames": warmup,
        "input": [height, width],
        "objects": objects,
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_policy": repr(build_memory_policy(cfg)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["aot_t"], help="AOT presets (conf/model/<name>.yaml)")
    parser.add_argument("--frames", type=int, default=6, help="frames of the random video, reference included")
    parser.add_argument("--warmup", type=int, default=1, help="frames after the reference that are not timed")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--objects", type=int, default=2, help="objects in the reference frame")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file the results are merged into")
    args = parser.parse_args(argv)
    try:
        if args.frames < 2 or args.objects < 1 or args.height < 32 or args.width < 32:
            raise ValueError("need --frames >= 2, --objects >= 1 and a frame of at least 32x32")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        from voszoo.models.registry import list_models

        unknown = [m for m in args.model if m not in list_models() or "aot" not in m]
        if unknown:
            valid = [m for m in list_models() if "aot" in m]
            raise ValueError(f"unknown AOT preset(s) {unknown}; valid: {', '.join(valid)}")
        results = []
        for name in args.model:
            row = benchmark(
                name,
                frames=args.frames,
                warmup=args.warmup,
                height=args.height,
                width=args.width,
                objects=args.objects,
                seed=args.seed,
            )
            print(
                f"{name}: {row['fps']:.2f} FPS ({row['seconds_per_frame_mean']:.3f} s/frame over "
                f"{row['timed_frames']} frames, {args.width}x{args.height}, {args.objects} objects)"
            )
            results.append(row)
    except ValueError as error:
        print(f"bench_aot_fps: {error}", file=sys.stderr)
        return 2
    machine = {**machine_info("cpu"), "weights": "random init"}
    existing = json.loads(args.output.read_text()) if args.output.is_file() else {}
    existing.setdefault("results", {})
    for row in results:
        existing["results"][row["model"]] = {**row, "machine": machine}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
