"""``voszoo-collect``: the results of a Hydra sweep (``voszoo-train -m ...``) in one table.

Every job folder of a multirun holds ``.hydra/overrides.yaml`` (the job's command-line overrides) and, when the job
finished, ``metrics.json`` (written by ``voszoo.train``). This script finds the jobs under MULTIRUN_DIR, makes one row
per job (the overrides as columns, then J&F, J, F, FPS, steps and the last training loss), prints a Markdown table and
writes the rows as CSV and JSON. A job without ``metrics.json`` (it failed or is still running) keeps its row, with
empty metrics, a ``status`` saying why, and a note under the table.

    voszoo-collect multirun/train/2026-01-01_12-00-00
    voszoo-collect SWEEP --varying-only --sort J&F --csv results.csv --json results.json

(``python benchmarks/collect.py`` in a source checkout is the same command.)

Choices where nothing prescribes one: override values are kept as the strings Hydra recorded (``optim.lr=0.0001``);
metrics are shown as stored (voszoo writes J&F, J and F as fractions in [0, 1]); job folders are found at any depth
(custom ``hydra.sweep.subdir``) and ordered by their path with numbers compared numerically (2 before 10).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from voszoo.data.io import VOSDataError, atomic_write_bytes

__all__ = ["METRIC_COLUMNS", "collect", "find_jobs", "main", "parse_overrides", "to_csv", "to_markdown"]

METRIC_COLUMNS = ("J&F", "J", "F", "fps", "steps", "train_loss")
EMA_COLUMNS = ("ema/J&F", "ema/J", "ema/F")
NO_METRICS = "failed: no metrics.json"


def find_jobs(sweep_dir: str | Path) -> list[Path]:
    """Job folders of a Hydra sweep: every folder under ``sweep_dir`` (or ``sweep_dir`` itself) holding
    ``.hydra/overrides.yaml``, in natural path order. Raises VOSDataError if there is none."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise VOSDataError(f"sweep folder {root} does not exist or is not a folder")
    jobs = sorted({path.parent.parent for path in root.glob("**/.hydra/overrides.yaml")}, key=_natural_key)
    if not jobs:
        raise VOSDataError(
            f"no Hydra jobs under {root}: no folder there holds .hydra/overrides.yaml "
            "(pass the sweep folder of a `voszoo-train -m ...` run, e.g. multirun/train/<date>_<time>)"
        )
    return jobs


def parse_overrides(overrides: list[str], *, source: str = "overrides") -> dict[str, str]:
    """``["model=stm_r18", "+x.y=1", "~z"]`` -> ``{"model": "stm_r18", "x.y": "1", "~z": ""}`` (key order kept)."""
    parsed: dict[str, str] = {}
    for item in overrides:
        if not isinstance(item, str):
            raise VOSDataError(f"{source}: override {item!r} is not a string")
        if item.startswith("~"):
            parsed[item.split("=", 1)[0]] = ""
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise VOSDataError(f"{source}: override {item!r} does not have the form key=value")
        parsed[key.lstrip("+")] = value
    return parsed


