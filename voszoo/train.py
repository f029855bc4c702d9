"""voszoo-train: train any model preset with the shared trainer, then score it (Hydra app, conf/train.yaml).

    voszoo-train model=stm_r18 data=toyvos trainer=quick
    voszoo-train -m model=stm_r18 optim.lr=1e-4,3e-5          # a sweep: one job per combination
    torchrun --nproc_per_node 2 -m voszoo.train trainer.device=cpu ...

Every job writes ``metrics.json`` (J&F, J, F, FPS, checkpoint path, steps) in its Hydra output dir.

Resume: ``resume=auto`` (the default) continues the run in the output dir if it has a checkpoint; otherwise, for a
single run (not under torchrun), it continues the latest *interrupted* run of the same config next to it (same
parent folder, identical ``.hydra/config.yaml`` apart from ``resume``, a checkpoint, no ``metrics.json``, nobody
training in it), in that run's folder. So re-running the exact command of an interrupted run continues it. The
exact resume command is logged at the start and again on interruption (Ctrl-C, SIGTERM).

Stages: ``init_from=<checkpoint>`` starts a fresh run from that checkpoint's weights (``init_from_ema=true``: its EMA
weights) with a new optimizer, schedule and EMA, e.g. a paper recipe's main stage from its static-image stage
(docs/training.md). It applies only when the run starts afresh; a resumed run continues from its own checkpoint.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from voszoo.cli_common import config_float, config_int, evaluate_model, hydra_entry, prepare_data
from voszoo.device import resolve_device

__all__ = [
    "build_loggers",
    "build_run",
    "check_init_from",
    "check_train_config",
    "init_from_of",
    "find_interrupted_run",
    "main",
    "resume_command",
    "train",
]

logger = logging.getLogger("voszoo.train")

_NOT_TRAINER_ARGS = ("eval_every",)
# trainer.<key> counts and their minimum: checked with the key's name before anything is built (the Trainer checks
# them too, but only after the model, data and schedule are built, and without the config key).
_TRAINER_COUNTS = (
    ("max_steps", 1),
    ("batch_size", 1),
    ("num_workers", 0),
    ("accumulate", 1),
    ("checkpoint_every", 0),
    ("keep_checkpoints", 1),
    ("log_every", 1),
)


def train(cfg: DictConfig, output_dir: str | Path, *, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Build everything ``cfg`` describes, train, evaluate; returns (and writes) the job's metrics.

    ``overrides``: the command line's Hydra overrides, to log the exact resume command (None: not logged).
    With ``resume=auto`` the run may continue in an earlier run's folder (:func:`find_interrupted_run`).
    """
    from voszoo.engine import EvalHook, Trainer, TrainingTerminated, destroy_distributed
    from voszoo.evaluation.pipeline import write_metrics
    from voszoo.instantiate import build
    from voszoo.pretrain import prepare_pretrained
    from voszoo.types import collate_clips

    output_dir = Path(output_dir)
    check_train_config(cfg)
    earlier = find_interrupted_run(cfg, output_dir) if cfg.resume == "auto" else None
    if earlier is not None:
        logger.warning(
            "resume=auto: continuing the interrupted run of this config in %s (this log: %s)", earlier, output_dir
        )
        output_dir = earlier
    check_init_from(cfg, output_dir)  # before the data and model are built: a wrong path fails at once
    loggers = build_loggers(cfg.logger)  # first: a missing optional package fails before data and pre-training
    prepare_data(cfg.data)
    prepare_pretrained(cfg.model)  # weights: toyvos is pre-trained once per machine, on first use
    run = build_run(cfg)
    model, dataset, optimizer, schedule = run["model"], run["dataset"], run["optimizer"], run["schedule"]
    trainer_args = run["args"]

    hooks: list[Any] = list(loggers)
    eval_collection = build(cfg.data.eval, key="data.eval") if cfg.evaluate else None

    def evaluate(model_to_score: Any, tag: str) -> dict[str, Any]:
        return evaluate_model(
            model_to_score,
            cfg.model,
            eval_collection,
            output_dir / f"eval_{tag}",
            device=trainer_args["device"],
            max_videos=config_int(cfg, "eval.max_videos", minimum=1, optional=True, hint=_ALL_VIDEOS),
            short_side=cfg.eval.short_side,
            protocol=cfg.eval.get("protocol", "voszoo"),
            flip=cfg.eval.flip,
            overwrite=True,  # this run's own folders; each periodic evaluation replaces the last one
        )

    if cfg.trainer.get("eval_every") and eval_collection is not None:
        every = int(cfg.trainer.eval_every)
        hooks.append(EvalHook(lambda m: _scores(evaluate(m, "periodic")), every=every, at_end=False))

    trainer = Trainer(
        model=model,
        data=dataset,
        optimizer=optimizer,
        schedule=schedule,
        output_dir=output_dir,
        collate_fn=collate_clips,
        hooks=hooks,
        seed=int(cfg.seed),
        model_name=str(cfg.model.name),
        config=OmegaConf.to_container(cfg, resolve=True),
        **trainer_args,
    )
    command = resume_command(output_dir, overrides=overrides) if overrides is not None else None
    finished = False
    with trainer.hold_output_dir():  # no second writer until metrics.json is written
        if command is not None and trainer.is_main:
            logger.info("to resume this run if it stops: %s", command)
        try:
            try:
                last = trainer.fit(resume=cfg.resume)
            except (KeyboardInterrupt, TrainingTerminated):
                if command is not None and trainer.is_main:
                    logger.warning("interrupted at step %d; resume with: %s", trainer.step, command)
                raise
            metrics: dict[str, Any] = {
                "model": str(cfg.model.name),
                "data": str(cfg.data.name),
                "steps": trainer.step,
                "checkpoint": str(output_dir / "last.pt"),
                "train_loss": last.get("loss"),
            }
            if trainer.is_main and eval_collection is not None:
                scores = evaluate(trainer.model, "final")
                metrics.update(_scores(scores))
                metrics["fps"] = scores["fps"]
                if trainer.ema_model is not None:
                    metrics.update({f"ema/{k}": v for k, v in _scores(evaluate(trainer.ema_model, "ema")).items()})
                trainer.log(_final_record(metrics))  # metrics.jsonl and every logger, at the last step
            if trainer.is_main:
                for hook in loggers:
                    hook.log_checkpoint(trainer, output_dir / "last.pt")
                write_metrics(output_dir, metrics)
                logger.info("metrics: %s", {k: v for k, v in metrics.items() if not isinstance(v, dict)})
            finished = True
        finally:
            for hook in loggers:  # closed here, not after fit(): the final scores above must reach them
                hook.close(success=finished)
    destroy_distributed()
    return metrics


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The metric loggers of the ``logger`` config node: one :class:`~voszoo.engine.loggers.LoggerHook` per
    non-empty entry, built from its ``_target_`` (``logger=[console,wandb]`` composes ``{console: {}, wandb:
    {_target_: ...}}``; the console is the trainer's own and builds nothing). They stay open after training:
    :func:`train` closes them once the final scores are logged."""
    from voszoo.engine.loggers import LoggerHook
    from voszoo.instantiate import ConfigError, build

    loggers = []
    for name, node in cfg.items():
        if not node:
            continue
        hook = build(node, key=f"logger.{name}")
        if not isinstance(hook, LoggerHook):
            raise ConfigError(f"logger.{name} built a {type(hook).__name__}, which is not a voszoo LoggerHook")
        hook.close_after_train = False
        loggers.append(hook)
    return loggers


def _final_record(metrics: dict[str, Any]) -> dict[str, float]:
    """The final scores as the periodic evaluations log them (``eval/J&F``, ``eval_ema/J&F``, ...)."""
    record = {f"eval/{k}": float(metrics[k]) for k in ("J&F", "J", "F", "fps") if k in metrics}
    record.update({f"eval_ema/{k}": float(metrics[f"ema/{k}"]) for k in ("J&F", "J", "F") if f"ema/{k}" in metrics})
    return record


def resume_command(run_dir: str | Path, *, overrides: Sequence[str]) -> str:
    """The shell command that resumes the run in ``run_dir``: ``voszoo-train`` with the same ``overrides`` (Hydra
    command-line overrides) and ``hydra.run.dir=run_dir``. Under torchrun: the same torchrun options, then this."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("hydra.run.dir", "resume")]
    arguments = [*kept, f"hydra.run.dir={Path(run_dir).resolve()}"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun <same options> -m voszoo.train " + shlex.join(arguments)
    return shlex.join(["voszoo-train", *arguments])


def _comparable(config: Any) -> Any:
    """A config as a plain container, unresolved, without ``resume``: two runs of one command compare equal."""
    plain = OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config) else config
    return {k: v for k, v in plain.items() if k not in ("resume", "hydra")}


def find_interrupted_run(cfg: DictConfig, output_dir: str | Path) -> Path | None:
    """The latest interrupted run of the same config as ``cfg`` beside ``output_dir``, or None.

    None if ``output_dir`` has a checkpoint (it resumes itself) or under torchrun (ranks must agree; pass
    ``hydra.run.dir``). A candidate is a sibling folder with a checkpoint, no ``metrics.json`` (written when a run
    ends), a ``.hydra/config.yaml`` equal to ``cfg`` apart from ``resume``, and no training holding its lock;
    the one with the newest checkpoint wins.
    """
    from voszoo.engine.checkpoint import checkpoint_files
    from voszoo.engine.trainer import RUN_LOCK_NAME
    from voszoo.fileio import FileLock, LockHeldError

    output_dir = Path(output_dir)
    if checkpoint_files(output_dir) or int(os.environ.get("WORLD_SIZE", "1")) > 1 or not output_dir.parent.is_dir():
        return None
    wanted = _comparable(cfg)

    def newest(run: Path) -> float:
        return max(p.stat().st_mtime for p in checkpoint_files(run))

    candidates = [
        d
        for d in output_dir.parent.iterdir()
        if d.is_dir() and d != output_dir and checkpoint_files(d) and not (d / "metrics.json").exists()
    ]
    for run in sorted(candidates, key=newest, reverse=True):
        try:
            if _comparable(OmegaConf.load(run / ".hydra" / "config.yaml")) != wanted:
                continue
        except (OSError, ValueError, AttributeError):  # no or unreadable .hydra/config.yaml: not a voszoo-train run
            continue
        try:
            with FileLock(run / RUN_LOCK_NAME, what=f"run directory {run}"):
                pass
        except LockHeldError:
            continue  # still training
        return run
    return None


def build_run(cfg: DictConfig) -> dict[str, Any]:
    """The model, training dataset, optimizer, schedule and :class:`Trainer` keyword arguments (``"args"``, device
    resolved) of a composed ``voszoo-train`` config; seeds first. Shared by :func:`train` and the throughput
    benchmark."""
    from voszoo.engine import seed_everything
    from voszoo.engine.optim import optimizer_from_config
    from voszoo.instantiate import build
    from voszoo.models.registry import build_model

    check_train_config(cfg)
    seed_everything(int(cfg.seed))
    model = build_model(cfg.model)
    dataset = build(cfg.data.train, key="data.train")
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    optimizer = optimizer_from_config(model, optim)
    max_steps = int(cfg.trainer.max_steps)
    schedule_args: dict[str, Any] = {"base_lr": optim["lr"], "total_steps": max_steps}
    warmup = cfg.schedule.get("warmup_steps")
    if warmup is not None and int(warmup) > max_steps:  # e.g. a 3-step smoke run of a preset with a 100-step warm-up
        logger.warning(
            "schedule.warmup_steps=%d exceeds trainer.max_steps=%d: warming up over %d steps",
            warmup,
            max_steps,
            max_steps,
        )
        schedule_args["warmup_steps"] = max_steps
    if "total_steps" not in _parameters(cfg.schedule):  # a constant schedule has no length (conf/schedule/constant)
        schedule_args.pop("total_steps")
    schedule = build(cfg.schedule, key="schedule", **schedule_args)
    trainer_args = {
        k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in _NOT_TRAINER_ARGS
    }
    trainer_args["device"] = resolve_device(trainer_args.get("device", "auto"), key="trainer.device")
    init_from = init_from_of(cfg)
    if init_from is not None:
        trainer_args["init_from"] = init_from
        trainer_args["init_from_ema"] = bool(cfg.get("init_from_ema", False))
    return {"model": model, "dataset": dataset, "optimizer": optimizer, "schedule": schedule, "args": trainer_args}


def _parameters(node: DictConfig) -> set[str]:
    """The keyword parameters of the constructor a config node's ``_target_`` names (empty if it cannot be read)."""
    import inspect

    from hydra.utils import get_class

    try:
        return set(inspect.signature(get_class(str(node._target_))).parameters)
    except (ImportError, ValueError, TypeError, AttributeError):
        return set()


_ALL_VIDEOS = "eval.max_videos=null scores every video"


def check_train_config(cfg: DictConfig) -> None:
    """Check the values of a ``voszoo-train`` config that are plain numbers, naming the key at fault
    (:class:`~voszoo.instantiate.ConfigError`), before anything is built from them."""
    config_int(cfg, "seed", minimum=0)
    for name, minimum in _TRAINER_COUNTS:
        config_int(cfg, f"trainer.{name}", minimum=minimum)
    config_int(cfg, "eval.max_videos", minimum=1, optional=True, hint=_ALL_VIDEOS)
    config_float(cfg, "optim.lr", minimum=0.0, inclusive=False, hint="e.g. optim.lr=1e-4")
    config_float(cfg, "optim.weight_decay", minimum=0.0)
    if cfg.schedule.get("warmup_steps") is not None:
        config_int(cfg, "schedule.warmup_steps", minimum=0)
    init_from_of(cfg)


_INIT_HINT = (
    "pass init_from=<the first stage's output dir>/last.pt (docs/training.md, 'Stages'); init_required=false "
    "starts from the model preset's own initialisation instead"
)


def init_from_of(cfg: DictConfig) -> str | None:
    """The checkpoint a fresh run starts from: ``init_from`` (or the older ``trainer.init_from``), or None.

    A :class:`~voszoo.instantiate.ConfigError` naming the key if ``init_required`` (a recipe's second stage) is set
    and no checkpoint is given, or if both keys are set. ``init_from_ema`` applies only with a checkpoint.
    """
    from voszoo.instantiate import ConfigError

    top = cfg.get("init_from")
    nested = cfg.trainer.get("init_from") if "trainer" in cfg else None
    if top is not None and nested is not None:
        raise ConfigError(
            f"init_from={top} and trainer.init_from={nested} are both set; keep one (init_from)", hint=_INIT_HINT
        )
    found = top if top is not None else nested
    if cfg.get("init_required") and found is None:
        raise ConfigError(
            "init_from: this recipe is the second stage of a two-stage schedule (init_required=true) and starts from "
            "the first stage's weights, but init_from is not set",
            hint=_INIT_HINT,
        )
    return None if found is None else str(found)


def check_init_from(cfg: DictConfig, output_dir: str | Path) -> None:
    """If the run will start afresh in ``output_dir`` (no checkpoint of its own to resume, or ``resume=false``) and
    ``init_from`` is set, the file must exist: a :class:`~voszoo.instantiate.ConfigError` naming it otherwise."""
    from voszoo.engine.checkpoint import checkpoint_files
    from voszoo.instantiate import ConfigError

    init_from = init_from_of(cfg)
    if init_from is None:
        return
    resumes = cfg.resume not in (False, None, "false") and (cfg.resume != "auto" or checkpoint_files(output_dir))
    if not resumes and not Path(init_from).is_file():
        raise ConfigError(
            f"init_from={init_from}: checkpoint file not found",
            hint="run the first stage first (e.g. experiment=stm_paper_static) and point init_from at its last.pt",
        )


def _scores(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in ("J&F", "J", "F") if k in result}


def _task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    metrics = train(cfg, hydra_cfg.runtime.output_dir, overrides=list(hydra_cfg.overrides.task))
    return metrics.get("J&F")


def main() -> None:
    hydra_entry(_task, "train")


if __name__ == "__main__":
    main()
