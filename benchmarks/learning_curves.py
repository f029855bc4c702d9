"""Learning curves of the quick recipes on ToyVOS: J&F against training step for each method and the copy-first-frame
baseline, plus each final checkpoint scored on a ToyVOS val made with another seed and on the train split.

Each experiment is one ``voszoo-train experiment=<name>_quick trainer.eval_every=<every>`` run in
``<runs>/<name>``; a run that was interrupted resumes (``resume=auto``) and a finished one is not run again, so the
script can be stopped and restarted across sessions. The results go to a JSON file (rewritten after every
experiment) and a PNG (matplotlib, the ``plot`` extra). Runs one after another: on 2 cores two trainings at once
only slow each other down.

    python benchmarks/learning_curves.py                                  # all six, each recipe's steps, every 100
    python benchmarks/learning_curves.py --experiments stm aot --png docs/figures/learning_curves.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["curve_of", "main"]

EXPERIMENTS = ("stm", "aot", "sitvos", "munet", "mga", "batman")
PRESETS = {  # the model preset each quick experiment trains (voszoo-eval takes presets, not experiments)
    "stm": "stm_r18",
    "aot": "aot_t_r18",
    "sitvos": "sitvos_r18",
    "munet": "munet_r18",
    "mga": "mga_r18",
    "batman": "batman_light",
}
HERE = Path(__file__).resolve().parent


def _python(module: str, *overrides: str, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, "-m", module, *overrides], stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-5:])
        raise RuntimeError(f"python -m {module} failed (log {log}): {tail}")


def curve_of(run_dir: Path) -> list[tuple[int, float]]:
    """(step, J&F) of the periodic evaluations in a run's metrics.jsonl, then the final score (metrics.json)."""
    points: dict[int, float] = {}
    records = run_dir / "metrics.jsonl"
    if records.is_file():
        for line in records.read_text().splitlines():
            record = json.loads(line)
            if "eval/J&F" in record:
                points[int(record["step"])] = float(record["eval/J&F"])
    final = run_dir / "metrics.json"
    if final.is_file():
        metrics = json.loads(final.read_text())
        points[int(metrics["steps"])] = float(metrics["J&F"])
    return sorted(points.items())


def inference_overrides(run_dir: Path) -> list[str]:
    """The voszoo-eval overrides that score a run as its own final evaluation did: the recipe's memory schedule, input
    protocol and frame size (e.g. sitvos_quick's ``model/memory=first_and_previous`` and ``eval.short_side=96``), read
    from the run's saved Hydra config (none if it has none)."""
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        return []
    config = OmegaConf.load(hydra_dir / "config.yaml")
    choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
    overrides = [f"short_side={config.eval.short_side}"] if config.eval.get("short_side") is not None else []
    if config.eval.get("protocol") is not None:  # voszoo-eval's default is the preset's; training scores with this one
        overrides.append(f"protocol={config.eval.protocol}")
    memory = choices.get("model/memory")
    return overrides + ([f"model/memory={memory}"] if memory is not None else [])


def _score(checkpoint: Path, experiment: str, out: Path, data: list[str], log: Path) -> dict[str, Any]:
    if not (out / "metrics.json").is_file():
        _python(
            "voszoo.evaluate",
            f"model={PRESETS[experiment]}",
            f"checkpoint={checkpoint}",
            *inference_overrides(checkpoint.parent),
            *data,
            f"hydra.run.dir={out}",
            log=log,
        )
    metrics = json.loads((out / "metrics.json").read_text())
    return {k: metrics[k] for k in ("J&F", "J", "F")}


def _baseline(data: list[str], out: Path, log: Path) -> float:
    """Copy-first-frame J&F on the dataset ``data`` selects (through voszoo-bench's baseline entry)."""
    result = out / "metrics_baseline.json"
    if not result.is_file():
        entries = "entries=[{name: copy_first_frame, baseline: copy_first_frame}]"
        _python(
            "voszoo.benchmark", entries, "profile.enabled=false", "plot=false", *data, f"hydra.run.dir={out}", log=log
        )
        board = json.loads((out / "leaderboard.json").read_text())
        score = next(r["J&F"] for r in board["rows"] if r.get("entry") == "copy_first_frame")
        result.write_text(json.dumps({"J&F": score}) + "\n")
    return float(json.loads(result.read_text())["J&F"])


