"""The run's metrics file (``metrics.jsonl``: one JSON object per logged step) and console formatting of metrics.

This module configures no logging handler; the entry point (Hydra) does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from voszoo.fileio import atomic_write_bytes

__all__ = ["MetricsWriter", "format_metrics"]


class MetricsWriter:
    """Appends ``{"step": s, **metrics}`` lines to ``path`` (opened per write, so a crash loses nothing written)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def write(self, step: int, metrics: Mapping[str, float | int | str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": int(step), **metrics}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """Every record written so far (empty if the file does not exist)."""
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run re-logs them); atomic rewrite."""
        records = self.read()
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        if len(kept) == len(records):
            return
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode(), durable=True)


def _format_value(key: str, value: float | int | str) -> str:
    if isinstance(value, str) or isinstance(value, int):
        return str(value)
    if key == "lr" or key.endswith("/lr") or (value != 0 and math.isfinite(value) and abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4f}"


def format_metrics(metrics: Mapping[str, float | int | str]) -> str:
    """``"loss 0.4321  lr 1.00e-04  ..."``: compact console line of a metrics dict."""
    return "  ".join(f"{key} {_format_value(key, value)}" for key, value in metrics.items())
