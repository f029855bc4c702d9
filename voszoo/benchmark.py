"""voszoo-bench: the leaderboard on one dataset (Hydra app, conf/bench.yaml; docs/leaderboard.md).

Each entry is one of (one key each):

- ``baseline: copy_first_frame``: scored directly;
- ``train: [experiment=..., ...]``: voszoo-train overrides; trained in a child process and scored on the evaluation
  split (the training run's final evaluation);
- ``evaluate: [model=..., checkpoint=..., ...]``: voszoo-eval overrides; a given checkpoint (e.g. official weights on
  DAVIS) scored in a child process, no training;
- ``cost_only: <preset>`` (optionally ``overrides: [key=value, ...]`` of the model config): the cost columns alone,
  for presets that cannot be trained or scored on this machine (J&F stays empty; the row says so).

With ``cost_only_untrained: true`` (conf/leaderboard.yaml) the board adds a ``cost_only`` row for every model preset
(``voszoo.list_models()``, the board's own config folders included) that no entry trains, evaluates or profiles:
the board's preset rows are generated from the config tree, never kept by hand (:func:`board_entries`).

Every model entry is then profiled in a fresh process (``python -m voszoo.profiling``, see
:mod:`voszoo.profiling`): parameters, MACs of one inference step, FPS and peak memory at ``profile.size`` (480p by
default). With ``published: true`` the papers' results for the board's dataset and split
(``voszoo/resources/published.yaml``, shipped with the package) are added as rows whose ``source`` says
``published (paper, table)``; measured rows say ``measured (here)``. ToyVOS has no published rows.

Results go to ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json``, ``leaderboard.html`` (the table, the
plot and a link to every entry's report) and (when matplotlib is installed) ``leaderboard.png`` (J&F against FPS) in
the output dir, and the table is printed. With ``viz: true`` every scored entry also gets ``<entry>/viz/report.html``
(:mod:`voszoo.viz`: its overlays and per-sequence table, as ``voszoo-viz`` writes it). A failing entry is reported as a
failed row; the other entries still run, and the app exits with status 1 at the end.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from voszoo.cli_common import hydra_entry, prepare_data

__all__ = [
    "COLUMNS",
    "failed_rows",
    "format_markdown",
    "main",
    "board_entries",
    "published_rows",
    "run_benchmark",
    "user_search_path",
    "write_html",
    "write_plot",
]

logger = logging.getLogger("voszoo.bench")

BASELINES = ("copy_first_frame",)
ENTRY_KINDS = ("baseline", "train", "evaluate", "cost_only")
MEASURED = "measured (here)"
PUBLISHED_STATUS = "published"
# row keys, in table order; scores are fractions in [0, 1] in the rows, csv and json (the markdown shows percentages)
COLUMNS = (
    "entry",
    "status",
    "source",
    "J&F",
    "J",
    "F",
    "params",
    "macs_per_frame",
    "fps",
    "peak_mem_mb",
    "device",
    "train data",
    "eval fps",
    "train steps",
    "minutes",
)
_HEADERS = {
    "J&F": "J&F %",
    "J": "J %",
    "F": "F %",
    "params": "params (M)",
    "macs_per_frame": "GMACs/frame",
    "fps": "FPS",
    "peak_mem_mb": "peak mem (MB)",
    "eval fps": "eval FPS",
}
# voszoo data config name -> dataset name in voszoo/resources/published.yaml (None: no published results exist)
PUBLISHED_DATASETS = {
    "toyvos": None,
    "davis2016": "DAVIS 2016",
    "davis2017": "DAVIS 2017",
    "youtube_vos2018": "YouTube-VOS 2018",
    "youtube_vos2019": "YouTube-VOS 2019",
}
_SPLITS = {"valid": "val"}  # YouTube-VOS's folder name -> the papers' split name


def _run_baseline(entry: DictConfig, cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.inference.predict import CopyFirstFrame
    from voszoo.instantiate import build

    if entry.baseline not in BASELINES:
        raise ValueError(f"entry {entry.name!r}: unknown baseline {entry.baseline!r}; valid: {', '.join(BASELINES)}")
    collection = build(cfg.data.eval, key="data.eval")
    return evaluate_predictor(CopyFirstFrame(), collection, out_dir, workers=int(cfg.workers), overwrite=True)


def _prepare_pretrained(entries: Any, search_path: list[str]) -> None:
    """Build the ToyVOS pre-training the training entries need (``weights: toyvos``) here, with its progress bar in
    view, rather than silently inside the first child run's log. An entry that does not compose is left to fail as
    its own row."""
    from voszoo.hydra_compose import compose_config
    from voszoo.pretrain import prepare_pretrained

    for entry in entries:
        if "train" not in entry:
            continue
        try:
            model_cfg = compose_config("train", [*_search_path_override(search_path), *map(str, entry.train)]).model
        except Exception as error:  # noqa: BLE001 - reported by the entry's own run
            logger.warning("entry %s: cannot compose its config to look for weights: toyvos (%s)", entry.name, error)
            continue
        prepare_pretrained(model_cfg)


def _entry_preset(entry: DictConfig, search_path: list[str]) -> str | None:
    """The model preset an entry trains, evaluates or profiles (its composed ``model.name``); None for a baseline or
    an entry that does not compose (it fails as its own row)."""
    from voszoo.hydra_compose import compose_config

    if entry.get("cost_only"):
        return str(entry.cost_only)
    config_name, overrides = ("train", entry.get("train")) if entry.get("train") else ("eval", entry.get("evaluate"))
    if not overrides:
        return None
    try:
        return str(compose_config(config_name, [*_search_path_override(search_path), *map(str, overrides)]).model.name)
    except Exception as error:  # noqa: BLE001 - reported by the entry's own run
        logger.warning("entry %s: cannot compose its config to find its preset (%s)", entry.get("name"), error)
        return None


def board_entries(cfg: DictConfig, search_path: list[str] | None = None) -> list[DictConfig]:
    """The entries the board runs: ``cfg.entries``, then, with ``cfg.cost_only_untrained``, a ``cost_only`` row for
    every preset of :func:`voszoo.list_models` (and of the ``file://`` folders in ``search_path``, the board's own
    config folders) that none of them trains, evaluates or profiles, in name order."""
    from voszoo.models.registry import list_models

    entries = list(cfg.entries)
    if not cfg.cost_only_untrained:
        return entries
    search_path = list(search_path or [])
    folders = [item.removeprefix("file://") for item in search_path if item.startswith("file://")]
    covered = {_entry_preset(entry, search_path) for entry in entries}
    names = {str(entry.get("name")) for entry in entries}
    for preset in list_models(config_dir=folders or None):
        if preset not in covered:
            if preset in names:
                raise ValueError(
                    f"cost_only_untrained: preset {preset!r} needs a row, but an entry already has its name"
                )
            entries.append(OmegaConf.create({"name": preset, "cost_only": preset}))
    return entries


def _run_logged(command: list[str], log_path: Path, what: str) -> None:
    logger.info("%s: %s", what, " ".join(command))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{what} exited with {completed.returncode} (log: {log_path}): " + " | ".join(tail))


def _data_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that give a child process the board's dataset: its config, folder and (ToyVOS) the generation
    parameters, which must match the generated folder exactly."""
    overrides = [f"data={cfg.data.name}", f"data.root={cfg.data.root}"]
    generate = cfg.data.get("generate")
    if generate is not None:
        values = OmegaConf.to_container(generate, resolve=True)
        overrides += [f"data.generate.{key}={json.dumps(value)}" for key, value in values.items()]
    return overrides


