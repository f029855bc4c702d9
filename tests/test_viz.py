"""voszoo-viz and the HTML reports on a tiny generated ToyVOS: overlay colours against an independently computed DAVIS
palette blend, the report's rows (every sequence, worst first) and links (none broken), --compare, MP4 and GIF
animations, voszoo-eval viz=true, the bench's leaderboard.html, and both pages rendered by a real headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from voszoo.data.io import read_labels
from voszoo.evaluation.pipeline import evaluate_predictor
from voszoo.hydra_compose import compose_config
from voszoo.inference.predict import CopyFirstFrame
from voszoo.viz.cli import main as viz_main

TINY = ["data.generate.videos=15", "data.generate.frames=3", "data.generate.size=[64,64]"]
INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium (or `make test`, which installs it)"


def palette_colour(label: int) -> tuple[int, int, int]:
    """The DAVIS / PASCAL VOC colour of ``label``, written from the definition: bit 3i (3i+1, 3i+2) of the label is
    bit 7-i of red (green, blue)."""
    red = green = blue = 0
    for i in range(8):
        red |= ((label >> (3 * i)) & 1) << (7 - i)
        green |= ((label >> (3 * i + 1)) & 1) << (7 - i)
        blue |= ((label >> (3 * i + 2)) & 1) << (7 - i)
    return red, green, blue


def expected_overlay(frame: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """Labelled pixels: (1 - alpha) * frame + alpha * colour, rounded half up, in exact rational arithmetic."""
    weight = Fraction(alpha)
    out = frame.astype(np.int64).copy()
    for y, x in zip(*np.nonzero(labels), strict=True):
        colour = palette_colour(int(labels[y, x]))
        out[y, x] = [
            math.floor((1 - weight) * int(frame[y, x, c]) + weight * colour[c] + Fraction(1, 2)) for c in range(3)
        ]
    return out.astype(np.uint8)


class Links(HTMLParser):
    """Every href/src of a page, and the data-sequence / data-entry of its table rows, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.rows: list[dict[str, str | None]] = []
        self.cells: list[list[str]] = []
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.targets += [value for key, value in attrs if key in ("href", "src") and value]
        if tag == "tr" and ("data-sequence" in attributes or "data-entry" in attributes):
            self.rows.append(attributes)
            self.cells.append([])
        self._in_td = tag == "td"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, data: str) -> None:
        if self._in_td and self.cells and data.strip():
            self.cells[-1].append(data.strip())


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text())
    return links


def assert_no_broken_links(page: Path) -> list[Path]:
    targets = parse(page).targets
    assert targets, f"{page} links to nothing"
    found = []
    for target in targets:
        url = urlparse(target)
        assert not url.scheme and not url.netloc and not target.startswith("/"), f"{page}: {target} is not relative"
        path = page.parent / unquote(url.path)
        assert path.exists(), f"{page}: broken link {target}"
        found.append(path)
    return found


class EveryOtherFrame:
    """A second method for --compare: the ground truth on even frames, nothing on odd ones."""

    name = "every_other_frame"

    def predict(self, video):
        for index in range(video.num_frames):
            yield video.labels(index) if index % 2 == 0 else np.zeros(video.size, dtype=np.uint8)


