"""Published results of the seed papers (``voszoo/resources/published.yaml``, shipped in the wheel as package
data): loading and validation.

The file holds one mapping per reported result under the top-level key ``results``. Scores are percentages as the
papers print them (voszoo's own ``metrics.json`` stores J&F, J and F as fractions in [0, 1]: multiply by 100 to
compare). Keys of a row:

- required: ``paper`` (str), ``table`` (str, e.g. ``"Table 1b"``), ``method`` (str), ``variant`` (str),
  ``dataset`` (one of :data:`DATASETS`), ``split`` (one of :data:`SPLITS`), ``backbone`` (str),
  ``static_pretraining`` and ``youtube_vos`` (training-data flags: true, false, or null when the paper does not say),
  ``J&F`` (number in [0, 100]; the overall score G on YouTube-VOS);
- optional numbers in [0, 100] or null: ``J``, ``F``, ``J_seen``, ``J_unseen``, ``F_seen``, ``F_unseen``;
- optional: ``fps`` (positive number or null), ``gpu`` (str or null), ``note`` (str).

Consistency checks (which catch transcription slips): J&F must be the mean of J and F, and on YouTube-VOS the mean of
the four seen/unseen scores, within :data:`ROUNDING` (the papers round each number to one decimal).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from voszoo.data.io import VOSDataError

__all__ = ["DATASETS", "ROUNDING", "SPLITS", "load_published", "shipped_published_file", "validate_published"]

DATASETS = ("DAVIS 2016", "DAVIS 2017", "YouTube-VOS 2018", "YouTube-VOS 2019", "YouTube-VOS")
SPLITS = ("val", "test-dev", "test-challenge")
ROUNDING = 0.15

_TEXT_KEYS = ("paper", "table", "method", "variant", "backbone")
_FLAG_KEYS = ("static_pretraining", "youtube_vos")
_SCORE_KEYS = ("J", "F", "J_seen", "J_unseen", "F_seen", "F_unseen")
_REQUIRED = (*_TEXT_KEYS, "dataset", "split", *_FLAG_KEYS, "J&F")
_ALLOWED = {*_REQUIRED, *_SCORE_KEYS, "fps", "gpu", "note"}


def shipped_published_file() -> Path:
    """The published results that come with voszoo: ``published.yaml`` in the package's ``resources`` folder (the
    same file in a source checkout, an editable install and an installed wheel)."""
    return Path(str(resources.files("voszoo") / "resources" / "published.yaml"))


def load_published(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The validated rows of a published-results YAML file (see the module docstring for the keys); ``path`` None
    reads the shipped file (:func:`shipped_published_file`).

    Raises VOSDataError naming the file, the row (index, method, variant) and the key when anything is wrong.
    """
    import yaml  # PyYAML comes with omegaconf; plain YAML here, no interpolation

    path = shipped_published_file() if path is None else Path(path)
    if not path.is_file():
        raise VOSDataError(f"published results file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise VOSDataError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise VOSDataError(f"{path}: expected a mapping with a list under the key 'results'")
    return validate_published(data["results"], source=str(path))


def validate_published(rows: list[Any], *, source: str = "published results") -> list[dict[str, Any]]:
    """Check every row of ``rows`` (dicts as in ``published.yaml``) and return them as new dicts with every
    optional key present (None when absent)."""
    checked = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise VOSDataError(f"{source}: row {index} is a {type(row).__name__}, expected a mapping")
        where = f"{source}: row {index} ({row.get('method', '?')} / {row.get('variant', '?')})"
        missing = [key for key in _REQUIRED if key not in row]
        if missing:
            raise VOSDataError(f"{where}: missing required key(s) {', '.join(missing)}")
        unknown = sorted(set(row) - _ALLOWED)
        if unknown:
            raise VOSDataError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ALLOWED))}")
        for key in _TEXT_KEYS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise VOSDataError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
        if row["dataset"] not in DATASETS:
            raise VOSDataError(f"{where}: unknown dataset {row['dataset']!r}; valid: {', '.join(DATASETS)}")
        if row["split"] not in SPLITS:
            raise VOSDataError(f"{where}: unknown split {row['split']!r}; valid: {', '.join(SPLITS)}")
        for key in _FLAG_KEYS:
            if row[key] not in (True, False, None):
                raise VOSDataError(f"{where}: {key!r} must be true, false or null, got {row[key]!r}")
        out = {key: row.get(key) for key in (*_REQUIRED, *_SCORE_KEYS, "fps", "gpu", "note")}
        for key in ("J&F", *_SCORE_KEYS):
            value = out[key]
            if value is None and key != "J&F":
                continue
            if not _is_number(value) or not 0.0 <= value <= 100.0:
                raise VOSDataError(f"{where}: {key!r} must be a number in [0, 100] (a percentage), got {value!r}")
        if out["fps"] is not None and (not _is_number(out["fps"]) or out["fps"] <= 0):
            raise VOSDataError(f"{where}: 'fps' must be a positive number or null, got {out['fps']!r}")
        for key in ("gpu", "note"):
            if out[key] is not None and not isinstance(out[key], str):
                raise VOSDataError(f"{where}: {key!r} must be a string or null, got {out[key]!r}")
        _check_means(out, where)
        checked.append(out)
    return checked


def _check_means(row: dict[str, Any], where: str) -> None:
    groups = [("J", "F"), ("J_seen", "J_unseen", "F_seen", "F_unseen")]
    for keys in groups:
        if all(row[key] is not None for key in keys):
            mean = sum(row[key] for key in keys) / len(keys)
            if abs(mean - row["J&F"]) > ROUNDING:
                raise VOSDataError(
                    f"{where}: 'J&F' = {row['J&F']} is not the mean of {', '.join(keys)} ({mean:.2f}); "
                    "check the numbers against the paper's table"
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