def user_search_path() -> list[str]:
    """The config folders this Hydra app was given on top of voszoo's own (``--config-dir``, ``hydra.searchpath``),
    as search path entries (``file:///abs/dir``, ``pkg://module``); the children of the board get them too, so that
    an entry may name one's own presets."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    added = [s for s in sources if s.provider == "command-line" or s.provider.startswith("hydra.searchpath")]
    return [f"{source.schema}://{source.path}" for source in added]


def _search_path_override(search_path: list[str]) -> list[str]:
    return [f"hydra.searchpath=[{','.join(repr(entry) for entry in search_path)}]"] if search_path else []


def _run_child(
    module: str, overrides: list[str], out_dir: Path, *, log_name: str, what: str, search_path: list[str]
) -> dict[str, Any]:
    """Run ``python -m <module>`` (a voszoo Hydra app) with ``overrides`` into ``out_dir``; its ``metrics.json``."""
    command = [
        sys.executable,
        "-m",
        module,
        *_search_path_override(search_path),
        *overrides,
        f"hydra.run.dir={out_dir}",
    ]
    _run_logged(command, out_dir / log_name, what)
    return json.loads((out_dir / "metrics.json").read_text())


def _run_training(entry: DictConfig, cfg: DictConfig, out_dir: Path, search_path: list[str]) -> dict[str, Any]:
    overrides = [*_data_overrides(cfg), f"seed={cfg.seed}", *(str(o) for o in entry.train)]
    return _run_child(
        "voszoo.train", overrides, out_dir, log_name="train.log", what="voszoo-train", search_path=search_path
    )


def _run_evaluation(entry: DictConfig, cfg: DictConfig, out_dir: Path, search_path: list[str]) -> dict[str, Any]:
    given = [str(o) for o in entry.evaluate]
    if not any(o.split("=", 1)[0].lstrip("+") == "checkpoint" for o in given):
        # random weights would give a meaningless score that looks like a result
        raise ValueError(f"entry {entry.name!r}: 'evaluate' needs a checkpoint=<path> override (got {given})")
    # The entry's folder belongs to this benchmark run: an earlier run's results there are replaced.
    overrides = [*_data_overrides(cfg), f"workers={int(cfg.workers)}", "overwrite=true", *given]
    return _run_child(
        "voszoo.evaluate", overrides, out_dir, log_name="eval.log", what="voszoo-eval", search_path=search_path
    )


def _entry_kind(entry: DictConfig) -> str:
    """The one key among ENTRY_KINDS that ``entry`` sets (a clear error for none or several)."""
    kinds = [kind for kind in ENTRY_KINDS if entry.get(kind)]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        raise ValueError(f"entry {entry.get('name')!r} needs exactly one of {', '.join(ENTRY_KINDS)} (found: {found})")
    return kinds[0]


def _fast_path_flags(fast_paths: DictConfig | None) -> list[str]:
    """``voszoo.profiling`` flags for the ``fast_paths`` node of conf/bench.yaml (None: the session's defaults)."""
    if fast_paths is None:
        return []
    flags = []
    if fast_paths.get("amp") not in (None, "none"):
        flags += ["--amp", str(fast_paths.amp)]
    if fast_paths.get("compile", False):
        flags.append("--compile")
    if not fast_paths.get("channels_last", True):
        flags.append("--no-channels-last")
    flush = fast_paths.get("flush_denormal", "auto")
    if str(flush).lower() not in ("auto", "none"):  # YAML's on/off/true/false arrive as booleans
        flags += ["--flush-denormal", "on" if flush in (True, "on", "true") else "off"]
    return flags


def _profile_source(entry: DictConfig, out_dir: Path, search_path: list[str]) -> list[str]:
    """``voszoo.profiling`` arguments naming the entry's model: the run config its child process wrote in
    ``out_dir`` (train / evaluate), or the preset and overrides of a ``cost_only`` entry (found in the board's own
    config folders too)."""
    if entry.get("cost_only"):
        overrides = [str(o) for o in entry.get("overrides") or []]
        folders = [item.removeprefix("file://") for item in search_path if item.startswith("file://")]
        return [
            str(entry.cost_only),
            *(arg for o in overrides for arg in ("--override", o)),
            *(arg for folder in folders for arg in ("--config-dir", folder)),
        ]
    config = out_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise RuntimeError(f"profiling: the run wrote no config at {config}")
    return ["--config", str(config)]


def _run_profile(
    profile: DictConfig, out_dir: Path, fast_paths: DictConfig | None = None, *, source: list[str]
) -> dict[str, Any]:
    """Profile the model named by ``source`` (:func:`_profile_source`) in a fresh process, so that the peak memory
    is that of one short inference session and nothing else."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "profile.json"
    command = [sys.executable, "-m", "voszoo.profiling", *source, "--memory-policy"]
    command += ["--size", *(str(int(s)) for s in profile.size), "--frames", str(int(profile.frames))]
    command += ["--objects", str(int(profile.num_objects)), "--device", str(profile.device), "--json", str(result_path)]
    command += _fast_path_flags(fast_paths)
    _run_logged(command, out_dir / "profile.log", "profiling")
    return json.loads(result_path.read_text())


def _short_paper(paper: str) -> str:
    return re.sub(r",\s*[\w.-]+\.txt$", "", paper).strip()  # drop the seed-file name the yaml cites


def _training_data(row: dict[str, Any]) -> str:
    flags = {True: "yes", False: "no", None: "not stated"}
    return f"static images: {flags[row['static_pretraining']]}, YouTube-VOS: {flags[row['youtube_vos']]}"


def published_rows(data_name: str, split: str, *, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Leaderboard rows of the published results in ``path`` (None: the shipped voszoo/resources/published.yaml) for
    voszoo dataset
    ``data_name`` (a ``conf/data`` name, e.g. ``davis2017``) and evaluation ``split``; [] for ToyVOS or a dataset no
    paper reports. Scores become fractions like the measured rows; ``source`` names the paper and table; ``fps`` is
    the paper's (``device``: its GPU); rows sorted by J&F, best first."""
    from voszoo.published import load_published

    if data_name not in PUBLISHED_DATASETS:
        raise ValueError(f"unknown dataset {data_name!r} for published results; known: {', '.join(PUBLISHED_DATASETS)}")
    dataset = PUBLISHED_DATASETS[data_name]
    if dataset is None:
        return []
    split = _SPLITS.get(split, split)
    rows = []
    for result in load_published(path):
        if result["dataset"] != dataset or result["split"] != split:
            continue
        variant, method = result["variant"], result["method"]
        rows.append(
            {
                "entry": variant if method.lower() in variant.lower() else f"{method} {variant}",
                "status": PUBLISHED_STATUS,
                "source": f"published ({_short_paper(result['paper'])}, {result['table']})",
                **{k: None if result[k] is None else result[k] / 100.0 for k in ("J&F", "J", "F")},
                "fps": result["fps"],
                "device": result["gpu"] or "GPU not named",
                "train data": _training_data(result),
            }
        )
    return sorted(rows, key=lambda row: -row["J&F"])


def _published_file(cfg: DictConfig) -> Path:
    from voszoo.published import shipped_published_file

    return Path(cfg.published_file) if cfg.published_file else shipped_published_file()


def _published_for(cfg: DictConfig) -> list[dict[str, Any]]:
    if not cfg.published:
        return []
    name = str(cfg.data.name)
    if PUBLISHED_DATASETS.get(name, "") is None:
        logger.info("no published results exist for %s: the board shows measured rows only", name)
        return []
    path = _published_file(cfg)
    return published_rows(name, str(cfg.data.eval.get("split", "val")), path=path)


def run_benchmark(cfg: DictConfig, output_dir: str | Path) -> list[dict[str, Any]]:
    """Run every entry of ``cfg.entries`` and write the board into ``output_dir``; returns the rows (measured
    first, then the published ones)."""
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    prepare_data(cfg.data)
    published = _published_for(cfg)  # read before hours of training: a broken file fails now
    search_path = user_search_path()
    entries = board_entries(cfg, search_path)
    _prepare_pretrained(entries, search_path)
    profile = cfg.profile
    profiling = profile is not None and bool(profile.enabled)
    rows: list[dict[str, Any]] = []
    reports: dict[int, Path] = {}
    bar = tqdm(entries, desc="leaderboard", unit="entry", disable=None)  # tqdm's ETA: mean time per entry so far
    for entry in bar:
        bar.set_postfix(entry=entry.name)
        entry_dir = output_dir / str(entry.name)
        begin = time.perf_counter()
        row: dict[str, Any] = {"entry": str(entry.name), "source": MEASURED}
        try:
            kind = _entry_kind(entry)
            result: dict[str, Any] = {}
            if kind == "baseline":
                result = _run_baseline(entry, cfg, entry_dir)
            elif kind == "train":
                result = _run_training(entry, cfg, entry_dir, search_path)
                row["train data"] = f"{cfg.data.name} train"
            elif kind == "evaluate":
                result = _run_evaluation(entry, cfg, entry_dir, search_path)
                row["train data"] = "checkpoint"
            elif not profiling:
                raise ValueError(f"entry {entry.name!r}: 'cost_only' needs profile.enabled: true")
            row.update({k: result.get(k) for k in ("J&F", "J", "F")})
            row["eval fps"] = result.get("fps")
            row["train steps"] = result.get("steps")
            if kind != "baseline" and profiling:
                source = _profile_source(entry, entry_dir, search_path)
                costs = _run_profile(profile, entry_dir, cfg.fast_paths, source=source)
                row.update({k: costs.get(k) for k in ("params", "macs_per_frame", "fps", "peak_mem_mb", "device")})
            row["status"] = "ok (cost only)" if kind == "cost_only" else "ok"
            if kind != "cost_only" and cfg.viz:
                report = _write_entry_report(entry_dir, cfg)
                if report is not None:
                    reports[len(rows)] = report
        except Exception as error:  # noqa: BLE001 - a failed entry is a row, not the end of the board
            logger.error("entry %s failed: %s\n%s", entry.name, error, traceback.format_exc())
            row["status"] = f"failed: {error}"
        row["minutes"] = (time.perf_counter() - begin) / 60
        rows.append({column: row.get(column) for column in COLUMNS})
    bar.close()
    rows += [{column: row.get(column) for column in COLUMNS} for row in published]
    _write_outputs(rows, output_dir, cfg)
    plot = None
    if cfg.plot:
        plot = write_plot(rows, output_dir / "leaderboard.png", title=f"voszoo leaderboard: {cfg.data.name}")
    write_html(
        rows, output_dir, title=f"voszoo leaderboard: {cfg.data.name}", note=_title(cfg), reports=reports, plot=plot
    )
    print(f"\n{_title(cfg)}:\n")
    print(format_markdown(rows))
    print(f"\nwritten to {output_dir}/leaderboard.{{md,csv,json,html}}")
    return rows


def _title(cfg: DictConfig) -> str:
    split = cfg.data.eval.get("split", "eval")
    profile = cfg.profile
    size = "x".join(str(s) for s in profile.size[::-1]) if profile is not None else "?"
    return (
        f"voszoo leaderboard on {cfg.data.name} ({split} split); measured rows trained and scored here, "
        f"costs (params, MACs, FPS, peak memory) at {size}"
    )


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("J&F", "J", "F"):
        return f"{100.0 * value:.1f}"
    if column == "params":
        return f"{value / 1e6:.2f}"
    if column == "macs_per_frame":
        return f"{value / 1e9:.1f}"
    if column in ("fps", "eval fps"):
        return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "/")


