"""Where voszoo's Hydra config tree lives: inside the installed wheel, or in the source checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["conf_dir"]


def conf_dir() -> Path:
    """Absolute path of the config tree.

    A wheel ships the tree as ``voszoo/conf``; an editable install or a source checkout has it as ``conf/`` beside the
    package. The packaged copy wins, so an installed voszoo never reads a stray ``conf/`` from the working directory.
    """
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "conf", package_dir.parent / "conf"):
        if (candidate / "bench.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"voszoo's config tree was not found at {package_dir / 'conf'} (wheel) or {package_dir.parent / 'conf'} "
        "(source checkout); reinstall voszoo"
    )
