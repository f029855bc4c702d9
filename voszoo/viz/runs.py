"""An evaluation run's folder, read back: its predicted PNGs, per-sequence scores and the dataset it was scored on.

Layouts understood (what ``voszoo-eval``, ``voszoo-train``'s final evaluation and ``voszoo-bench`` write):

    RUN/predictions/<seq>/<frame>.png, RUN/results.json (or per-sequence_results-<split>.csv), RUN/.hydra/config.yaml
    RUN/eval_final/predictions/...     a voszoo-train run: the scores are in eval_final/, the config in RUN/.hydra
    BOARD/<entry>/predictions/...      a voszoo-bench baseline entry: the config is the board's, BOARD/.hydra

The dataset comes from the recorded config's ``data.eval`` (``data.root`` replaced by ``data_root`` if given, e.g.
when the dataset has moved since).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voszoo.errors import UserError

__all__ = ["EvalRun", "load_run", "sequence_scores"]

Scores = dict[str, float]


@dataclass
class EvalRun:
    """``folder``: the folder given; ``results_dir``: the one holding ``predictions/`` and the scores; ``scores``:
    {sequence: {"J&F", "J", "F"}} (fractions; sequences the run did not score are absent); ``config``: the recorded
    Hydra config (None if none was found); ``label``: the model name from ``metrics.json`` or the folder name."""

    folder: Path
    results_dir: Path
    scores: dict[str, Scores]
    config: Any = None
    label: str = ""
    data_root: str | None = None
    _collection: Any = field(default=None, repr=False)

    @property
    def predictions(self) -> Path:
        return self.results_dir / "predictions"

    @property
    def sequences(self) -> list[str]:
        """Sequences with a folder of predicted PNGs, sorted by name."""
        return sorted(path.name for path in self.predictions.iterdir() if path.is_dir())

    def collection(self) -> Any:
        """The scored split as a ``VideoCollection`` (frames and ground truth), built from the recorded config."""
        if self._collection is None:
            if self.config is None or self.config.get("data") is None or self.config.data.get("eval") is None:
                raise UserError(
                    f"{self.folder}: no .hydra/config.yaml with data.eval records which dataset was scored",
                    hint="pass the folder of a voszoo-eval run (or of a voszoo-train / voszoo-bench run)",
                )
            from voszoo.instantiate import build

            data = self.config.data
            if self.data_root is not None:
                data.root = self.data_root
            root = Path(str(data.get("root", "")))
            if data.get("root") is not None and not root.is_dir():
                raise UserError(
                    f"{self.folder}: the dataset folder it was scored on, {root}, does not exist",
                    hint="pass --data-root <the dataset folder> if it has moved",
                )
            self._collection = build(data.eval, key="data.eval")
        return self._collection


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def _scores(j: list[float], f: list[float]) -> Scores | None:
    mean_j, mean_f = _mean(j), _mean(f)
    if mean_j is None or mean_f is None:
        return None
    return {"J&F": (mean_j + mean_f) / 2.0, "J": mean_j, "F": mean_f}


def sequence_scores(results_dir: str | Path) -> dict[str, Scores]:
    """{sequence: {"J&F", "J", "F"}} averaged over its objects, from ``results.json`` (full precision) or else the
    official ``per-sequence_results-*.csv`` (rows ``<seq>_<k>``); {} when the run wrote neither (YouTube-VOS)."""
    results_dir = Path(results_dir)
    results = results_dir / "results.json"
    found: dict[str, Scores] = {}
    if results.is_file():
        try:
            document = json.loads(results.read_text())
            for sequence in document["sequences"]:
                objects = sequence["objects"]
                scores = _scores([o["J-Mean"] for o in objects], [o["F-Mean"] for o in objects])
                if scores is not None:
                    found[str(sequence["name"])] = scores
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{results}: not a voszoo results.json ({type(error).__name__}: {error})") from error
        return found
    tables = sorted(results_dir.glob("per-sequence_results-*.csv"))
    if not tables:
        return found
    rows: dict[str, tuple[list[float], list[float]]] = {}
    try:
        with tables[0].open(newline="") as handle:
            for row in csv.DictReader(handle):
                name = row["Sequence"].rsplit("_", 1)[0]
                j, f = rows.setdefault(name, ([], []))
                j.append(float(row["J-Mean"]) if row["J-Mean"] else math.nan)
                f.append(float(row["F-Mean"]) if row["F-Mean"] else math.nan)
    except (ValueError, KeyError) as error:
        raise UserError(f"{tables[0]}: not a per-sequence results CSV ({type(error).__name__}: {error})") from error
    for name, (j, f) in rows.items():
        scores = _scores(j, f)
        if scores is not None:
            found[name] = scores
    return found


def _find_results_dir(folder: Path) -> Path:
    for candidate in (folder, folder / "eval_final"):
        if (candidate / "predictions").is_dir():
            return candidate
    raise UserError(
        f"{folder}: no predictions/ folder here (nor in eval_final/): not the output folder of a voszoo evaluation",
        hint="pass the folder voszoo-eval wrote (it holds predictions/ and metrics.json)",
    )


def _find_config(folder: Path, results_dir: Path) -> Any:
    from omegaconf import OmegaConf

    for candidate in (results_dir, folder, folder.parent):
        path = candidate / ".hydra" / "config.yaml"
        if path.is_file():
            return OmegaConf.load(path)
    return None


def load_run(folder: str | Path, *, data_root: str | Path | None = None, collection: Any = None) -> EvalRun:
    """Read the evaluation run in ``folder`` (see the module docstring for the layouts). ``collection`` (a
    ``VideoCollection``) replaces the recorded dataset; ``data_root`` replaces its ``data.root``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"run folder {folder} does not exist or is not a folder")
    results_dir = _find_results_dir(folder)
    label = folder.resolve().name
    metrics = results_dir / "metrics.json"
    if not metrics.is_file():
        metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            label = str(json.loads(metrics.read_text()).get("model") or label)
        except ValueError:
            pass
    return EvalRun(
        folder=folder,
        results_dir=results_dir,
        scores=sequence_scores(results_dir),
        config=_find_config(folder, results_dir),
        label=label,
        data_root=None if data_root is None else str(data_root),
        _collection=collection,
    )