def make_run(folder: Path, predictor, cfg) -> Path:
    from voszoo.instantiate import build

    evaluate_predictor(predictor, build(cfg.data.eval, key="data.eval"), folder, workers=1, progress=False)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"model": predictor.name}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ToyVOS root, a copy-first-frame run, an every-other-frame run), each as voszoo-eval lays it out."""
    from voszoo.cli_common import prepare_data

    work = tmp_path_factory.mktemp("viz")
    root = work / "toy"
    cfg = compose_config("eval", [*TINY, f"data.root={root}"])
    prepare_data(cfg.data)
    return root, make_run(work / "copy", CopyFirstFrame(), cfg), make_run(work / "other", EveryOtherFrame(), cfg)


def test_overlay_blends_the_davis_palette() -> None:
    from voszoo.viz import overlay_labels

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    labels = rng.choice(np.array([0, 1, 2, 3, 7, 255], dtype=np.uint8), size=(6, 7))
    for alpha in (0.5, 0.25, 0.75, 1.0):  # binary fractions: the float blend is exact
        np.testing.assert_array_equal(
            overlay_labels(frame, labels, alpha=alpha), expected_overlay(frame, labels, alpha)
        )
    np.testing.assert_array_equal(overlay_labels(frame, None), frame)
    with pytest.raises(ValueError, match=r"labels shape \(2, 2\) does not match frame shape \(6, 7\)"):
        overlay_labels(frame, labels[:2, :2])


def test_written_frames_show_prediction_and_ground_truth_in_the_palette(runs, tmp_path: Path) -> None:
    from voszoo.data.davis import ToyVOS

    root, copy, _ = runs
    assert viz_main([str(copy), "--out", str(tmp_path), "--format", "gif"]) == 0
    video = ToyVOS(root, split="val").video(sorted(p.name for p in (copy / "predictions").iterdir())[0])
    for index, frame_name in enumerate(video.frame_names):
        written = np.asarray(Image.open(tmp_path / "overlays" / video.name / f"{frame_name}.png").convert("RGB"))
        width = video.size[1]
        assert written.shape == (video.size[0], 2 * width + 4, 3)  # prediction | 4 px gap | ground truth
        predicted = read_labels(copy / "predictions" / video.name / f"{frame_name}.png")
        np.testing.assert_array_equal(written[:, :width], expected_overlay(video.frame(index), predicted, 0.5))
        truth = expected_overlay(video.frame(index), video.labels(index), 0.5)
        np.testing.assert_array_equal(written[:, width + 4 :], truth)
    with Image.open(tmp_path / "overlays" / f"{video.name}.gif") as gif:
        assert gif.n_frames == video.num_frames


def test_report_lists_every_sequence_worst_first_with_working_links(runs) -> None:
    _, copy, _ = runs
    assert viz_main([str(copy)]) == 0
    report = copy / "viz" / "report.html"
    page = parse(report)
    predicted = sorted(p.name for p in (copy / "predictions").iterdir())
    assert sorted(row["data-sequence"] for row in page.rows) == predicted and len(predicted) >= 3
    results = json.loads((copy / "results.json").read_text())["sequences"]
    expected = {s["name"]: 100 * np.mean([(o["J-Mean"] + o["F-Mean"]) / 2 for o in s["objects"]]) for s in results}
    shown = [float(cells[2]) for cells in page.cells]
    assert shown == sorted(shown)  # worst first
    assert shown == pytest.approx([expected[row["data-sequence"]] for row in page.rows], abs=0.051)
    linked = assert_no_broken_links(report)
    assert {p.name for p in linked} == {f"{name}.mp4" for name in predicted}  # imageio-ffmpeg: MP4 (test extra)
    import imageio.v3 as iio

    frames = len(list((copy / "predictions" / predicted[0]).glob("*.png")))
    assert iio.imread(copy / "viz" / "overlays" / f"{predicted[0]}.mp4", plugin="FFMPEG").shape[0] == frames
    # the folder can be moved: every link is relative to it
    moved = copy.parent / "moved_viz"
    shutil.copytree(copy / "viz", moved)
    assert_no_broken_links(moved / "report.html")


def test_compare_shows_both_runs_side_by_side(runs, tmp_path: Path) -> None:
    _, copy, other = runs
    out = tmp_path / "cmp"
    assert viz_main([str(copy), "--compare", str(other), "--out", str(out), "--format", "gif"]) == 0
    report = out / "report.html"
    text = report.read_text()
    assert "J&amp;F % copy_first_frame" in text and "J&amp;F % every_other_frame" in text
    page = parse(report)
    names = sorted(p.name for p in (copy / "predictions").iterdir())
    assert sorted(row["data-sequence"] for row in page.rows) == names
    linked = assert_no_broken_links(report)
    assert {p.relative_to(out).as_posix() for p in linked} == {
        f"{folder}/{name}.gif" for folder in ("overlays", "compare") for name in names
    }
    first = [float(cells[2]) for cells in page.cells]
    assert first == sorted(first)  # sorted by the first run
    assert all(len(cells) == 9 for cells in page.cells)  # #, name, 3 + 3 scores, delta (animations are media)


def test_viz_errors_are_one_line_naming_the_folder(runs, tmp_path: Path, capsys) -> None:
    assert viz_main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"voszoo-viz: error: {tmp_path}: no predictions/ folder here (nor in eval_final/): not the "
        "output folder of a voszoo evaluation"
    )
    _, copy, _ = runs
    assert viz_main([str(copy), "--out", str(tmp_path / "x"), "--sequences", "nope"]) == 1
    assert "--sequences: nope not predicted in" in capsys.readouterr().err
    assert viz_main([str(copy), "--out", str(tmp_path / "x"), "--fps", "0"]) == 1
    assert "--fps must be positive, got 0.0" in capsys.readouterr().err


def test_eval_viz_true_writes_the_report(runs) -> None:
    root, copy, _ = runs
    out = copy.parent / "eval_viz"
    done = subprocess.run(
        [sys.executable, "-m", "voszoo.evaluate", "model=stm_r18", "viz=true", "workers=1", *TINY,
         f"data.root={root}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=900, check=False, cwd=copy.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = out / "viz" / "report.html"
    assert len(parse(report).rows) == len(list((out / "predictions").iterdir()))
    assert_no_broken_links(report)


def test_bench_viz_writes_entry_reports_and_the_leaderboard_page(runs, tmp_path: Path) -> None:
    from voszoo.benchmark import run_benchmark, write_plot

    root, _, _ = runs
    entries = "entries=[{name: copy_first_frame, baseline: copy_first_frame}, {name: broken, baseline: nope}]"
    cfg = compose_config("bench", [entries, *TINY, f"data.root={root}", "viz=true", "workers=1"])
    rows = run_benchmark(cfg, tmp_path)
    page = tmp_path / "leaderboard.html"
    parsed = parse(page)
    assert [row["data-entry"] for row in parsed.rows] == ["copy_first_frame", "broken"]
    linked = {p.relative_to(tmp_path).as_posix() for p in assert_no_broken_links(page)}
    # the copy-first-frame row is in the plot (at its evaluation FPS: it is not profiled) and links to its report
    assert linked == {"copy_first_frame/viz/report.html", "leaderboard.png"}
    assert rows[0]["fps"] is None and rows[0]["eval fps"] > 0
    assert write_plot(rows[:1], tmp_path / "only_baseline.png") == tmp_path / "only_baseline.png"
    assert_no_broken_links(tmp_path / "copy_first_frame" / "viz" / "report.html")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(f"chromium is not installed; the HTML reports are tested in it. Install it: {INSTALL_CHROMIUM}")
    return found


def render(page: Path, screenshot: Path) -> str:
    """Chromium's screenshot of ``page`` at 1200x900 into ``screenshot``; returns the DOM it built."""
    common = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    url = page.resolve().as_uri()
    shot = subprocess.run(
        [*common, f"--screenshot={screenshot}", "--window-size=1200,900", url],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.mark.slow
def test_reports_render_in_headless_chromium(runs, tmp_path: Path) -> None:
    from voszoo.benchmark import write_html

    chromium()  # fails at once, saying how to install it, if it is missing
    _, copy, other = runs
    out = tmp_path / "cmp"
    assert viz_main([str(copy), "--compare", str(other), "--out", str(out)]) == 0
    dom = render(out / "report.html", tmp_path / "report.png")
    names = sorted(p.name for p in (copy / "predictions").iterdir())
    for name in names:
        assert f'<tr class="sequence" data-sequence="{name}">' in dom
    screenshot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
    print(f"screenshot: {tmp_path / 'report.png'}")
    assert screenshot.shape == (900, 1200, 3)
    assert len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 50  # text, table and overlays, not a blank page
    rows = [{"entry": "copy_first_frame", "status": "ok", "source": "measured (here)", "J&F": 0.2}]
    board = write_html(rows, out, title="board", reports={0: out / "report.html"})
    assert '<tr class="entry" data-entry="copy_first_frame">' in render(board, tmp_path / "board.png")
