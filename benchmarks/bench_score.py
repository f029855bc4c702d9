"""Speed of ``voszoo-score`` on data shaped like DAVIS 2016 val, optionally against the official evaluator.

DAVIS cannot be downloaded here, so this script writes a synthetic dataset of the same shape into a temporary folder:
the 20 DAVIS 2016 val sequences with their real frame counts (1376 frames in all), 854x480, one object per sequence
(labels 0/1, the DAVIS 2017 layout of those sequences), a smooth blob that moves and deforms, and noisy predictions
(shifted/rescaled blob, random holes and specks, a few empty frames). It then times ``voszoo-score`` end to end as a
subprocess (median of ``--runs``).

With ``--official CHECKOUT`` (a checkout of github davisvideochallenge/davis2017-evaluation, run by
``--official-python``, a Python that has its dependencies) it also times ``evaluation_method.py --task semi-supervised``
on the same data, checks that both CSV files are byte-identical and compares every per-object mean, recall and decay at
full precision. Results are printed and written to ``benchmarks/results/score_speed.json``.

    python benchmarks/bench_score.py [--official /tmp/davis2017-evaluation --official-python /tmp/offvenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voszoo.data.io import write_labels

# Frame counts of the DAVIS 2016 val sequences (the same folders in DAVIS 2017 val); they add up to 1376.
DAVIS2016_VAL: dict[str, int] = {
    "blackswan": 50,
    "bmx-trees": 80,
    "breakdance": 84,
    "camel": 90,
    "car-roundabout": 75,
    "car-shadow": 40,
    "cows": 104,
    "dance-twirl": 90,
    "dog": 60,
    "drift-chicane": 52,
    "drift-straight": 50,
    "goat": 90,
    "horsejump-high": 50,
    "kite-surf": 50,
    "libby": 49,
    "motocross-jump": 40,
    "paragliding-launch": 80,
    "parkour": 100,
    "scooter-black": 43,
    "soapbox": 99,
}
HEIGHT, WIDTH = 480, 854

_OFFICIAL_FULL_PRECISION = """
import json, sys
from davis2017.evaluation import DAVISEvaluation
metrics = DAVISEvaluation(davis_root=sys.argv[1], task="semi-supervised", gt_set="val").evaluate(sys.argv[2])
out = {}
for measure in ("J", "F"):
    names = list(metrics[measure]["M_per_object"])
    for i, name in enumerate(names):
        for stat in ("M", "R", "D"):
            out[f"{name}/{measure}-{stat}"] = float(metrics[measure][stat][i])
