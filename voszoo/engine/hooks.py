"""Trainer hooks (detectron2-style): code that runs around the training loop without the loop knowing about it.

A hook overrides any of ``before_train(trainer)``, ``after_step(trainer, metrics)`` (every optimizer step, with that
step's metrics, on every process), ``on_log(trainer, step, metrics)`` (whenever the trainer logs metrics, main
process only) and ``after_train(trainer)`` (always, also after an error or interrupt; ``trainer.completed`` tells
whether the run reached ``max_steps``). Hooks run in the order given to the trainer, after the trainer's own
:class:`ConsoleHook` and :class:`CheckpointHook`. The metric loggers (wandb, TensorBoard, CSV) are hooks too, in
:mod:`voszoo.engine.loggers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from voszoo.engine.distributed import barrier
from voszoo.engine.logging import format_metrics
from voszoo.engine.seed import get_rng_state, set_rng_state

if TYPE_CHECKING:
    from voszoo.engine.trainer import Trainer

__all__ = ["Hook", "ConsoleHook", "CheckpointHook", "EvalHook"]

logger = logging.getLogger(__name__)


class Hook:
    """Base class; every method is a no-op."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        pass

    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


class ConsoleHook(Hook):
    """A tqdm progress bar (loss, lr, it/s; main process, hidden when stderr is not a terminal) and a log line
    (``logging`` at INFO) every ``every`` steps with the metrics, the speed and the estimated time left."""

    def __init__(self, *, every: int = 20, progress_bar: bool = True) -> None:
        if every < 1:
            raise ValueError(f"ConsoleHook: every must be >= 1, got {every}")
        self.every = every
        self.progress_bar = progress_bar
        self._bar: Any = None
        self._window_start = (0, 0.0)

    def before_train(self, trainer: Trainer) -> None:
        self._window_start = (trainer.step, time.perf_counter())
        if trainer.is_main and self.progress_bar:
            self._bar = tqdm(
                total=trainer.max_steps, initial=trainer.step, desc="train", unit="it", dynamic_ncols=True, disable=None
            )
        if trainer.is_main:
            logger.info("training %s from step %d to %d", type(trainer.model).__name__, trainer.step, trainer.max_steps)

    def after_step(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if not trainer.is_main:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)
        if trainer.step % self.every == 0 or trainer.step == trainer.max_steps:
            start_step, start_time = self._window_start
            now = time.perf_counter()
            speed = (trainer.step - start_step) / max(now - start_time, 1e-9)
            left = (trainer.max_steps - trainer.step) / max(speed, 1e-9)
            self._window_start = (trainer.step, now)
            line = format_metrics({k: v for k, v in metrics.items() if k != "time"})
            logger.info(
                "step %d/%d  %s  %.2f it/s  eta %s",
                trainer.step,
                trainer.max_steps,
                line,
                speed,
                time.strftime("%H:%M:%S", time.gmtime(left)),
            )

    def after_train(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CheckpointHook(Hook):
    """Save a checkpoint every ``every`` steps (a collective call: runs on every process)."""

    def __init__(self, *, every: int) -> None:
        if every < 1:
            raise ValueError(f"CheckpointHook: every must be >= 1, got {every}")
        self.every = every

    def after_step(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if trainer.step % self.every == 0:
            trainer.save_checkpoint()


class EvalHook(Hook):
    """Call ``evaluate_fn(model) -> {name: value}`` every ``every`` steps and log the results. After the last step
    it runs if and only if ``at_end`` (False when the caller evaluates the final model itself).

    The model is the unwrapped training model, in eval mode under ``torch.no_grad()``; with ``include_ema`` and an
    EMA in the trainer, the EMA model is evaluated too. Results are logged as ``eval/<name>`` and
    ``eval_ema/<name>`` and kept in :attr:`history` as ``(step, results)``. Evaluation runs on the main process while
    the others wait, and restores the RNG states afterwards, so it never changes the training run.
    """

    def __init__(
        self,
        evaluate_fn: Callable[[nn.Module], Mapping[str, float]],
        *,
        every: int,
        include_ema: bool = True,
        at_end: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"EvalHook: every must be >= 1, got {every}")
        self.evaluate_fn = evaluate_fn
        self.every = every
        self.include_ema = include_ema
        self.at_end = at_end
        self.history: list[tuple[int, dict[str, float]]] = []

    def _evaluate(self, model: nn.Module, prefix: str) -> dict[str, float]:
        was_training = model.training
        state = get_rng_state()
        model.eval()
        try:
            with torch.no_grad():
                results = self.evaluate_fn(model)
        finally:
            model.train(was_training)
            set_rng_state(state)
        if not isinstance(results, Mapping):
            raise TypeError(f"EvalHook: evaluate_fn must return a dict of metrics, got {type(results).__name__}")
        return {f"{prefix}/{name}": float(value) for name, value in results.items()}

    def run(self, trainer: Trainer) -> None:
        """Evaluate now (main process) and log; the other processes wait."""
        if trainer.is_main:
            results = self._evaluate(trainer.model, "eval")
            if self.include_ema and trainer.ema_model is not None:
                results.update(self._evaluate(trainer.ema_model, "eval_ema"))
            self.history.append((trainer.step, results))
            trainer.log(results)
            logger.info("step %d  %s", trainer.step, "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        barrier()

    def after_step(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if trainer.step == trainer.max_steps:
            if self.at_end:
                self.run(trainer)
        elif trainer.step % self.every == 0:
            self.run(trainer)
