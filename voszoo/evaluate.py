"""voszoo-eval: run a model over a dataset split and score it (Hydra app, conf/eval.yaml).

    voszoo-eval model=stm_r18 checkpoint=outputs/train/stm_r18/<run>/last.pt data=toyvos
    voszoo-eval model=stm checkpoint=STM_weights.pth data=davis2017     # official STM weights are converted
    voszoo-eval model=aot_l checkpoint=AOTL_PRE_YTB_DAV.pth data=davis2017   # official AOT weights are converted

Writes ``predictions/<seq>/<frame>.png``, the official DAVIS CSVs, ``results.json`` and ``metrics.json`` (J&F, J, F,
FPS) into the Hydra output dir; for YouTube-VOS, ``submission.zip`` instead of scores. ``viz=true`` adds
``viz/report.html`` and the overlays it shows (:mod:`voszoo.viz`, the same as ``voszoo-viz <output dir>``).

    torchrun --nproc_per_node 4 -m voszoo.evaluate model=aot_l checkpoint=... data=davis2017 hydra.run.dir=out/x

shards the videos over the processes (one GPU each, ``cuda:LOCAL_RANK``); rank 0 scores them all once and writes
``metrics.json`` (see :mod:`voszoo.evaluation.sharding` and docs/evaluation.md). ``dist_timeout=SECONDS``
(conf/eval.yaml) bounds how long a rank waits for the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from voszoo.cli_common import config_int, evaluate_model, hydra_entry, prepare_data

if TYPE_CHECKING:
    import torch

    from voszoo.evaluation.sharding import EvalGroup

__all__ = ["main", "evaluate", "check_eval_config", "config_differences", "model_config_hint"]

logger = logging.getLogger("voszoo.evaluate")


def load_weights(model: Any, cfg: DictConfig) -> str:
    """Load ``cfg.checkpoint`` into ``model``: a voszoo checkpoint, or the official checkpoint the preset declares
    (``cfg.model.official_weights``: STM's ``STM_weights.pth``, AOT's ``AOT*_*.pth``), converted strictly. Returns a
    description of what was loaded."""
    from voszoo.engine.checkpoint import CheckpointError, load_model_weights

    if cfg.checkpoint is None:
        logger.warning("no checkpoint given: evaluating randomly initialised weights")
        return "random"
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    from voszoo.models.official import load_official_checkpoint

    official = load_official_checkpoint(model, path, model_cfg=cfg.model)
    if official is not None:
        return official
    try:
        load_model_weights(model, path, model_name=str(cfg.model.name), use_ema=bool(cfg.use_ema))
    except CheckpointError as error:
        other = _other_method_hint(path, model)  # another method's checkpoint: name the preset, not 11 overrides
        if other is not None:
            raise CheckpointError(f"{path}: {other[0]}", hint=other[1]) from error
        hint = model_config_hint(path, cfg.model)
        if hint is None:
            raise
        raise CheckpointError(f"{error}. {hint}") from error
    return str(path)


def _other_method_hint(path: Path, model: Any) -> tuple[str, str] | None:
    """``(message, hint)`` if the voszoo checkpoint at ``path`` was saved from another model class than ``model``
    (e.g. an STM checkpoint given to an AOT run), naming its preset; None otherwise or if it cannot be read."""
    from voszoo.engine.checkpoint import CheckpointError, model_class_path, read_checkpoint

    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError:
        return None
    saved_class, saved_name = checkpoint.get("model_class"), checkpoint.get("model_name")
    if not saved_class or not saved_name or saved_class == model_class_path(model):
        return None
    family = str(saved_class).rsplit(".", 1)[-1]
    message = f"this is {_a(family)} checkpoint: model={saved_name} (this run builds {_a(type(model).__name__)})"
    return message, f"rerun with model={saved_name}"


def _a(name: str) -> str:
    from voszoo.models.official import article

    return article(name)


def model_config_hint(path: str | Path, model_cfg: DictConfig) -> str | None:
    """Why a voszoo checkpoint may not fit: the model-config keys its training run set differently from this run
    (e.g. ``experiment=aot_quick`` trains with ``model.encoder.frozen_bn=false``), as overrides to paste into a shell
    (each ``key=value`` shell-quoted where needed); None if the checkpoint carries no config or the two model configs
    agree."""
    import shlex

    from omegaconf import OmegaConf

    from voszoo.engine.checkpoint import CheckpointError, read_checkpoint
    from voszoo.hydra_compose import override_value

    try:
        saved = (read_checkpoint(path).get("config") or {}).get("model")
    except CheckpointError:
        return None
    if not isinstance(saved, dict):
        return None
    differences = config_differences(saved, OmegaConf.to_container(model_cfg, resolve=True), prefix="model")
    if not differences:
        return None
    shown = " ".join(shlex.quote(f"{key}={override_value(value)}") for key, value in differences[:8])
    more = f" (and {len(differences) - 8} more)" if len(differences) > 8 else ""
    return f"Its training run built the model with other settings; rerun with: {shown}{more}"


def config_differences(saved: Any, current: Any, *, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted key, saved value)`` for every leaf where ``saved`` differs from ``current`` (keys only in
    ``current`` are left out: an override cannot remove them)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found: list[tuple[str, Any]] = []
        for key, value in saved.items():
            dotted = f"{prefix}.{key}"
            if key not in current:
                found.append((f"+{dotted}", value))
            else:
                found.extend(config_differences(value, current[key], prefix=dotted))
        return found
    return [] if saved == current else [(prefix, saved)]


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Predict and score ``cfg``'s model on its dataset into ``output_dir``; returns the metrics written to
    ``metrics.json``. Under ``torchrun`` every rank calls this; rank 0 alone writes and returns the metrics (the
    others return ``{}``), into rank 0's ``output_dir``."""
    import torch

    from voszoo.device import resolve_device
    from voszoo.engine.distributed import destroy_distributed
    from voszoo.evaluation.sharding import join_eval_group

    check_eval_config(cfg)
    device = resolve_device(cfg.device)
    group = join_eval_group(device_type=device.type, timeout=float(cfg.dist_timeout))
    try:
        if group is None:
            return _evaluate(cfg, output_dir, device=device, group=None)
        if device.type == "cuda":
            device = torch.device("cuda", group.local_rank)
        return _evaluate(cfg, _shared_output_dir(group, output_dir), device=device, group=group)
    finally:
        destroy_distributed()


