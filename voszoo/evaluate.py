"""voszoo-eval: run a model over a dataset split and score it (Hydra app, conf/eval.yaml).

    voszoo-eval model=stm_r18 checkpoint=outputs/train/stm_r18/<run>/last.pt data=toyvos
    voszoo-eval model=stm checkpoint=STM_weights.pth data=davis2017     # official STM weights are converted
    voszoo-eval model=aot_l checkpoint=AOTL_PRE_YTB_DAV.pth data=davis2017   # official AOT weights are converted

Writes ``predictions/<seq>/<frame>.png``, the official DAVIS CSVs, ``results.json`` and ``metrics.json`` (J&F, J, F,
FPS) into the Hydra output dir; for YouTube-VOS, ``submission.zip`` instead of scores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from voszoo.cli_common import evaluate_model, hydra_entry, prepare_data, resolve_device

__all__ = ["main", "evaluate"]

logger = logging.getLogger("voszoo.evaluate")


def load_weights(model: Any, cfg: DictConfig) -> str:
    """Load ``cfg.checkpoint`` into ``model``: a voszoo checkpoint, or an official STM (``STM_weights.pth``) or AOT
    (``AOT*_*.pth``) checkpoint, converted strictly. Returns a description of what was loaded."""
    from voszoo.engine.checkpoint import CheckpointError, load_model_weights

    if cfg.checkpoint is None:
        logger.warning("no checkpoint given: evaluating randomly initialised weights")
        return "random"
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    official = _official_state(path)
    if official is not None:  # the contents already read: no second read of the file
        kind, state = official
        if kind == "stm":
            from voszoo.models.convert import load_official_stm

            load_official_stm(model, state, strict=True)
        else:
            from voszoo.models.convert_aot import load_official_aot

            load_official_aot(model, state, strict=True)
        return f"{path} (official {kind.upper()} weights)"
    load_model_weights(model, path, model_name=str(cfg.model.name), use_ema=bool(cfg.use_ema))
    return str(path)


def _official_state(path: Path) -> tuple[str, dict] | None:
    """``("stm" | "aot", contents)`` if the file is an official STM checkpoint (a plain state dict with its memory
    key/value head names) or an official AOT one (its ``patch_wise_id_bank``, plain or under ``state_dict``), else
    None (voszoo checkpoints, and unreadable files, which get their error from the checkpoint reader)."""
    import torch

    from voszoo.models.convert_aot import is_official_aot_state

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    if isinstance(state, dict) and any(str(k).split("module.")[-1].startswith("KV_M_r4.") for k in state):
        return "stm", state
    return ("aot", state) if is_official_aot_state(state) else None


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    from voszoo.evaluation.pipeline import write_metrics
    from voszoo.instantiate import build
    from voszoo.models.registry import build_model

    prepare_data(cfg.data)
    model = build_model(cfg.model)
    loaded = load_weights(model, cfg)
    collection = build(cfg.data.eval, key="data.eval")
    result = evaluate_model(
        model,
        cfg.model,
        collection,
        output_dir,
        device=resolve_device(cfg.device),
        max_frames=cfg.max_frames,
        sequences=list(cfg.sequences) if cfg.sequences is not None else None,
        max_videos=cfg.max_videos,
        workers=int(cfg.workers),
        short_side=cfg.short_side,
        flip=bool(cfg.flip),
        amp=cfg.amp,
    )
    metrics = {"model": str(cfg.model.name), "data": str(cfg.data.name), "checkpoint": loaded}
    metrics.update({k: v for k, v in result.items() if k != "table"})
    write_metrics(output_dir, metrics)
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
