"""The one training loop of voszoo: it only knows ``out = model(batch)`` and ``out["loss"]``.

One optimizer step: ``accumulate`` micro-batches (forward under autocast, ``(loss / accumulate).backward()``; under
DDP gradients are synchronised on the last one only), then the schedule sets the learning rates, gradients are
unscaled (fp16) and clipped, the optimizer steps, the schedule advances and the EMA is updated. Hooks run after
every step; metrics go to ``<output_dir>/metrics.jsonl`` every ``log_every`` steps.

Data: a map-style ``torch.utils.data.Dataset`` of samples (voszoo's ``ClipDataset``; collated by ``collate_fn``,
default :func:`voszoo.types.collate_clips`) is read through a per-epoch seeded permutation sharded over the
processes (:func:`~voszoo.engine.distributed.shard_indices`); ``set_epoch(epoch)`` is called on it before each
epoch, and ``set_step(step at the epoch's start)`` too if it has a gap ``curriculum``. Anything else is an iterable
of ready batches, iterated once per epoch (not sharded; resume skips the consumed batches by iterating).
Before every step, each submodule of the model with a ``set_training_progress(step, max_steps)`` method gets the
step (e.g. :class:`voszoo.losses.SegmentationCriterion`'s hard-pixel warm-up); it is a function of the step alone,
so resume stays exact.
``batch_size`` is per process and micro-batch: the effective batch is ``batch_size * accumulate * world_size``.

Exact resume: a checkpoint holds the model, EMA, optimizer, scaler, schedule, step, data position (epoch and
micro-batches consumed in it) and every process's RNG states, so ``fit`` for 6 steps and ``fit`` for 3, a new
process, and ``fit(resume=...)`` for 3 more give identical weights (for an index-deterministic dataset). A
KeyboardInterrupt during a step's forward/backward rolls the data position, RNG states and buffers back to the
step's start before the checkpoint is written, so the resumed run redoes that step exactly.

Several writers, preemption, crashes: ``fit`` holds a lock on ``output_dir`` (:meth:`Trainer.hold_output_dir`), so
a second training in the same directory fails at once, naming the holder's pid, instead of resuming from a
checkpoint being written and interleaving its records. SIGTERM (what schedulers send on preemption) is turned into
a flag: the step in progress finishes on every process, the checkpoint is saved and :class:`TrainingTerminated`
(exit code 143) is raised; under torchrun the flag travels with the loss all-reduce, so all ranks stop after the
same step. A resume loads the newest complete checkpoint, also one that ``last.pt`` does not name yet, and says
which; temporary files left by a killed writer are removed when the next run starts.

Stages (static-image pre-training, then main training) are two runs of the trainer: the second one gets
``init_from=<first run>/last.pt`` (weights only; fresh optimizer, schedule and EMA) and its own ``output_dir``; a
finished stage resumed with ``resume="auto"`` returns at once, so a restarted two-stage job continues where it was.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset

from voszoo.device import resolve_device
from voszoo.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    check_model_identity,
    checkpoint_files,
    find_last_checkpoint,
    latest_checkpoint,
    load_model_state,
    load_model_weights,
    model_class_path,
    plain_config,
    read_checkpoint,
    remove_stale_temporaries,
    write_checkpoint,
)
from voszoo.engine.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    average_gradients,
    barrier,
    init_distributed,
    shard_indices,
)
from voszoo.engine.ema import ModelEMA
from voszoo.engine.hooks import CheckpointHook, ConsoleHook, Hook
from voszoo.engine.logging import MetricsWriter
from voszoo.engine.optim import Schedule, freeze_batchnorm, freeze_parameters
from voszoo.engine.seed import get_rng_state, seed_everything, set_rng_state
from voszoo.fileio import FileLock, LockHeldError

__all__ = ["AMP_MODES", "RUN_LOCK_NAME", "Trainer", "TrainingTerminated"]

logger = logging.getLogger(__name__)

AMP_MODES = ("none", "bf16", "fp16")
RUN_LOCK_NAME = ".voszoo-run.lock"
"""The lock file a training holds in its output directory (removed when it ends)."""


class TrainingTerminated(SystemExit):
    """:meth:`Trainer.fit` after SIGTERM: the checkpoint of ``step`` is saved; the exit code is 128 + ``signum``.

    A ``SystemExit``, so a script exits with that code unless it catches it, as it would have died by the signal.
    """

    def __init__(self, *, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class _TerminationFlag:
    """While entered, SIGTERM only sets ``received`` (read by the loop after each step); the previous handler is
    restored on exit. Signal handlers can only be set from the main thread; elsewhere SIGTERM keeps its handler."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum  # no logging here: a handler may interrupt the logging module holding its lock

    def __enter__(self) -> _TerminationFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM (sent to the whole process group by schedulers) to the main process, which
    checkpoints and then shuts them down; torch's own worker handler would die and fail the main process."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _EpochTagged(Dataset):
    """``data`` indexed by ``(epoch, epoch start step, index)``: each DataLoader worker's copy is put in the sample's
    epoch (``set_epoch``) and gap-curriculum step (``set_step``) before it is read, as the trainer puts the main
    copy before a new iterator; so persistent workers give the samples fresh workers would."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self._state: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int, int]) -> Any:
        epoch, step, index = item
        if self._state != (epoch, step):
            if callable(getattr(self.data, "set_epoch", None)):
                self.data.set_epoch(epoch)
            if getattr(self.data, "curriculum", None) is not None and callable(getattr(self.data, "set_step", None)):
                self.data.set_step(step)
            self._state = (epoch, step)
        return self.data[index]


class _EpochItems(torch.utils.data.Sampler):
    """The items of the current epoch (set by the trainer before each new iterator), for :class:`_EpochTagged`."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(list(self.items))

    def __len__(self) -> int:
        return len(self.items)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device) for value in batch)
    if hasattr(batch, "to"):  # voszoo.types.Clip and friends
        return batch.to(device)
    return batch


