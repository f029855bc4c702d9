"""Pieces shared by the Hydra entry points (voszoo-train, voszoo-eval, voszoo-bench)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from voszoo.errors import describe_user_error, report_user_error, take_verbose_flag

__all__ = [
    "ClaimOutputDir",
    "JobFailedError",
    "config_float",
    "config_int",
    "evaluate_model",
    "guarded_task",
    "hydra_entry",
    "prepare_data",
]

logger = logging.getLogger("voszoo")


def hydra_entry(task: Callable[[DictConfig], Any], config_name: str) -> None:
    """Run ``task`` as the Hydra app ``voszoo-<config_name>`` on voszoo's config tree (absolute path, version_base
    1.3), inside the shared error boundary (:func:`guarded_task`); built at call time so that importing an entry
    module does nothing. ``--verbose`` on the command line asks for full tracebacks."""
    import hydra

    from voszoo._paths import conf_dir

    take_verbose_flag(sys.argv)
    task = guarded_task(task, prog=f"voszoo-{config_name}")
    hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)()


class JobFailedError(CompactHydraException):
    """A multirun job stopped on a user error, already reported in one line. Hydra prints a compact exception
    without its traceback once the sweep's jobs have run, and exits 1."""


def guarded_task(task: Callable[[DictConfig], Any], *, prog: str) -> Callable[[DictConfig], Any]:
    """``task`` behind the shared error boundary (:mod:`voszoo.errors`), after every ``_target_`` of the config
    has been checked (:func:`voszoo.instantiate.check_targets`).

    Hydra catches what a task raises and prints its traceback, so the boundary sits inside the task: a user error
    prints one line and a hint, then exits 1 (a single run) or fails only its own job (a multirun: the other jobs
    still run and Hydra exits 1 at the end).
    """

    @functools.wraps(task)  # Hydra names the job after the wrapped function's module
    def guarded(cfg: DictConfig) -> Any:
        from voszoo.instantiate import check_targets

        try:
            check_targets(cfg)  # the whole tree, before the task builds (calls) anything
            return task(cfg)
        except Exception as error:
            if not report_user_error(error, prog=prog):
                raise
            if _in_multirun():
                raise JobFailedError(f"{prog}: job failed: {describe_user_error(error)[0]}") from error
            raise SystemExit(1) from None

    return guarded


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class ClaimOutputDir(Callback):
    """Hydra callback of ``voszoo-eval`` (conf/eval.yaml): refuse a run dir that holds an earlier evaluation's
    results (or clear them, with ``overwrite=true``) before Hydra writes this run's ``.hydra/config.yaml`` beside
    them. The task checks again (:func:`voszoo.evaluation.pipeline.claim_output_dir`), for multiruns and the API."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from voszoo.evaluation.pipeline import claim_output_dir

        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 claims the folder the ranks share
            return
        try:
            claim_output_dir(config.hydra.run.dir, overwrite=bool(config.get("overwrite", False)))
        except Exception as error:
            if not report_user_error(error, prog=f"voszoo-{config.hydra.job.config_name}"):
                raise
            raise SystemExit(1) from None


def config_int(
    cfg: DictConfig, key: str, *, minimum: int, optional: bool = False, hint: str | None = None
) -> int | None:
    """The integer at dotted ``key`` of ``cfg`` (null allowed if ``optional``), checked to be >= ``minimum`` before
    anything uses it; otherwise a :class:`~voszoo.instantiate.ConfigError` that names the key and says ``hint`` (``int
    ("abc")`` would name nothing, and a bad count would fail later, blamed on whatever consumes it)."""
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    number = _as_number(value, integer=True)
    if number is None or number < minimum:
        _bad_value(key, value, f"an integer >= {minimum}" + (" or null" if optional else ""), hint=hint)
    return int(number)


def config_float(
    cfg: DictConfig, key: str, *, minimum: float, inclusive: bool = True, hint: str | None = None
) -> float:
    """The number at dotted ``key`` of ``cfg``, checked to be >= ``minimum`` (> if not ``inclusive``); see
    :func:`config_int`."""
    value = OmegaConf.select(cfg, key)
    number = _as_number(value, integer=False)
    if number is None or number < minimum or (number == minimum and not inclusive):
        _bad_value(key, value, f"a number {'>=' if inclusive else '>'} {minimum}", hint=hint)
    return float(number)


def _as_number(value: Any, *, integer: bool) -> float | int | None:
    """``value`` as an int (or float), None if it is not one (bools and non-integral floats are not integers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    if integer:
        return int(value) if float(value).is_integer() else None
    return value


def _bad_value(key: str, value: Any, expected: str, *, hint: str | None) -> None:
    from voszoo.instantiate import ConfigError

    raise ConfigError(f"{key}={value!r}: expected {expected}", hint=hint or f"pass {key}=<{expected}>")


def prepare_data(data: DictConfig) -> None:
    """Make sure the dataset exists: ToyVOS (``data.generate`` set) is generated on first use; under torchrun the
    first local rank generates and the others wait for it."""
    from voszoo.data.io import VOSDataError

    generate = data.get("generate")
    if not generate:
        if not Path(data.root).is_dir():
            raise VOSDataError(
                f"dataset {data.name!r}: root folder {data.root} not found",
                hint="download it and set data.root (or the VOSZOO_DATA environment variable), see docs/datasets.md",
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


def session_protocol(model: Any, model_cfg: Any, *, protocol: str | None, short_side: int | None) -> str:
    """The input protocol name an evaluation uses: ``protocol`` if given, else ``voszoo`` when ``short_side`` is set
    (a setting of that protocol), else the preset's ``model_cfg.protocol`` (``voszoo`` if it has none). Checked
    against the model now (:func:`voszoo.inference.protocols.resolve_protocol`): an unknown name or ``official``
    for a method without official code raises :class:`~voszoo.instantiate.ConfigError` naming the key."""
    from voszoo.inference.protocols import resolve_protocol
    from voszoo.instantiate import ConfigError

    if protocol is None:
        protocol = "voszoo" if short_side is not None else str(model_cfg.get("protocol", None) or "voszoo")
    try:
        resolve_protocol(protocol, model=model, short_side=short_side, model_name=model_cfg.get("name"))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return str(protocol)


def evaluate_model(
    model: Any,
    model_cfg: DictConfig,
    collection: Any,
    out_dir: str | Path,
    *,
    device: Any = "cpu",
    max_frames: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score ``model`` on ``collection`` with the preset's memory policy (``model_cfg.memory``); keyword arguments
    go to :func:`voszoo.evaluation.pipeline.evaluate_predictor` (sequences, max_videos, workers, progress) and the
    inference session (short_side, protocol, flip, amp, compile_modules, channels_last, flush_denormal;
    ``protocol=None``: :func:`session_protocol`)."""
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.inference.predict import SessionPredictor
    from voszoo.models.registry import build_memory_policy

    session_keys = ("short_side", "flip", "amp", "compile_modules", "channels_last", "flush_denormal")
    session_kwargs = {k: kwargs.pop(k) for k in session_keys if k in kwargs}
    session_kwargs["protocol"] = session_protocol(
        model, model_cfg, protocol=kwargs.pop("protocol", None), short_side=session_kwargs.get("short_side")
    )
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
