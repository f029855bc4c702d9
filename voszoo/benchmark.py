"""voszoo-bench: the leaderboard on one dataset (Hydra app, conf/bench.yaml).

Each entry is either a baseline (``copy_first_frame``) scored directly, or a model preset trained by voszoo-train in
a child process (``train: [model=..., trainer=...]``) and scored on the evaluation split. Results go to
``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` in the output dir and are printed as a table.
A failing entry is reported as a failed row; the other entries still run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from voszoo.cli_common import hydra_entry, prepare_data

__all__ = ["main", "run_benchmark", "format_markdown"]

logger = logging.getLogger("voszoo.bench")

BASELINES = ("copy_first_frame",)
COLUMNS = ("entry", "status", "J&F", "J", "F", "FPS", "train steps", "minutes")


def _run_baseline(entry: DictConfig, cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.inference.predict import CopyFirstFrame
    from voszoo.instantiate import build

    if entry.baseline not in BASELINES:
        raise ValueError(f"entry {entry.name!r}: unknown baseline {entry.baseline!r}; valid: {', '.join(BASELINES)}")
    collection = build(cfg.data.eval, key="data.eval")
    return evaluate_predictor(CopyFirstFrame(), collection, out_dir, workers=int(cfg.workers))


def _run_training(entry: DictConfig, cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    overrides = [str(o) for o in entry.train]
    data_overrides = [f"data={cfg.data.name}", f"data.root={cfg.data.root}", f"seed={cfg.seed}"]
    command = [sys.executable, "-m", "voszoo.train", *data_overrides, *overrides, f"hydra.run.dir={out_dir}"]
    logger.info("entry %s: %s", entry.name, " ".join(command))
    log_path = out_dir / "train.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"voszoo-train exited with {completed.returncode} (log: {log_path}): " + " | ".join(tail))
    return json.loads((out_dir / "metrics.json").read_text())


def run_benchmark(cfg: DictConfig, output_dir: str | Path) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    prepare_data(cfg.data)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(list(cfg.entries), desc="leaderboard", unit="entry", disable=None)
    for index, entry in enumerate(bar):
        bar.set_postfix(entry=entry.name)
        entry_dir = output_dir / str(entry.name)
        begin = time.perf_counter()
        row: dict[str, Any] = {"entry": str(entry.name)}
        try:
            if entry.get("baseline"):
                result = _run_baseline(entry, cfg, entry_dir)
            elif entry.get("train"):
                result = _run_training(entry, cfg, entry_dir)
            else:
                raise ValueError(f"entry {entry.name!r} needs either 'baseline' or 'train'")
            row.update(status="ok", **{k: result.get(k) for k in ("J&F", "J", "F")})
            row["FPS"] = result.get("fps")
            row["train steps"] = result.get("steps")
        except Exception as error:  # noqa: BLE001 - a failed entry is a row, not the end of the board
            logger.error("entry %s failed: %s\n%s", entry.name, error, traceback.format_exc())
            row.update(status=f"failed: {error}")
        row["minutes"] = (time.perf_counter() - begin) / 60
        rows.append(row)
        done = index + 1
        eta = (time.perf_counter() - started) / done * (len(cfg.entries) - done)
        bar.set_postfix(entry=entry.name, eta_min=f"{eta / 60:.1f}")
    _write_outputs(rows, output_dir, cfg)
    print(f"\nvoszoo leaderboard on {cfg.data.name} ({cfg.data.eval.get('split', 'eval')} split), measured here:\n")
    print(format_markdown(rows))
    print(f"\nwritten to {output_dir}/leaderboard.{{md,csv,json}}")
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value <= 1.0 else f"{value:.1f}"
    return str(value)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in COLUMNS) + " |")
    return "\n".join(lines)


def _write_outputs(rows: list[dict[str, Any]], output_dir: Path, cfg: DictConfig) -> None:
    from voszoo.data.io import atomic_write_bytes

    header = f"# voszoo leaderboard: {cfg.data.name}\n\nAll numbers measured by `voszoo-bench` on this machine.\n\n"
    atomic_write_bytes(output_dir / "leaderboard.md", (header + format_markdown(rows) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(output_dir / "leaderboard.csv", buffer.getvalue().encode())
    payload = {"data": OmegaConf.to_container(cfg.data, resolve=True), "rows": rows}
    atomic_write_bytes(output_dir / "leaderboard.json", (json.dumps(payload, indent=2, default=str) + "\n").encode())


def _task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    rows = run_benchmark(cfg, HydraConfig.get().runtime.output_dir)
    if any(row["status"] != "ok" for row in rows):
        raise SystemExit(1)


def main() -> None:
    hydra_entry(_task, "bench")


if __name__ == "__main__":
    main()
