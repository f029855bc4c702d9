"""``report.html``: one evaluation run (optionally beside a second one) as a per-sequence J&F table, worst first,
each row showing and linking to its overlay animations. Every link is relative to the report's folder."""

from __future__ import annotations

import functools
import math
from html import escape
from pathlib import Path

from voszoo.fileio import atomic_write_bytes
from voszoo.viz.html import media, page, percent
from voszoo.viz.overlay import DEFAULT_ALPHA
from voszoo.viz.render import render_run
from voszoo.viz.runs import EvalRun

__all__ = ["REPORT_NAME", "sorted_sequences", "write_report"]

REPORT_NAME = "report.html"


def sorted_sequences(run: EvalRun, extra: list[str] = ()) -> list[str]:
    """The run's predicted sequences (plus ``extra``), worst J&F first; unscored ones last, by name."""
    names = sorted(set(run.sequences) | set(extra))
    scored = sorted((n for n in names if n in run.scores), key=lambda n: (run.scores[n]["J&F"], n))
    return scored + [n for n in names if n not in run.scores]


def _mean(run: EvalRun, key: str) -> float | None:
    values = [scores[key] for scores in run.scores.values() if not math.isnan(scores[key])]
    return sum(values) / len(values) if values else None


def write_report(
    run: EvalRun,
    out_dir: str | Path,
    *,
    compare: EvalRun | None = None,
    sequences: list[str] | None = None,
    fps: float = 10.0,
    fmt: str = "auto",
    alpha: float = DEFAULT_ALPHA,
    ground_truth: bool = True,
    progress: bool = True,
) -> Path:
    """Render the overlays of ``run`` into ``out_dir/overlays/`` (and of ``compare`` into ``out_dir/compare/``)
    and write ``out_dir/report.html``; returns the report's path. ``sequences``: only these videos (default: every
    predicted one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    render = functools.partial(
        render_run, fps=fps, fmt=fmt, alpha=alpha, ground_truth=ground_truth, progress=progress
    )  # the same look for both runs
    animations = render(run, out_dir / "overlays", sequences=sequences, desc=f"overlays {run.label}")
    other: dict[str, Path] = {}
    if compare is not None:
        if compare.config is None and compare._collection is None:
            compare._collection = run.collection()  # the same dataset, presumably: its frames are needed
        wanted = [n for n in compare.sequences if sequences is None or n in sequences]
        other = render(compare, out_dir / "compare", sequences=wanted, desc=f"overlays {compare.label}")
    names = sorted_sequences(run, list(other))
    if sequences is not None:
        names = [n for n in names if n in sequences]

    labels = [run.label] + ([compare.label] if compare is not None else [])
    if compare is not None and labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    head = ["#", "sequence", f"J&amp;F % {escape(labels[0])}", "J %", "F %"]
    if compare is not None:
        head += [f"J&amp;F % {escape(labels[1])}", "J %", "F %", "&Delta; J&amp;F (B - A)"]
    head.append(f"overlay {escape(labels[0])}")
    if compare is not None:
        head.append(f"overlay {escape(labels[1])}")
    rows = []
    for rank, name in enumerate(names, start=1):
        a, b = run.scores.get(name, {}), (compare.scores.get(name, {}) if compare is not None else {})
        cells = [f"<td>{rank}</td>", f'<td class="name">{escape(name)}</td>']
        cells += [f"<td>{percent(a.get(k))}</td>" for k in ("J&F", "J", "F")]
        if compare is not None:
            cells += [f"<td>{percent(b.get(k))}</td>" for k in ("J&F", "J", "F")]
            delta = b["J&F"] - a["J&F"] if "J&F" in a and "J&F" in b else None
            cells.append(f"<td>{'-' if delta is None else f'{100.0 * delta:+.1f}'}</td>")
        for found in (animations, other) if compare is not None else (animations,):
            cell = media(found[name], out_dir, alt=f"{name} overlay") if name in found else "-"
            cells.append(f'<td class="media">{cell}</td>')
        rows.append(f'<tr class="sequence" data-sequence="{escape(name)}">{"".join(cells)}</tr>')

    def summary(which: EvalRun, label: str) -> str:
        scores = " ".join(f"{escape(key)} {percent(_mean(which, key))}%" for key in ("J&F", "J", "F"))
        return (
            f"<li><b>{escape(label)}</b>: <code>{escape(str(which.results_dir))}</code>, "
            f"{len(which.sequences)} videos; mean over sequences: {scores}</li>"
        )

    runs = [summary(run, labels[0])] + ([summary(compare, labels[1])] if compare is not None else [])
    panels = "prediction (left) and ground truth (right)" if ground_truth else "prediction"
    body = (
        f"<ul>{''.join(runs)}</ul>\n"
        f'<p class="note">Sequences sorted by J&amp;F of {escape(labels[0])}, worst first (unscored last). Each '
        f"animation shows the {panels} in the DAVIS palette; its PNG frames are in the folder of the same name. "
        "Mean over sequences (each sequence the mean of its objects), not the official mean over objects.</p>\n"
        f'<table id="sequences">\n<thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>\n'
        f"<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    )
    title = f"voszoo report: {labels[0]}" + (f" vs {labels[1]}" if compare is not None else "")
    path = out_dir / REPORT_NAME
    atomic_write_bytes(path, page(title, body).encode())
    return path
