"""Small helpers shared by the HTML pages: escaping, relative links, the page frame and media elements."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from urllib.parse import quote

__all__ = ["href", "media", "page", "percent"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: middle; }
th { background: #eee; }
td.name { text-align: left; font-family: monospace; }
td.media img, td.media video { max-width: 420px; height: auto; display: block; }
p.note { color: #555; }
"""


def href(target: str | Path, page_dir: str | Path) -> str:
    """The URL of ``target`` relative to the folder of the page (so that the folder can be moved or served)."""
    return quote(Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix())


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def media(target: str | Path, page_dir: str | Path, *, alt: str) -> str:
    """An animation (GIF as an image, MP4 as a looping muted video) that links to its file."""
    url = href(target, page_dir)
    if str(target).endswith(".mp4"):
        inner = f'<video src="{url}" autoplay loop muted playsinline preload="metadata" title="{escape(alt)}"></video>'
    else:
        inner = f'<img src="{url}" alt="{escape(alt)}" loading="lazy">'
    return f'<a href="{url}">{inner}</a>'


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