def _scalar_losses(out: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """``out["loss"]`` and every other 0-dim tensor of the model output."""
    name = type(model).__name__
    if not isinstance(out, Mapping) or "loss" not in out:
        found = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"{name}.forward must return a dict with the total loss under 'loss', got {found}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ValueError(f"{name}.forward: out['loss'] must be a 0-dim tensor, got {getattr(loss, 'shape', loss)!r}")
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}


class Trainer:
    """Train ``model`` for ``max_steps`` optimizer steps; see the module docstring for the loop and the data.

    Arguments (keyword-only; built objects, no config):
        model: a module whose ``forward(batch)`` returns a dict with a 0-dim ``"loss"`` (voszoo's ``VOSModel``).
        data: a map-style ``Dataset`` of samples or an iterable of batches.
        optimizer: over the model's parameters (e.g. :func:`voszoo.engine.optim.build_optimizer`).
        schedule: sets the learning rates before every step (None: the optimizer's rates stay).
        output_dir: checkpoints, ``metrics.jsonl``.
        max_steps: optimizer steps of this run (a resumed run continues up to it).
        batch_size: samples per process and micro-batch (map-style data only).
        num_workers: DataLoader worker processes (map-style data only).
        persistent_workers: keep the worker processes across epochs instead of starting new ones per epoch (map-style
            data, ``num_workers > 0``); each sample carries its epoch, so the batches are those of fresh workers.
            Saves the workers' start-up once per epoch: 0.3 s of a 0.65 s first batch for ToyVOS's 16-step epochs on
            a CPU (docs/performance.md), nothing on the 25,000-step epochs of the procedural stream; it matters where
            epochs are short next to it (small datasets on a GPU). Off by default: workers then hold their memory
            between epochs.
        collate_fn: batches samples; default ``voszoo.types.collate_clips``.
        shuffle: draw a seeded permutation of the dataset each epoch.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; under DDP on CUDA each process uses ``cuda:LOCAL_RANK``.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (with a GradScaler), CUDA only; on CPU ``"bf16"`` falls back to
            float32 with a warning and ``"fp16"`` is an error.
        clip_grad_norm: clip the global gradient norm to this (None: no clipping).
        accumulate: micro-batches per optimizer step (each loss is divided by it).
        ema_decay: keep an EMA of the weights with this decay (None: no EMA); ``ema_warmup``: its ramp in updates.
        checkpoint_every: save every so many steps (0: only at the end, on KeyboardInterrupt and on SIGTERM).
        keep_checkpoints: numbered checkpoints kept besides ``last.pt``.
        log_every: steps between metric records and console lines.
        hooks: extra hooks, run after the built-in console and checkpoint hooks.
        seed: seeds python/numpy/torch (plus the process rank) and the data order.
        freeze_bn: BatchNorm layers stay in eval mode with frozen affine parameters.
        freeze_prefixes: parameter-name patterns to freeze (see :mod:`voszoo.engine.optim`), e.g.
            ``["query_encoder.backbone.conv1", ".layer1"]``.
        init_from: a voszoo checkpoint whose weights start a fresh run (e.g. the pre-training stage's ``last.pt``).
        init_from_ema: start from that checkpoint's EMA weights instead (AOT's main stage starts from the
            pre-training's EMA checkpoint, official ``configs/pre_ytb_dav.py``); an error if it has none.
        model_name: the preset name stored in checkpoints and checked on resume (default: the class name).
        config: the run's configuration as a plain dict, stored in checkpoints.
        channels_last: use the channels-last memory format (CUDA only).
        find_unused_parameters: passed to ``DistributedDataParallel``.
        progress: show the tqdm progress bar.
        truncate_frames: sequence learning (Zhou et al., shared/papers/004, Sec. 2.2): unroll each clip through
            the model's ``training_chunks`` and back-propagate every so many predicted frames, so that long clips
            (e.g. whole videos, ``data.train.num_frames=20``) train in memory bounded by the chunk, not the clip.
            None: one ``model(batch)`` and one backward per micro-batch. Needs a :class:`~voszoo.models.base.VOSModel`.
        memory_frames: with ``truncate_frames``, the cap on long-term memory frames while unrolling (None: all).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data: Dataset | Iterable[Any],
        optimizer: torch.optim.Optimizer,
        output_dir: str | Path,
        max_steps: int,
        schedule: Schedule | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        persistent_workers: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        shuffle: bool = True,
        device: str | torch.device = "auto",
        amp: str = "none",
        clip_grad_norm: float | None = None,
        accumulate: int = 1,
        ema_decay: float | None = None,
        ema_warmup: int = 0,
        checkpoint_every: int = 1000,
        keep_checkpoints: int = 1,
        log_every: int = 20,
        hooks: Sequence[Hook] = (),
        seed: int = 0,
        freeze_bn: bool = False,
        freeze_prefixes: Sequence[str] = (),
        init_from: str | Path | None = None,
        init_from_ema: bool = False,
        model_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        channels_last: bool = True,
        find_unused_parameters: bool = False,
        progress: bool = True,
        truncate_frames: int | None = None,
        memory_frames: int | None = None,
    ) -> None:
        for arg, value, low in (
            ("max_steps", max_steps, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("accumulate", accumulate, 1),
            ("checkpoint_every", checkpoint_every, 0),
            ("keep_checkpoints", keep_checkpoints, 1),
            ("log_every", log_every, 1),
            ("seed", seed, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"Trainer: {arg} must be an integer >= {low}, got {value!r}")
        if truncate_frames is not None and (not isinstance(truncate_frames, int) or truncate_frames < 1):
            raise ValueError(f"Trainer: truncate_frames must be None or an integer >= 1, got {truncate_frames!r}")
        if truncate_frames is not None and not callable(getattr(model, "training_chunks", None)):
            raise ValueError(
                f"Trainer: truncate_frames needs a model with training_chunks (a VOSModel), got {type(model).__name__}"
            )
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ValueError(f"Trainer: clip_grad_norm must be > 0 or None, got {clip_grad_norm}")
        if amp not in AMP_MODES:
            raise ValueError(f"Trainer: amp must be one of {list(AMP_MODES)}, got {amp!r}")
        if isinstance(data, IterableDataset) and num_workers > 0:
            raise ValueError("Trainer: num_workers applies to map-style datasets; an iterable is read as it is")

        device = resolve_device(device, key="Trainer: device")
        self.dist: DistContext = init_distributed(device_type=device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        elif device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if device.type == "cpu" and amp == "fp16":
            raise ValueError("Trainer: amp='fp16' needs a CUDA device; on CPU use amp='none' (or 'bf16', run in fp32)")
        if device.type == "cpu" and amp == "bf16":
            logger.warning("amp='bf16' requested on CPU: training in float32 (mixed precision is CUDA-only here)")
            amp = "none"
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"Trainer: amp='bf16' but {torch.cuda.get_device_name(device)} does not support bf16")
        self.amp = amp

        self.model = model
        self.model_name = model_name if model_name is not None else type(model).__name__
        if freeze_bn:
            freeze_batchnorm(model)
        if freeze_prefixes:
            freeze_parameters(model, freeze_prefixes)
        model.to(device)
        if channels_last and device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._check_optimizer(optimizer)
        self.optimizer = optimizer
        self.schedule = schedule
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.ema = ModelEMA(model, decay=ema_decay, warmup=ema_warmup) if ema_decay is not None else None

        self.data = data
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self._persistent: tuple[DataLoader, _EpochItems] | None = None  # built at the first epoch that needs it
        self.collate_fn = collate_fn
        self.output_dir = Path(output_dir)
        self.max_steps = max_steps
        self.clip_grad_norm = clip_grad_norm
        self.accumulate = accumulate
        self.checkpoint_every, self.keep_checkpoints, self.log_every = checkpoint_every, keep_checkpoints, log_every
        self.seed = seed
        self.init_from = Path(init_from) if init_from is not None else None
        if init_from_ema and init_from is None:
            raise ValueError("Trainer: init_from_ema=True needs init_from (the checkpoint whose EMA weights to load)")
        self.init_from_ema = bool(init_from_ema)
        self.config = plain_config(dict(config)) if config is not None else None
        self.find_unused_parameters = find_unused_parameters
        self.truncate_frames, self.memory_frames = truncate_frames, memory_frames
        builtin: list[Hook] = [ConsoleHook(every=log_every, progress_bar=progress)]
        if checkpoint_every > 0:
            builtin.append(CheckpointHook(every=checkpoint_every))
        self.hooks: list[Hook] = builtin + list(hooks)
        self.metrics = MetricsWriter(self.output_dir / "metrics.jsonl")

        self.step = 0
        self.epoch = 0
        self.completed = False
        self._batch_in_epoch = 0
        self._epoch_start_step = 0
        self._saved_step: int | None = None
        self._ddp: DistributedDataParallel | None = None
        self._run_lock: FileLock | None = None
        self._termination: _TerminationFlag | None = None
        self._stop_requested = False

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA weights as a model (eval mode), or None without ``ema_decay``."""
        return self.ema.module if self.ema is not None else None

    # -- public API ---------------------------------------------------------------------------------------------
    def fit(self, resume: bool | str | Path = "auto") -> dict[str, float]:
        """Train up to ``max_steps``; returns the metrics of the last step (empty if nothing was left to train).

        ``resume``: ``"auto"`` continues from the newest complete checkpoint in ``output_dir`` if there is one,
        ``True`` requires one, ``False`` starts afresh (overwriting the directory's checkpoints), a path resumes
        from that checkpoint. Checkpoints are written every ``checkpoint_every`` steps, at the end, on
        KeyboardInterrupt (which is then re-raised) and after the step during which SIGTERM arrived (then
        :class:`TrainingTerminated` is raised). The output directory is locked while ``fit`` runs
        (:meth:`hold_output_dir`); temporary files a killed run left in it are removed first.
        """
        with self.hold_output_dir(), _TerminationFlag() as termination:
            self._termination, self._stop_requested = termination, False
            try:
                return self._fit(resume)
            finally:
                self._termination = None

    @contextmanager
    def hold_output_dir(self) -> Iterator[None]:
        """Lock ``output_dir`` (a :class:`~voszoo.fileio.FileLock` on ``.voszoo-run.lock``, main process) until the
        block ends, so that no second training writes into it meanwhile; re-entrant for this trainer (voszoo-train
        holds it across ``fit`` and the evaluation that follows). Every process calls it; all raise
        :class:`~voszoo.fileio.LockHeldError`, naming the holder's pid, if another process holds the lock."""
        if self._run_lock is not None:
            yield
            return
        lock = FileLock(self.output_dir / RUN_LOCK_NAME, what=f"run directory {self.output_dir}")
        problem = None
        if self.is_main:
            try:
                lock.acquire()
            except LockHeldError as error:
                problem = f"{error}; wait for that run to end, stop it, or train in another directory"
        problem = all_gather_objects(problem)[0]  # every process learns whether the main process got the lock
        if problem is not None:
            raise LockHeldError(problem)
        self._run_lock = lock
        try:
            yield
        finally:
            self._run_lock = None
            lock.release()

    def _fit(self, resume: bool | str | Path) -> dict[str, float]:
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stale = remove_stale_temporaries(self.output_dir)
            if stale:
                logger.warning("removed %d temporary file(s) a killed run left in %s", len(stale), self.output_dir)
        found = self._resume_from(resume)
        if found is not None:
            self._load(*found)
        else:
            self._start_fresh()
        if self.step >= self.max_steps:
            logger.info("%s: already at step %d of %d; nothing to train", self.output_dir, self.step, self.max_steps)
            self.completed = True
            return {}
        train_model = self._wrap()
        self.model.train()
        batches = self._batch_stream()
        metrics: dict[str, float] = {}
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.max_steps:
                metrics = self._run_step(train_model, batches)
                if self.step % self.log_every == 0 or self.step == self.max_steps:
                    self.log(metrics)
                for hook in self.hooks:
                    hook.after_step(self, metrics)
                if self._should_stop():
                    self._terminate()
            self.completed = True
            if self._saved_step != self.step:
                self.save_checkpoint()
            if self._termination is not None and self._termination.received is not None:
                self._terminate()  # arrived during the last step: the work is saved, but the process must still end
        except KeyboardInterrupt:
            logger.warning("interrupted at step %d; saving a checkpoint", self.step)
            if self._saved_step != self.step:
                self.save_checkpoint(collective=False)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return metrics

    def _should_stop(self) -> bool:
        """SIGTERM arrived: on every process (agreed through the step's all-reduce), or, alone, right now."""
        if self.dist.enabled:
            return self._stop_requested
        return self._termination is not None and self._termination.received is not None

    def _terminate(self) -> None:
        """Save the current step (every process) and raise :class:`TrainingTerminated`."""
        signum = (self._termination.received if self._termination is not None else None) or signal.SIGTERM
        path = self.save_checkpoint() if self._saved_step != self.step else None
        logger.warning(
            "%s received: stopped after step %d of %d, checkpoint saved in %s",
            signal.Signals(signum).name,
            self.step,
            self.max_steps,
            self.output_dir,
        )
        raise TrainingTerminated(signum=int(signum), step=self.step, checkpoint=path)

    def log(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Record ``metrics`` for ``step`` (default: the current step) in ``metrics.jsonl`` and pass them to the
        hooks' ``on_log`` (main process only)."""
        if not self.is_main:
            return
        step = self.step if step is None else step
        self.metrics.write(step, metrics)
        for hook in self.hooks:
            hook.on_log(self, step, metrics)

    def state_dict(self, *, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint of the current state (see :mod:`voszoo.engine.checkpoint`); ``rng`` per process."""
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_class": model_class_path(self.model),
            "state_dict": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "position": {
                "epoch": self.epoch,
                "batch_in_epoch": self._batch_in_epoch,
                "epoch_start_step": self._epoch_start_step,
                "world_size": self.dist.world_size,
                "batch_size": self.batch_size,
            },
            "rng": rng if rng is not None else [get_rng_state()],
            "config": self.config,
        }

    def save_checkpoint(self, *, collective: bool = True) -> Path | None:
        """Write a checkpoint (main process) and return its path (None on other processes).

        ``collective`` (every process calls it): the RNG states of all processes are gathered and the processes
        wait for the file. ``collective=False`` (KeyboardInterrupt) saves the main process's RNG state only.
        """
        state = get_rng_state()
        rng = all_gather_objects(state) if collective else [state]
        path = None
        if self.is_main:
            path = write_checkpoint(self.state_dict(rng=rng), self.output_dir, keep=self.keep_checkpoints)
            logger.info("saved checkpoint %s (step %d)", path, self.step)
        if collective:
            barrier()
        self._saved_step = self.step
        return path

    # -- set-up -------------------------------------------------------------------------------------------------
    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        model_params = {id(p) for p in self.model.parameters()}
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if optimized - model_params:
            raise ValueError(
                f"Trainer: the optimizer holds {len(optimized - model_params)} parameters that are not the model's; "
                "build it from this model instance"
            )
        names = [name for name, p in self.model.named_parameters() if p.requires_grad and id(p) not in optimized]
        if names:
            raise ValueError(f"Trainer: trainable parameters missing from the optimizer: {names[:5]}")

    def _resume_from(self, resume: bool | str | Path) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume (path and content), or None to start afresh."""
        if resume is False:
            if checkpoint_files(self.output_dir) and self.is_main:
                logger.warning("resume=False: starting afresh in %s, overwriting its checkpoints", self.output_dir)
            return None
        if isinstance(resume, (str, Path)) and resume != "auto":
            return Path(resume), read_checkpoint(resume)
        if resume not in ("auto", True):
            raise ValueError(f"Trainer.fit: resume must be 'auto', True, False or a checkpoint path, got {resume!r}")
        found = latest_checkpoint(self.output_dir)
        if found is None and resume is True:
            raise CheckpointError(
                f"resume=True but there is no checkpoint in {self.output_dir} (no readable last.pt or checkpoint_*.pt)"
            )
        if found is not None and self.is_main:
            self._explain_choice(*found)
        return found

    def _explain_choice(self, path: Path, checkpoint: Mapping[str, Any]) -> None:
        """Say which checkpoint a resume loads, and why when it is not the one ``last.pt`` names."""
        last = find_last_checkpoint(self.output_dir)
        step = int(checkpoint["step"])
        if last is None or not last.samefile(path):
            logger.warning(
                "resuming from %s (step %d), the newest complete checkpoint; last.pt %s (a crash before it was "
                "updated)",
                path,
                step,
                "is missing" if last is None else "names an older one",
            )

    def _start_fresh(self) -> None:
        if self.init_from is not None:
            load_model_weights(self.model, self.init_from, model_name=self.model_name, use_ema=self.init_from_ema)
            weights = " (EMA weights)" if self.init_from_ema else ""
            logger.info("initialised %s from %s%s", self.model_name, self.init_from, weights)
            if self.ema is not None:
                self.ema = ModelEMA(self.model, decay=self.ema_decay, warmup=self.ema_warmup)
        if self.is_main:
            self.metrics.truncate_after(-1)
        seed_everything(self.seed, rank=self.dist.rank)

    def _load(self, path: Path, checkpoint: Mapping[str, Any]) -> None:
        check_model_identity(checkpoint, path=path, model=self.model, model_name=self.model_name)
        load_model_state(self.model, checkpoint["state_dict"], path=path)
        if self.ema is not None:
            if checkpoint["ema"] is None:
                logger.warning("checkpoint %s has no EMA; the EMA restarts from the loaded weights", path)
                self.ema = ModelEMA(self.model, decay=self.ema_decay, warmup=self.ema_warmup)
            else:
                load_model_state(self.ema.module, checkpoint["ema"]["module"], path=path, what="EMA state_dict")
                self.ema.updates = int(checkpoint["ema"]["updates"])
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(
                f"checkpoint {path}: the optimizer state does not fit this optimizer ({error}); "
                "was it built with other parameter groups or frozen parameters?"
            ) from error
        if self.scaler.is_enabled() and checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        if self.schedule is not None:
            if checkpoint["schedule"] is None:
                logger.warning(
                    "checkpoint %s has no schedule state; the schedule continues at step %d", path, self.step
                )
                self.schedule.last_step = self.step
            else:
                changed = self.schedule.load_state_dict(checkpoint["schedule"])
                if changed:
                    logger.warning("schedule changed since checkpoint %s: %s", path, "; ".join(changed))
        position = checkpoint["position"]
        self.epoch = int(position["epoch"])
        self._batch_in_epoch = int(position["batch_in_epoch"])
        self._epoch_start_step = int(position["epoch_start_step"])
        if (position["world_size"], position["batch_size"]) != (self.dist.world_size, self.batch_size):
            logger.warning(
                "checkpoint %s was saved with %d processes x batch %d, this run has %d x %d: the data order "
                "differs from the interrupted run",
                path,
                position["world_size"],
                position["batch_size"],
                self.dist.world_size,
                self.batch_size,
            )
        self._saved_step = self.step
        if self.is_main:
            self.metrics.truncate_after(self.step)
        states = checkpoint["rng"]
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:
            logger.warning(
                "checkpoint %s holds RNG states of %d processes, this run has %d: reseeding (not an exact resume)",
                path,
                len(states),
                self.dist.world_size,
            )
            seed_everything(self.seed + self.step, rank=self.dist.rank)
        logger.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    def _wrap(self) -> nn.Module:
        if not self.dist.enabled:
            return self.model
        if self._ddp is None:
            self._ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )
        return self._ddp

    # -- data ---------------------------------------------------------------------------------------------------
    def _map_style(self) -> bool:
        return isinstance(self.data, Dataset) and not isinstance(self.data, IterableDataset)

    def _prepare_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.data, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        if getattr(self.data, "curriculum", None) is not None and callable(getattr(self.data, "set_step", None)):
            self.data.set_step(self._epoch_start_step)

    def _epoch_batches(self, epoch: int, start: int) -> tuple[Iterator[Any], int | None]:
        """Batches of ``epoch`` from micro-batch ``start`` on, and the number of batches in the epoch if known."""
        if not self._map_style():
            return (batch for i, batch in enumerate(self.data) if i >= start), None
        indices = shard_indices(
            len(self.data),
            epoch=epoch,
            seed=self.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            shuffle=self.shuffle,
        )
        count = len(indices) // self.batch_size
        if count == 0:
            raise ValueError(
                f"Trainer: the dataset has {len(self.data)} samples, fewer than batch_size {self.batch_size} x "
                f"{self.dist.world_size} processes; no full batch per epoch"
            )
        if self.collate_fn is None:
            from voszoo.types import collate_clips

            self.collate_fn = collate_clips
        selected = indices[start * self.batch_size : count * self.batch_size]
        if self.persistent_workers:
            if self._persistent is None:
                sampler = _EpochItems()
                loader = DataLoader(
                    _EpochTagged(self.data),
                    batch_size=self.batch_size,
                    sampler=sampler,
                    num_workers=self.num_workers,
                    collate_fn=self.collate_fn,
                    drop_last=True,
                    pin_memory=self.device.type == "cuda",
                    worker_init_fn=_ignore_sigterm,
                    persistent_workers=True,
                    generator=torch.Generator().manual_seed(self.seed),
                )
                self._persistent = (loader, sampler)
            loader, sampler = self._persistent
            sampler.items = [(epoch, self._epoch_start_step, int(index)) for index in selected]
            return iter(loader), count
        loader = DataLoader(
            self.data,
            batch_size=self.batch_size,
            sampler=selected,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_sigterm if self.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed + epoch),  # the global RNG stays untouched
        )
        return iter(loader), count

    def _batch_stream(self) -> Iterator[tuple[int, int, int | None, Any]]:
        """Yields ``(epoch, index in epoch, batches in epoch or None, batch)`` forever, from the current position."""
        epoch, start = self.epoch, self._batch_in_epoch
        while True:
            if start == 0:
                self._epoch_start_step = self.step
            self._prepare_epoch(epoch)
            batches, count = self._epoch_batches(epoch, start)
            seen = start
            for index, batch in enumerate(batches, start=start):
                seen = index + 1
                yield epoch, index, count, batch
            if seen == 0:
                raise ValueError(f"Trainer: the data yielded no batch in epoch {epoch}")
            epoch, start = epoch + 1, 0

    # -- one step -----------------------------------------------------------------------------------------------
    def _autocast(self) -> AbstractContextManager:
        if self.amp == "none":
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def _backward_chunks(self, batch: Any) -> dict[str, torch.Tensor]:
        """Sequence learning: back-propagate each chunk of ``truncate_frames`` predicted frames as it is computed.

        Runs the bare model (not the DDP wrapper, whose reducer expects one backward per forward); under DDP the
        step averages the gradients over the processes once all micro-batches are done.
        """
        totals: dict[str, torch.Tensor] = {}
        chunks = self.model.training_chunks(batch, chunk_frames=self.truncate_frames, memory_frames=self.memory_frames)
        while True:  # the generator's code runs inside next(), so each chunk's forward is under autocast
            with self._autocast():
                out = next(chunks, None)
            if out is None:
                break
            losses = _scalar_losses(out, self.model)
            self.scaler.scale(losses["loss"] / self.accumulate).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.detach()
        return totals

    def _run_step(self, model: nn.Module, batches: Iterator[tuple[int, int, int | None, Any]]) -> dict[str, float]:
        started = time.perf_counter()
        position = (self.epoch, self._batch_in_epoch, self._epoch_start_step)
        rng_state = get_rng_state()
        for module in self.model.modules():  # schedules inside the model (e.g. a loss's hard-pixel warm-up)
            if callable(getattr(module, "set_training_progress", None)):
                module.set_training_progress(self.step, self.max_steps)
        buffers = [buffer.detach().clone() for buffer in self.model.buffers()]  # e.g. BatchNorm running statistics
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        try:
            for micro in range(self.accumulate):
                epoch, index, count, batch = next(batches)
                if count is not None and index + 1 == count:
                    self.epoch, self._batch_in_epoch = epoch + 1, 0
                else:
                    self.epoch, self._batch_in_epoch = epoch, index + 1
                batch = _to_device(batch, self.device)
                last = micro == self.accumulate - 1
                sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
                if self.truncate_frames is not None:
                    losses = self._backward_chunks(batch)
                else:
                    with sync:
                        with self._autocast():
                            out = model(batch)
                        losses = _scalar_losses(out, self.model)
                        self.scaler.scale(losses["loss"] / self.accumulate).backward()
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value.detach().float()
            if self.truncate_frames is not None and self.dist.enabled:
                average_gradients(self._trainable)
        except KeyboardInterrupt:  # the step did not happen: a resumed run redoes it with the same data and RNG
            self.epoch, self._batch_in_epoch, self._epoch_start_step = position
            set_rng_state(rng_state)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            raise
        names = ["loss"] + sorted(k for k in totals if k != "loss")
        values = torch.stack([totals[k] for k in names]) / self.accumulate
        # the SIGTERM flag rides on the loss all-reduce: every process stops after the same step, no extra collective
        signalled = self._termination is not None and self._termination.received is not None
        reduced = all_reduce_mean(torch.cat([values, values.new_tensor([float(signalled)])])).tolist()
        metrics = dict(zip(names, reduced[:-1], strict=True))
        self._stop_requested = reduced[-1] > 0
        if not math.isfinite(metrics["loss"]) and not self.scaler.is_enabled():
            raise FloatingPointError(f"the loss is {metrics['loss']} at step {self.step} (losses: {metrics})")
        lr = self.schedule.apply(self.optimizer) if self.schedule is not None else self.optimizer.param_groups[0]["lr"]
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self._trainable, self.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        metrics["lr"] = float(lr)
        metrics["epoch"] = self.epoch
        metrics["time"] = time.perf_counter() - started
        return metrics
