"""The wheel ships the config tree as voszoo/conf (an installed voszoo finds it from any directory), the papers'
published numbers, the py.typed marker and every console script, voszoo-collect included."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_config_tree_and_entry_points(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("voszoo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"voszoo/{name}" for name in expected} <= names
    assert "voszoo/models/stm.py" in names and not any(n.startswith("tests/") for n in names)
    bundled = {p.relative_to(ROOT).as_posix() for p in (ROOT / "voszoo" / "pretraining" / "bundled").glob("*.pt")}
    assert bundled and bundled <= names  # weights: toyvos works from a fresh install, with no pre-training run
    assert {"voszoo/resources/published.yaml", "voszoo/py.typed", "voszoo/collect.py"} <= names
    scripts = ("voszoo-train", "voszoo-pretrain", "voszoo-eval", "voszoo-bench", "voszoo-score", "voszoo-toyvos")
    for script in (*scripts, "voszoo-pack-ytvos"):
        assert f"{script} = " in entry_points
    assert "voszoo-collect = voszoo.collect:main" in entry_points
    assert "voszoo-viz = voszoo.viz.cli:main" in entry_points and "voszoo/viz/report.py" in names