def markdown_table(results: dict[str, Any]) -> str:
    """The runs as a Markdown table: J&F at every scored step (runs may differ in steps), the final score, on the
    other-seed val and on the train split."""
    header = ["quick recipe", "J&F by step (ToyVOS val)", "final", "other-seed val", "train split", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    base, base_other = results.get("baseline_jf"), results.get("baseline_jf_other_seed")
    shown = [f"{v:.3f}" if isinstance(v, float) else "" for v in (base, base_other)]
    lines.append(f"| copy first frame (no training) | | {shown[0]} | {shown[1]} | | |")
    for name, run in results["runs"].items():
        curve = ", ".join(f"{step}: {score:.3f}" for step, score in run.get("curve", []))
        cells = [
            f"{run[k]:.3f}" if isinstance(run.get(k), float) else "" for k in ("val", "val_other_seed", "train_split")
        ]
        lines.append("| " + " | ".join([f"`{name}_quick`", curve, *cells, str(run.get("wall_minutes", ""))]) + " |")
    return "\n".join(lines)


def write_png(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install voszoo[plot]): no figure", file=sys.stderr)
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, run in results["runs"].items():
        if run.get("curve"):
            steps, scores = zip(*run["curve"], strict=True)
            axis.plot(steps, scores, marker="o", label=f"{name}_quick")
    baseline = results.get("baseline_jf")
    if baseline is not None:
        axis.axhline(baseline, color="black", linestyle="--", label="copy first frame")
        axis.axhline(baseline + 0.1, color="grey", linestyle=":", label="copy first frame + 0.10")
    axis.set_xlabel("training step (batch 4)")
    axis.set_ylabel("J&F on ToyVOS val")
    axis.set_title(results.get("title", "quick recipes from the ToyVOS pre-training"))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument(
        "--steps", type=int, default=None, help="trainer.max_steps of every run (default: the recipe's)"
    )
    parser.add_argument("--every", type=int, default=100, help="score on ToyVOS val every so many steps")
    parser.add_argument("--runs", type=Path, default=Path("outputs/learning_curves"), help="run folders")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "learning_curves.json")
    parser.add_argument("--png", type=Path, default=HERE.parent / "docs" / "figures" / "learning_curves.png")
    parser.add_argument("--other-seed", type=int, default=1, help="seed of the second ToyVOS val (generalisation)")
    parser.add_argument("--train-videos", type=int, default=16, help="train-split videos scored (fitting)")
    parser.add_argument("--extra", nargs="*", default=[], help="more voszoo-train overrides for every run")
    args = parser.parse_args(argv)
    from voszoo.profiling import machine_info

    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    results.update(steps=args.steps, every=args.every, machine=machine_info(), extra=list(args.extra))
    other_root = args.runs / f"toyvos_seed{args.other_seed}"
    other_data = [f"data.root={other_root}", f"data.generate.seed={args.other_seed}"]
    results["baseline_jf"] = _baseline([], args.runs / "baseline", args.runs / "baseline.log")
    results["baseline_jf_other_seed"] = _baseline(other_data, args.runs / "baseline_other", args.runs / "baseline.log")
    for name in args.experiments:
        run_dir = args.runs / name
        log = args.runs / f"{name}.log"
        run = results["runs"].setdefault(name, {})
        if not (run_dir / "metrics.json").is_file():
            start = time.perf_counter()
            _python(
                "voszoo.train",
                f"experiment={name}_quick",
                *([f"trainer.max_steps={args.steps}"] if args.steps is not None else []),
                f"trainer.eval_every={args.every}",
                *args.extra,
                f"hydra.run.dir={run_dir}",
                log=log,
            )
            run["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)  # incl. the periodic evaluations
        run["curve"] = curve_of(run_dir)
        checkpoint = run_dir / "last.pt"
        run["val"] = json.loads((run_dir / "metrics.json").read_text())["J&F"]
        run["val_other_seed"] = _score(checkpoint, name, run_dir / "eval_other_seed", other_data, log)["J&F"]
        train_data = ["data.eval.split=train", f"max_videos={args.train_videos}"]
        run["train_split"] = _score(checkpoint, name, run_dir / "eval_train", train_data, log)["J&F"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}_quick: {run}", flush=True)
    write_png(results, args.png)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
