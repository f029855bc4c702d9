"""``leaderboard.html``: the board's table, its J&F-FPS plot and a link from every measured row to its entry's
report (``<entry>/viz/report.html``), all relative to the page's folder."""

from __future__ import annotations

from html import escape
from pathlib import Path

from voszoo.fileio import atomic_write_bytes
from voszoo.viz.html import href, page

__all__ = ["LEADERBOARD_NAME", "write_leaderboard_html"]

LEADERBOARD_NAME = "leaderboard.html"


def write_leaderboard_html(
    out_dir: str | Path,
    *,
    title: str,
    headers: list[str],
    rows: list[list[str]],
    reports: dict[int, Path],
    plot: Path | None = None,
    note: str = "",
) -> Path:
    """Write ``out_dir/leaderboard.html``: ``rows`` (cells already formatted, under ``headers``) with a last column
    linking row i to ``reports[i]`` when it has one, then the ``plot`` image if given; returns the page's path."""
    out_dir = Path(out_dir)
    head = "".join(f"<th>{escape(h)}</th>" for h in [*headers, "report"])
    lines = []
    for index, cells in enumerate(rows):
        report = reports.get(index)
        link = f'<a href="{href(report, out_dir)}">report</a>' if report is not None else "-"
        tds = "".join(f"<td>{escape(cell)}</td>" for cell in cells)
        lines.append(f'<tr class="entry" data-entry="{escape(cells[0])}">{tds}<td>{link}</td></tr>')
    figure = (
        f'<h2>J&amp;F against FPS</h2>\n<p><img src="{href(plot, out_dir)}" alt="J&amp;F against FPS"></p>'
        if plot is not None
        else '<p class="note">No J&amp;F-FPS plot (matplotlib is not installed, or no row has both numbers).</p>'
    )
    body = (
        f'<p class="note">{escape(note)}</p>\n<table id="leaderboard">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(lines)
        + f"\n</tbody>\n</table>\n{figure}"
    )
    path = out_dir / LEADERBOARD_NAME
    atomic_write_bytes(path, page(title, body).encode())
    return path
