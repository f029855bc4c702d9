"""The shared trainer: one loop for every voszoo model (``out = model(clip)``; ``out["loss"]``), its optimizer
groups and schedules, EMA, checkpoints, DDP helpers and hooks. See ``docs/training.md``."""

from voszoo.engine.checkpoint import CheckpointError, load_model_weights, read_checkpoint
from voszoo.engine.distributed import destroy_distributed, init_distributed
from voszoo.engine.ema import ModelEMA
from voszoo.engine.hooks import CheckpointHook, ConsoleHook, EvalHook, Hook
from voszoo.engine.loggers import CsvHook, LoggerHook, TensorBoardHook, WandbHook
from voszoo.engine.optim import (
    ConstantSchedule,
    PolyWarmupSchedule,
    Schedule,
    build_optimizer,
    freeze_batchnorm,
    freeze_parameters,
)
from voszoo.engine.seed import seed_everything
from voszoo.engine.trainer import Trainer, TrainingTerminated

__all__ = [
    "Trainer",
    "TrainingTerminated",
    "build_optimizer",
    "Schedule",
    "PolyWarmupSchedule",
    "ConstantSchedule",
    "freeze_batchnorm",
    "freeze_parameters",
    "ModelEMA",
    "Hook",
    "ConsoleHook",
    "CheckpointHook",
    "EvalHook",
    "LoggerHook",
    "WandbHook",
    "TensorBoardHook",
    "CsvHook",
    "CheckpointError",
    "read_checkpoint",
    "load_model_weights",
    "seed_everything",
    "init_distributed",
    "destroy_distributed",
]
