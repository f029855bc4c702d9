"""Pieces shared by the Hydra entry points (voszoo-train, voszoo-eval, voszoo-bench)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["hydra_entry", "prepare_data", "evaluate_model", "resolve_device"]

logger = logging.getLogger("voszoo")


def hydra_entry(task: Callable[[DictConfig], Any], config_name: str) -> None:
    """Run ``task`` as a Hydra app on voszoo's config tree (absolute path, version_base 1.3); built at call time
    so that importing an entry module does nothing."""
    import hydra

    from voszoo._paths import conf_dir

    hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)()


def prepare_data(data: DictConfig) -> None:
    """Make sure the dataset exists: ToyVOS (``data.generate`` set) is generated on first use; under torchrun the
    first local rank generates and the others wait for it."""
    generate = data.get("generate")
    if not generate:
        if not Path(data.root).is_dir():
            raise FileNotFoundError(
                f"dataset {data.name!r}: root folder {data.root} not found; download it and set data.root "
                "(or the VOSZOO_DATA environment variable), see docs/datasets.md"
            )
        return
    from voszoo.data.toy import generate_toyvos

    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        generate_toyvos(data.root, **OmegaConf.to_container(generate, resolve=True))
        return
    marker = Path(data.root) / "toyvos.json"
    for _ in range(3600):
        if marker.is_file():
            return
        time.sleep(1.0)
    raise TimeoutError(f"waited an hour for local rank 0 to generate ToyVOS at {data.root}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate_model(
    model: Any,
    model_cfg: DictConfig,
    collection: Any,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    max_frames: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score ``model`` on ``collection`` with the preset's memory policy (``model_cfg.memory``); keyword arguments
    go to :func:`voszoo.evaluation.pipeline.evaluate_predictor` (sequences, max_videos, workers, progress) and the
    inference session (short_side, flip, amp)."""
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.inference.predict import SessionPredictor
    from voszoo.models.registry import build_memory_policy

    session_keys = ("short_side", "flip", "amp", "compile_modules", "channels_last")
    session_kwargs = {k: kwargs.pop(k) for k in session_keys if k in kwargs}
    policy_overrides = {} if max_frames is None else {"max_frames": max_frames}
    build_memory_policy(model_cfg, **policy_overrides)  # fail now, not inside the first video
    predictor = SessionPredictor(
        model.to(device),
        name=str(model_cfg.get("name", type(model).__name__)),
        policy_factory=lambda: build_memory_policy(model_cfg, **policy_overrides),
        device=device,
        **session_kwargs,
    )
    return evaluate_predictor(predictor, collection, out_dir, **kwargs)
