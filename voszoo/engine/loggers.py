"""Metric loggers as trainer hooks: Weights & Biases, TensorBoard and a CSV file (``conf/logger/*.yaml``).

Each logger is a :class:`LoggerHook`: it receives whatever the trainer logs (training metrics every ``log_every``
steps, the periodic ``eval/J&F``, ``eval/J``, ``eval/F`` of :class:`~voszoo.engine.hooks.EvalHook`) through
``on_log``, on the main process only. Several run side by side (``logger=[console,tensorboard,csv]``); the console
and ``metrics.jsonl`` are the trainer's own and always on.

Lifetime: a logger opens before the first step, or at its first record (a finished run that is re-run trains nothing
but still logs its final scores). By default it closes after training. An owner that records results after
``fit()`` (voszoo-train: the final J&F and the checkpoint) builds it with ``close_after_train=False``, logs through
``trainer.log`` and :meth:`LoggerHook.log_checkpoint`, then calls :meth:`LoggerHook.close` itself.

Resume: every logger continues where the checkpoint left off, as ``metrics.jsonl`` does (records after the
checkpoint's step are dropped from TensorBoard and the CSV; wandb continues the same run).
"""

from __future__ import annotations

import csv
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voszoo.engine.hooks import Hook

if TYPE_CHECKING:
    from voszoo.engine.trainer import Trainer

__all__ = ["CsvHook", "LoggerHook", "TensorBoardHook", "WandbHook"]

WANDB_MODES = ("offline", "online", "disabled")


def _import_optional(module: str, *, hook: str, extra: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{hook} needs the optional dependency {extra}: pip install 'voszoo[{extra}]' (or run without that logger)"
        ) from error


class LoggerHook(Hook):
    """Base of the metric loggers; see the module docstring for when it opens and closes.

    Subclasses implement ``_open(trainer)``, ``_write(step, metrics)`` and ``_close(success)``, and may implement
    ``_write_checkpoint(trainer, path)``.
    """

    def __init__(self, *, close_after_train: bool = True) -> None:
        self.close_after_train = close_after_train
        self.is_open = False

    # -- hook events --------------------------------------------------------------------------------------------
    def before_train(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self._ensure_open(trainer)

    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        self._ensure_open(trainer)  # the trainer calls on_log on the main process only
        self._write(step, metrics)

    def after_train(self, trainer: Trainer) -> None:
        if self.close_after_train:
            self.close(success=trainer.completed)

    # -- for an owner that logs after fit() ---------------------------------------------------------------------
    def log_checkpoint(self, trainer: Trainer, path: str | os.PathLike) -> None:
        """Record the checkpoint ``path`` with the run (main process only; a no-op for loggers without a notion
        of files)."""
        if trainer.is_main:
            self._ensure_open(trainer)
            self._write_checkpoint(trainer, Path(path))

    def close(self, *, success: bool) -> None:
        """Flush and end the run (``success``: the run finished without an error). Safe to call twice."""
        if self.is_open:
            self.is_open = False
            self._close(success)

    # -- what a logger implements ---------------------------------------------------------------------------------
    def _ensure_open(self, trainer: Trainer) -> None:
        if not self.is_open:
            self._open(trainer)
            self.is_open = True

    def _open(self, trainer: Trainer) -> None:
        raise NotImplementedError

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _write_checkpoint(self, trainer: Trainer, path: Path) -> None:
        pass

    def _close(self, success: bool) -> None:
        pass


class WandbHook(LoggerHook):
    """Log to Weights & Biases: the run's config, every logged metric (training, periodic and final J&F/J/F) and the
    checkpoint as a reference artifact (its path and checksum; the file is not uploaded).

    ``mode="offline"`` (default) writes under ``<output_dir>/wandb`` for a later ``wandb sync``; ``"online"``
    uploads; ``"disabled"`` does nothing. wandb is optional: ``pip install 'voszoo[wandb]'``. A resumed run continues
    the same wandb run: its id is kept in ``<output_dir>/wandb_run_id``. Only wandb's public API is used.
    """

    def __init__(
        self,
        *,
        project: str = "voszoo",
        mode: str = "offline",
        name: str | None = None,
        entity: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        config: Mapping[str, Any] | None = None,
        close_after_train: bool = True,
    ) -> None:
        super().__init__(close_after_train=close_after_train)
        if mode not in WANDB_MODES:
            raise ValueError(f"WandbHook: mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
        self._wandb = _import_optional("wandb", hook="WandbHook", extra="wandb")
        self.project, self.mode, self.name, self.entity, self.tags = project, mode, name, entity, list(tags)
        self.config = dict(config) if config is not None else None
        self._run: Any = None

    def _open(self, trainer: Trainer) -> None:
        id_file = Path(trainer.output_dir) / "wandb_run_id"
        # a fresh start (step 0) is a new wandb run even if the folder held an earlier one
        run_id = id_file.read_text().strip() if trainer.step > 0 and id_file.is_file() else None
        self._run = self._wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.name,
            tags=self.tags,
            mode=self.mode,
            dir=str(trainer.output_dir),
            config=self.config if self.config is not None else trainer.config,
            id=run_id,
            resume="allow" if run_id is not None else None,
        )
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self._run.id)

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def _write_checkpoint(self, trainer: Trainer, path: Path) -> None:
        artifact = self._wandb.Artifact(
            name=f"checkpoint-{self._run.id}",
            type="model",
            metadata={"model": trainer.model_name, "step": trainer.step},
        )
        # a reference: wandb records the path and a checksum, so the (large) file is neither copied nor uploaded
        artifact.add_reference(path.resolve().as_uri(), name=path.name)
        self._run.log_artifact(artifact, aliases=["latest", f"step-{trainer.step}"])

    def _close(self, success: bool) -> None:
        self._run.finish(exit_code=0 if success else 1)
        self._run = None