def collect(sweep_dir: str | Path, *, varying_only: bool = False, sort: str | None = None) -> list[dict[str, Any]]:
    """One dict per job of the sweep at ``sweep_dir``: ``job`` (folder relative to ``sweep_dir``), ``status``
    (``ok`` or why not), the override keys, then :data:`METRIC_COLUMNS` (None when missing) and the EMA scores if
    any job has them. ``varying_only`` keeps only overrides whose value differs between jobs; ``sort`` orders the rows
    by that column, largest first (numeric override strings compare as numbers), rows without a value last."""
    root = Path(sweep_dir)
    jobs = find_jobs(root)
    records = []
    for job in jobs:
        overrides_path = job / ".hydra" / "overrides.yaml"
        loaded = OmegaConf.to_container(OmegaConf.load(overrides_path))
        if not isinstance(loaded, list):
            raise VOSDataError(f"{overrides_path}: expected a list of overrides, got {type(loaded).__name__}")
        metrics, status = _read_metrics(job / "metrics.json")
        records.append((job, parse_overrides(loaded, source=str(overrides_path)), metrics, status))

    keys: list[str] = []
    for _, overrides, _, _ in records:
        keys.extend(k for k in overrides if k not in keys)
    if varying_only and len(records) > 1:
        keys = [k for k in keys if len({r[1].get(k) for r in records}) > 1]
    metric_columns = list(METRIC_COLUMNS)
    metric_columns += [c for c in EMA_COLUMNS if any(c in r[2] for r in records)]

    rows = []
    for job, overrides, metrics, status in records:
        row: dict[str, Any] = {"job": job.relative_to(root).as_posix() or ".", "status": status}
        row.update({k: overrides.get(k) for k in keys})
        row.update({c: metrics.get(c) for c in metric_columns})
        rows.append(row)
    if sort is not None:
        if sort not in rows[0]:
            raise ValueError(f"cannot sort by {sort!r}: not a column; columns: {', '.join(rows[0])}")
        present = [r for r in rows if _number(r[sort]) is not None]
        missing = [r for r in rows if _number(r[sort]) is None]
        rows = sorted(present, key=lambda r: _number(r[sort]), reverse=True) + missing
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A GitHub Markdown table of ``rows`` (floats with 4 significant digits, missing values as ``-``), followed by
    a note for every job that has no metrics."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
    hint = " (the job crashed or is still running: see its train.log)"
    notes = [
        f"- job {row['job']}: {row['status']}{hint if row['status'] == NO_METRICS else ''}"
        for row in rows
        if row["status"] != "ok"
    ]
    if notes:
        lines += ["", "Jobs without results:", *notes]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text with a header line (missing values empty, numbers at full precision)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voszoo-collect",
        description="Collect the jobs of a Hydra sweep (each job's .hydra/overrides.yaml + metrics.json) into one "
        "table: prints Markdown, writes CSV and JSON. Jobs without metrics.json are listed as failed.",
    )
    parser.add_argument("sweep_dir", metavar="MULTIRUN_DIR", help="the sweep folder, e.g. multirun/train/<date>_<time>")
    parser.add_argument("--csv", type=Path, default=None, help="CSV output (default: MULTIRUN_DIR/results.csv)")
    parser.add_argument("--json", type=Path, default=None, help="JSON output (default: MULTIRUN_DIR/results.json)")
    parser.add_argument("--no-write", action="store_true", help="only print the table, write no files")
    parser.add_argument("--varying-only", action="store_true", help="show only overrides that differ between jobs")
    parser.add_argument("--sort", default=None, metavar="COLUMN", help="sort rows by COLUMN, largest first (e.g. J&F)")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.sweep_dir, varying_only=args.varying_only, sort=args.sort)
    except ValueError as error:  # VOSDataError is a ValueError
        print(f"collect: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(to_markdown(rows))
    if not args.no_write:
        root = Path(args.sweep_dir)
        csv_path = args.csv or root / "results.csv"
        json_path = args.json or root / "results.json"
        atomic_write_bytes(csv_path, to_csv(rows).encode())
        atomic_write_bytes(json_path, (json.dumps(rows, indent=2) + "\n").encode())
        print(f"\nwrote {csv_path} and {json_path} ({len(rows)} jobs)", file=sys.stderr)
    failed = sum(row["status"] != "ok" for row in rows)
    if failed:
        print(f"{failed} of {len(rows)} jobs have no metrics (see the notes under the table)", file=sys.stderr)
    return 0


def _read_metrics(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        return {}, NO_METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return {}, f"failed: unreadable metrics.json ({error})"
    if not isinstance(metrics, dict):
        return {}, "failed: metrics.json does not hold a JSON object"
    return metrics, "ok"


def _number(value: Any) -> float | None:
    """``value`` as a float (numbers and numeric override strings), None if it is not a finite number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


if __name__ == "__main__":
    sys.exit(main())