def check_eval_config(cfg: DictConfig) -> None:
    """Check the values of a ``voszoo-eval`` config that are plain numbers, naming the key at fault
    (:class:`~voszoo.instantiate.ConfigError`), before anything is loaded or built."""
    config_int(cfg, "max_videos", minimum=1, optional=True, hint="max_videos=null scores every video")
    config_int(cfg, "max_frames", minimum=1, optional=True)
    config_int(cfg, "short_side", minimum=1, optional=True)
    config_int(cfg, "workers", minimum=1)


def _shared_output_dir(group: EvalGroup, output_dir: str | Path) -> str:
    """Rank 0's output dir (Hydra's default run dir holds a timestamp, which ranks may compute differently)."""
    from voszoo.evaluation.sharding import gather_from_ranks

    shared = gather_from_ranks(group, str(output_dir), what="to share the output dir")[0]
    if shared != str(output_dir):
        logger.warning(
            "rank %d writes into rank 0's output dir %s (its own Hydra dir %s keeps only its log); pass "
            "hydra.run.dir=... to give every rank the same one",
            group.rank,
            shared,
            output_dir,
        )
    return shared


def _evaluate(
    cfg: DictConfig, output_dir: str | Path, *, device: torch.device, group: EvalGroup | None
) -> dict[str, Any]:
    import torch

    from voszoo.evaluation.pipeline import write_metrics
    from voszoo.instantiate import build
    from voszoo.models.registry import build_model, without_weights

    prepare_data(cfg.data)
    if cfg.checkpoint is None:
        torch.manual_seed(0)  # the same random weights in every rank (and run)
        model = build_model(cfg.model)
    else:  # the checkpoint holds every weight: encoder weights (a file, a download, the ToyVOS cache) are not needed
        model = build_model(without_weights(cfg.model))
    loaded = load_weights(model, cfg)
    collection = build(cfg.data.eval, key="data.eval")
    result = evaluate_model(
        model,
        cfg.model,
        collection,
        output_dir,
        device=device,
        max_frames=cfg.max_frames,
        sequences=list(cfg.sequences) if cfg.sequences is not None else None,
        max_videos=config_int(cfg, "max_videos", minimum=1, optional=True),
        workers=config_int(cfg, "workers", minimum=1),
        short_side=cfg.short_side,
        protocol=cfg.protocol,
        flip=bool(cfg.flip),
        amp=cfg.amp,
        compile_modules=bool(cfg.compile),
        channels_last=bool(cfg.channels_last),
        flush_denormal=cfg.flush_denormal,
        group=group,
        overwrite=bool(cfg.overwrite),
    )
    if group is not None and not group.is_main:
        return {}
    metrics = {"model": str(cfg.model.name), "data": str(cfg.data.name), "checkpoint": loaded}
    metrics.update({k: v for k, v in result.items() if k != "table"})
    write_metrics(output_dir, metrics)
    if bool(cfg.viz):
        from voszoo.viz import load_run, write_report

        report = write_report(load_run(output_dir, collection=collection), Path(output_dir) / "viz")
        logger.info("report: %s", report)
    if "table" in result:
        print(_format(result["table"]))
    return metrics


def _format(table: dict[str, float]) -> str:
    header = " ".join(f"{k:>10}" for k in table)
    values = " ".join(f"{v:>10.3f}" for v in table.values())
    return f"{header}\n{values}"


def _task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    return evaluate(cfg, HydraConfig.get().runtime.output_dir).get("J&F")


def main() -> None:
    hydra_entry(_task, "eval")


if __name__ == "__main__":
    main()