class TensorBoardHook(LoggerHook):
    """Log every metric as a TensorBoard scalar and the run's config as text, under ``log_dir`` (relative to the
    run's output dir; default ``<output_dir>/tensorboard``). Needs the ``tensorboard`` package:
    ``pip install 'voszoo[tensorboard]'``; view with ``tensorboard --logdir outputs``."""

    def __init__(self, *, log_dir: str | os.PathLike = "tensorboard", close_after_train: bool = True) -> None:
        super().__init__(close_after_train=close_after_train)
        _import_optional("tensorboard", hook="TensorBoardHook", extra="tensorboard")
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def _open(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the events an interrupted run wrote after its checkpoint
        purge = trainer.step + 1 if trainer.step > 0 else None
        self._writer = SummaryWriter(log_dir=str(Path(trainer.output_dir) / self.log_dir), purge_step=purge)
        if trainer.config is not None and trainer.step == 0:
            text = json.dumps(trainer.config, indent=2, default=str)
            self._writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=0)  # markdown code

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def _close(self, success: bool) -> None:
        self._writer.close()
        self._writer = None


class CsvHook(LoggerHook):
    """Write the logged metrics to ``<output_dir>/<filename>``: one row per logged step (the records of a step are
    merged), a ``step`` column and one column per metric (empty where a step lacks it). A new metric (e.g. the first
    ``eval/J&F``) adds a column: the file is rewritten with the wider header, atomically. A resumed run drops the
    rows after its checkpoint's step."""

    def __init__(self, *, filename: str = "metrics.csv", close_after_train: bool = True) -> None:
        super().__init__(close_after_train=close_after_train)
        if not filename or Path(filename).name != filename:
            raise ValueError(f"CsvHook: filename must be a file name inside the output dir, got {filename!r}")
        self.filename = filename
        self._path: Path | None = None
        self._columns: list[str] = ["step"]
        self._rows: list[dict[str, Any]] = []

    def _open(self, trainer: Trainer) -> None:
        self._path = Path(trainer.output_dir) / self.filename
        self._columns, self._rows = ["step"], []
        if self._path.is_file():
            with open(self._path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self._columns = list(reader.fieldnames or ["step"])
                self._rows = [row for row in reader if int(row["step"]) <= trainer.step]
        self._rewrite()

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        new = [key for key in metrics if key not in self._columns]
        self._columns += new
        if self._rows and int(self._rows[-1]["step"]) == step:  # e.g. an evaluation after the step's training record
            self._rows[-1].update(metrics)
            self._rewrite()
            return
        row = {"step": step, **metrics}
        self._rows.append(row)
        if new:
            self._rewrite()
            return
        with open(self._path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self._columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self._path)