def _write_entry_report(entry_dir: Path, cfg: DictConfig) -> Path | None:
    """``<entry>/viz/report.html`` of a scored entry (overlays of its predictions on the board's dataset); None,
    with a warning, if it cannot be written (the entry's scores stand)."""
    from voszoo.instantiate import build
    from voszoo.viz import load_run, write_report

    try:
        run = load_run(entry_dir, collection=build(cfg.data.eval, key="data.eval"))
        return write_report(run, entry_dir / "viz", progress=False)
    except Exception as error:  # noqa: BLE001 - a missing picture must not fail a scored entry
        logger.warning("entry %s: no report (%s)", entry_dir.name, error)
        return None


def write_html(
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    *,
    title: str,
    note: str = "",
    reports: dict[int, Path] | None = None,
    plot: Path | None = None,
) -> Path:
    """``leaderboard.html`` in ``output_dir``: the rows as in the markdown table, ``plot`` (leaderboard.png) and a link
    from row i to ``reports[i]`` (an entry's viz/report.html)."""
    from voszoo.viz.leaderboard import write_leaderboard_html

    headers = [_HEADERS.get(column, column) for column in COLUMNS]
    cells = [[_cell(column, row.get(column)) for column in COLUMNS] for row in rows]
    return write_leaderboard_html(
        output_dir, title=title, headers=headers, rows=cells, reports=reports or {}, plot=plot, note=note
    )


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (scores as percentages, params in millions, MACs in G)."""
    headers = [_HEADERS.get(column, column) for column in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(column, row.get(column)) for column in COLUMNS) + " |")
    return "\n".join(lines)


def _plot_fps(row: dict[str, Any]) -> float | None:
    """The FPS a row is plotted at: the profiled one, or for a measured row that was not profiled (the
    copy-first-frame baseline) its evaluation FPS."""
    if row.get("fps"):
        return row["fps"]
    return (row.get("eval fps") or None) if row.get("source") == MEASURED else None


def write_plot(rows: list[dict[str, Any]], path: str | Path, *, title: str = "voszoo leaderboard") -> Path | None:
    """J&F against FPS of the rows that have both, as a PNG (measured: circles, published: triangles; a measured row
    without a profile, such as the copy-first-frame baseline, is a square at its evaluation FPS).

    Returns the path, or None when matplotlib is not installed (one log line) or no row has both numbers.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no J&F-FPS plot (pip install matplotlib to get one)")
        return None
    points = [row for row in rows if row.get("J&F") is not None and _plot_fps(row)]
    if not points:
        logger.info("no row has both J&F and FPS: no plot")
        return None
    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    groups = (
        ("measured here", "o", lambda r: r.get("source") == MEASURED and bool(r.get("fps"))),
        (
            "measured here, evaluation FPS (not profiled)",
            "s",
            lambda r: r.get("source") == MEASURED and not r.get("fps"),
        ),
        ("published (paper's GPU)", "^", lambda r: r.get("source") != MEASURED),
    )
    for label, marker, member in groups:
        group = [row for row in points if member(row)]
        if not group:
            continue
        axes.scatter([_plot_fps(r) for r in group], [100 * r["J&F"] for r in group], marker=marker, label=label)
        for r in group:
            axes.annotate(
                str(r["entry"]), (_plot_fps(r), 100 * r["J&F"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    axes.set_xscale("log")
    axes.set_xlabel("FPS (log scale)")
    axes.set_ylabel("J&F (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _write_outputs(rows: list[dict[str, Any]], output_dir: Path, cfg: DictConfig) -> None:
    from voszoo.data.io import atomic_write_bytes

    header = (
        f"# voszoo leaderboard: {cfg.data.name}\n\n{_title(cfg)}. `source` tells measured rows from the papers' "
        "numbers; a published FPS is the paper's, on its GPU (see docs/leaderboard.md).\n\n"
    )
    atomic_write_bytes(output_dir / "leaderboard.md", (header + format_markdown(rows) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(output_dir / "leaderboard.csv", buffer.getvalue().encode())
    payload = {"data": OmegaConf.to_container(cfg.data, resolve=True), "rows": rows}
    if cfg.profile is not None:
        payload["profile"] = OmegaConf.to_container(cfg.profile, resolve=True)
    if cfg.fast_paths is not None:
        payload["fast_paths"] = OmegaConf.to_container(cfg.fast_paths, resolve=True)
    atomic_write_bytes(output_dir / "leaderboard.json", (json.dumps(payload, indent=2, default=str) + "\n").encode())


def failed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured rows that did not finish (published rows never count)."""
    return [row for row in rows if row.get("source") == MEASURED and not str(row.get("status")).startswith("ok")]


def _task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    rows = run_benchmark(cfg, HydraConfig.get().runtime.output_dir)
    if failed_rows(rows):
        raise SystemExit(1)


def main() -> None:
    hydra_entry(_task, "bench")


if __name__ == "__main__":
    main()