json.dump(out, sys.stdout)
"""


def _blob(
    shape: tuple[int, int], center: np.ndarray, radii: np.ndarray, harmonics: np.ndarray, phase: float
) -> np.ndarray:
    """(H, W) bool: a star-shaped blob, radius(theta) = radii * (1 + sum_i a_i sin(i * theta + phase_i))."""
    mask = np.zeros(shape, dtype=bool)
    extent = radii * (1 + np.abs(harmonics[:, 0]).sum()) + 2
    top, bottom = int(max(center[0] - extent[0], 0)), int(min(center[0] + extent[0] + 1, shape[0]))
    left, right = int(max(center[1] - extent[1], 0)), int(min(center[1] + extent[1] + 1, shape[1]))
    if top >= bottom or left >= right:
        return mask
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float64)
    dy, dx = (ys - center[0]) / radii[0], (xs - center[1]) / radii[1]
    theta = np.arctan2(dy, dx)
    scale = 1 + sum(a * np.sin((i + 2) * theta + p + phase * (i + 1)) for i, (a, p) in enumerate(harmonics))
    mask[top:bottom, left:right] = np.hypot(dy, dx) <= scale
    return mask


def _specks(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = int(rng.integers(2, 12))
        mask[max(y - r, 0) : y + r, max(x - r, 0) : x + r] = True
    return mask


def generate(root: Path, *, seed: int = 0) -> None:
    """Write ``root/Annotations/480p``, ``root/pred``, empty ``JPEGImages/480p`` files and ``ImageSets/2017/val.txt``
    (the official evaluator needs the last two to find the sequences)."""
    shape = (HEIGHT, WIDTH)
    for index, (name, count) in enumerate(DAVIS2016_VAL.items()):
        rng = np.random.default_rng(seed * 1000 + index)
        start = np.array([rng.uniform(150, 330), rng.uniform(200, 650)])
        velocity = rng.uniform(-2.5, 2.5, size=2)
        radii = np.array([rng.uniform(50, 140), rng.uniform(60, 200)])
        harmonics = np.column_stack([rng.uniform(-0.12, 0.12, 4), rng.uniform(0, 2 * np.pi, 4)])
        offset = rng.normal(0, 3, size=2)
        for t in range(count):
            center = start + velocity * t + 20 * np.sin(np.array([t / 17, t / 23]))
            grow = 1 + 0.15 * np.sin(t / 11)
            gt = _blob(shape, center, radii * grow, harmonics, 0.05 * t)
            jitter = offset + rng.normal(0, 2, size=2)
            pred = _blob(shape, center + jitter, radii * grow * rng.uniform(0.95, 1.05), harmonics, 0.05 * t + 0.1)
            pred ^= _specks(rng, shape, int(rng.integers(0, 6)))
            if rng.random() < 0.02:
                pred[:] = False
            write_labels(root / "Annotations" / "480p" / name / f"{t:05d}.png", gt.astype(np.uint8))
            write_labels(root / "pred" / name / f"{t:05d}.png", pred.astype(np.uint8))
            (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
            (root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg").touch()
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{name}\n" for name in DAVIS2016_VAL))


def _timed(command: list[str], *, cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _machine() -> dict[str, object]:
    from voszoo.profiling import cpu_model_name

    cpu = cpu_model_name()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "numpy": np.__version__}


def _summary(runs: list[tuple[float, float]]) -> dict[str, object]:
    return {
        "wall_seconds": [round(w, 3) for w, _ in runs],
        "cpu_seconds": [round(c, 3) for _, c in runs],
        "median_wall_seconds": round(statistics.median(w for w, _ in runs), 3),
        "median_cpu_seconds": round(statistics.median(c for _, c in runs), 3),
    }


def _full_precision_official(python: str, checkout: Path, root: Path, pred_dir: Path) -> dict[str, float]:
    run = subprocess.run(
        [python, "-c", _OFFICIAL_FULL_PRECISION, str(root), str(pred_dir)],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(run.stdout)


def _full_precision_ours(results_json: Path) -> dict[str, float]:
    ours = {}
    for sequence in json.loads(results_json.read_text())["sequences"]:
        for obj in sequence["objects"]:
            for measure in ("J", "F"):
                for stat, key in (("M", "Mean"), ("R", "Recall"), ("D", "Decay")):
                    ours[f"{obj['name']}/{measure}-{stat}"] = obj[f"{measure}-{key}"]
    return ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of voszoo-score (median reported)")
    parser.add_argument("--workers", type=int, default=None, help="voszoo-score --workers (default: all cores)")
    parser.add_argument("--official", type=Path, default=None, help="checkout of davis2017-evaluation to compare with")
    parser.add_argument("--official-python", default=sys.executable, help="python with the official code's deps")
    parser.add_argument("--official-runs", type=int, default=3, help="timed runs of the official evaluator")
    parser.add_argument("--data", type=Path, default=None, help="keep the synthetic dataset here (default: temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_speed.json")
    args = parser.parse_args(argv)

    temp = None
    if args.data is None:
        temp = tempfile.TemporaryDirectory(prefix="voszoo-bench-score-")
        root = Path(temp.name)
    else:
        root = args.data
    try:
        if not (root / "pred").is_dir():
            start = time.perf_counter()
            generate(root)
            print(f"generated {sum(DAVIS2016_VAL.values())} frames x 2 in {time.perf_counter() - start:.1f} s: {root}")
        gt_dir, pred_dir, out_dir = root / "Annotations" / "480p", root / "pred", root / "voszoo_out"
        ours = [sys.executable, "-m", "voszoo.evaluation.cli", "--gt", str(gt_dir), "--pred", str(pred_dir)]
        ours += ["--out", str(out_dir), "--quiet"] + ([] if args.workers is None else ["--workers", str(args.workers)])
        official = None
        if args.official is not None:
            official = [args.official_python, str(args.official / "evaluation_method.py"), "--task", "semi-supervised"]
            official += ["--set", "val", "--davis_path", str(root), "--results_path", str(pred_dir)]
        csv_names = ("global_results-val.csv", "per-sequence_results-val.csv")

        # Interleaved runs, so that both tools see the same machine load; the load average is recorded.
        our_runs, official_runs, loads, csv_identical = [], [], [], True
        for index in range(max(args.runs, args.official_runs if official else 0)):
            loads.append(round(_load(), 2))
            if index < args.runs:
                our_runs.append(_timed(ours))
            if official is not None and index < args.official_runs:
                for name in csv_names:
                    (pred_dir / name).unlink(missing_ok=True)  # else it only re-reads its previous CSVs
                official_runs.append(_timed(official, cwd=args.official))
                for name in csv_names:
                    csv_identical &= (pred_dir / name).read_bytes() == (out_dir / name).read_bytes()
                    (pred_dir / name).unlink()
        report: dict[str, object] = {
            "machine": _machine(),
            "load_average_before_runs": loads,
            "dataset": {
                "kind": "synthetic, DAVIS 2016 val shape (benchmarks/bench_score.py)",
                "sequences": len(DAVIS2016_VAL),
                "frames": sum(DAVIS2016_VAL.values()),
                "size_hw": [HEIGHT, WIDTH],
                "objects_per_sequence": 1,
            },
            "voszoo_command": " ".join(["voszoo-score", *ours[3:]]),
            "voszoo": _summary(our_runs),
        }
        ours_wall = report["voszoo"]["median_wall_seconds"]
        print(f"voszoo-score: median wall {ours_wall:.2f} s, CPU {report['voszoo']['median_cpu_seconds']:.2f} s")
        if official is not None:
            theirs = _full_precision_official(args.official_python, args.official, root, pred_dir)
            mine = _full_precision_ours(out_dir / "results.json")
            if set(mine) != set(theirs):
                raise SystemExit(f"object sets differ: {sorted(set(mine) ^ set(theirs))[:5]}")
            max_diff = max(abs(mine[k] - theirs[k]) for k in theirs)
            report["official_command"] = " ".join(["python", *official[1:]])
            report["official"] = _summary(official_runs)
            official_wall = report["official"]["median_wall_seconds"]
            report.update(
                speedup_wall=round(official_wall / ours_wall, 2),
                speedup_cpu=round(report["official"]["median_cpu_seconds"] / report["voszoo"]["median_cpu_seconds"], 2),
                csv_byte_identical=csv_identical,
                max_abs_difference_per_object_mean_recall_decay=max_diff,
            )
            print(
                f"official:     median wall {official_wall:.2f} s, CPU {report['official']['median_cpu_seconds']:.2f} s"
            )
            print(
                f"speed-up {report['speedup_wall']}x wall, {report['speedup_cpu']}x CPU; CSV byte-identical: "
                f"{csv_identical}; max |difference| of per-object mean/recall/decay: {max_diff:.3g}"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if temp is not None:
            temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
