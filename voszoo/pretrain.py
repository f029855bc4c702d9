"""voszoo-pretrain: pre-train an encoder on ToyVOS and put it in the weights cache (Hydra app, conf/pretrain.yaml).

    voszoo-pretrain                              # the default recipe, which `weights: toyvos` resolves to
    voszoo-pretrain pretrain_pairs@pairs=static  # the static-image alternative
    voszoo-pretrain trainer.max_steps=600        # another recipe: another cache key, never mixed up with the default

The run itself (checkpoints, ``metrics.jsonl``) lives in the cache's ``runs/`` folder of its recipe key, so an
interrupted pre-training resumes exactly from any process that asks for the same recipe; the result is
``pretrained/toyvos-<architecture>-<key>.pt`` (:mod:`voszoo.pretraining.cache`). The job's Hydra dir gets
``metrics.json`` (cache path, key, steps, final loss, the propagation probe). docs/pretraining.md has the
objectives, the comparison and the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from voszoo.cli_common import hydra_entry, prepare_data
from voszoo.device import resolve_device

__all__ = [
    "architecture_of",
    "compose_pretrain_config",
    "ensure_pretrained",
    "load_toyvos_weights",
    "main",
    "prepare_pretrained",
    "pretrain",
    "recipe_of",
    "toyvos_architectures",
]

logger = logging.getLogger("voszoo.pretrain")

# trainer settings that do not change the weights (so not part of the recipe key)
_RUN_ONLY_TRAINER_KEYS = ("num_workers", "device", "checkpoint_every", "keep_checkpoints", "log_every")


def architecture_of(encoder: DictConfig | dict[str, Any]) -> str:
    """``resnet<depth>`` for the ResNet encoders the pre-training supports; ValueError naming the target otherwise."""
    target = str(encoder.get("_target_", ""))
    if target.rsplit(".", 1)[-1] not in ("ResNetBackbone", "FreezableResNetBackbone"):
        raise ValueError(f"voszoo-pretrain: encoder._target_ must be a voszoo ResNet backbone, got {target!r}")
    return f"resnet{int(encoder.get('depth', 50))}"


def recipe_of(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a pretrain config that determine its weights: what the cache key hashes."""
    trainer = {
        k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in _RUN_ONLY_TRAINER_KEYS
    }
    from voszoo.data.toy import FORMAT_VERSION as TOYVOS_FORMAT

    return {
        "toyvos_format": TOYVOS_FORMAT,  # a renderer change that alters the data alters the key
        "seed": int(cfg.seed),
        "encoder": OmegaConf.to_container(cfg.encoder, resolve=True),
        "objective": OmegaConf.to_container(cfg.objective, resolve=True),
        "pairs": OmegaConf.to_container(cfg.pairs, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "schedule": OmegaConf.to_container(cfg.schedule, resolve=True),
        "trainer": trainer,
    }


def compose_pretrain_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/pretrain.yaml with Hydra ``overrides``, composed without leaving Hydra state behind (a caller's own
    Hydra instance, e.g. inside voszoo-train, is restored)."""
    from voszoo.hydra_compose import compose_config

    return compose_config("pretrain", overrides)


def _default_overrides(architecture: str) -> list[str]:
    if not architecture.startswith("resnet") or not architecture[6:].isdigit():
        raise ValueError(
            f"weights: toyvos: no ToyVOS pre-training recipe for {architecture!r}; voszoo-pretrain trains ResNet "
            "encoders (resnet18/34/50/101). Pre-train another encoder yourself and pass weights=<path to its .pth>"
        )
    return [] if architecture == "resnet18" else [f"encoder.depth={architecture[6:]}"]


def pretrain(cfg: DictConfig, output_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume, or find finished) the pre-training ``cfg`` describes; write its cache entry; its metrics."""
    from voszoo.engine import EvalHook, Trainer, seed_everything
    from voszoo.engine.optim import optimizer_from_config
    from voszoo.evaluation.pipeline import write_metrics
    from voszoo.instantiate import build
    from voszoo.pretraining.cache import entry_path, recipe_key, run_dir, write_entry
    from voszoo.pretraining.probe import propagation_probe
    from voszoo.pretraining.propagation import PropagationPretrainer
    from voszoo.types import collate_clips

    recipe = recipe_of(cfg)
    architecture = architecture_of(cfg.encoder)
    key = recipe_key(recipe)
    target = entry_path(architecture, key)
    logger.info("ToyVOS pre-training of %s, recipe %s -> %s", architecture, key, target)
    prepare_data(cfg.data)
    seed_everything(int(cfg.seed))
    model = PropagationPretrainer(encoder=build(cfg.encoder, key="encoder"), **OmegaConf.to_container(cfg.objective))
    dataset = build(cfg.pairs.train, key="pairs.train")
    optim = recipe["optim"]
    # a random encoder: everything learns at the same rate
    optimizer = optimizer_from_config(model, optim, encoder_lr_mult=1.0, encoder_lr_mult_fresh=None)
    max_steps = int(cfg.trainer.max_steps)
    warmup = min(int(cfg.schedule.get("warmup_steps", 0)), max_steps)  # a short smoke run warms up over all of it
    schedule = build(cfg.schedule, key="schedule", base_lr=optim["lr"], total_steps=max_steps, warmup_steps=warmup)
    probe_collection = build(cfg.data.eval, key="data.eval")
    probe_videos = cfg.get("probe_videos")

    def probe(m: Any) -> dict[str, float]:
        return propagation_probe(m, probe_collection, max_videos=probe_videos)

    hooks = [EvalHook(probe, every=int(cfg.probe_every), at_end=False)] if cfg.get("probe_every") else []
    trainer_args = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()}
    trainer_args["device"] = resolve_device(trainer_args.get("device", "auto"), key="trainer.device")
    trainer = Trainer(
        model=model,
        data=dataset,
        optimizer=optimizer,
        schedule=schedule,
        output_dir=run_dir(architecture, key),
        collate_fn=collate_clips,
        hooks=hooks,
        seed=int(cfg.seed),
        model_name=f"toyvos_pretrain_{architecture}",
        config=recipe,
        progress=progress,
        **trainer_args,
    )
    last = trainer.fit(resume=cfg.resume)
    scores = probe(trainer.model)
    metrics: dict[str, Any] = {
        "architecture": architecture,
        "key": key,
        "pairs": str(cfg.pairs.name),
        "steps": trainer.step,
        "train_loss": last.get("loss"),
        "probe": scores,
        "cache_entry": str(target),
        "run_dir": str(run_dir(architecture, key)),
    }
    if trainer.is_main:
        write_entry(
            target,
            state_dict=model.encoder.state_dict(),
            architecture=architecture,
            key=key,
            recipe=recipe,
            steps=trainer.step,
            metrics=metrics,
        )
        if output_dir is not None:
            write_metrics(Path(output_dir), metrics)
        logger.info("pre-trained %s (%d steps, probe IoU %.3f): %s", architecture, trainer.step, scores["iou"], target)
    return metrics


def ensure_pretrained(
    architecture: str, *, overrides: Sequence[str] = (), build_missing: bool = False, progress: bool = True
) -> Path:
    """The cache entry of the default ToyVOS recipe for ``architecture`` (e.g. ``"resnet18"``), checked; ``overrides``
    (Hydra overrides of conf/pretrain.yaml) select another recipe.

    A missing entry is installed from the package's bundled entry when that is the same recipe; otherwise it is built
    (by :func:`pretrain`, with a progress bar) if ``build_missing``, else
    :class:`~voszoo.pretraining.cache.PretrainedCacheError` names the command that builds it. A stale or corrupt
    entry is rebuilt if ``build_missing`` (the bad file is replaced atomically), else the same error names it.
    """
    return _checked_entry(architecture, overrides=overrides, build_missing=build_missing, progress=progress)[0]


def _checked_entry(
    architecture: str, *, overrides: Sequence[str], build_missing: bool, progress: bool
) -> tuple[Path, dict[str, Any]]:
    """:func:`ensure_pretrained`'s path and the entry it read and checked (read once: 11 MB and a digest)."""
    from voszoo.engine.checkpoint import atomic_save
    from voszoo.pretraining.cache import (
        PretrainedCacheError,
        bundled_entry_path,
        entry_path,
        read_entry,
        recipe_key,
    )

    cfg = compose_pretrain_config([*_default_overrides(architecture), *overrides])
    key = recipe_key(recipe_of(cfg))
    path = entry_path(architecture, key)
    bundled = bundled_entry_path(architecture, key)
    if not path.exists() and bundled.is_file():
        entry = read_entry(bundled, architecture=architecture, key=key)  # checked like any entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(entry, path)
        logger.info("installed the bundled ToyVOS pre-training %s into the cache: %s", bundled.name, path)
        return path, entry
    try:
        return path, read_entry(path, architecture=architecture, key=key)
    except PretrainedCacheError as error:
        if not build_missing:
            raise
        logger.warning("%s; building it now (voszoo-pretrain, default recipe)", error)
    pretrain(cfg, progress=progress)
    return path, read_entry(path, architecture=architecture, key=key)


def toyvos_architectures(node: Any) -> list[str]:
    """Architectures (``resnet18``, ...) of the backbones in a model config node that ask for ``weights: toyvos``."""
    from voszoo.backbones.weights import TOYVOS_WEIGHTS
    from voszoo.models.registry import weights_nodes

    return sorted({architecture_of(n) for n in weights_nodes(node) if n.weights == TOYVOS_WEIGHTS and "_target_" in n})


def prepare_pretrained(model_cfg: DictConfig, *, progress: bool = True) -> list[Path]:
    """Make sure every ``weights: toyvos`` encoder of ``model_cfg`` is in the cache, pre-training what is missing
    (with a progress bar; once per machine and recipe). Returns the checked cache entries."""
    return [ensure_pretrained(a, build_missing=True, progress=progress) for a in toyvos_architectures(model_cfg)]


def load_toyvos_weights(architecture: str) -> tuple[dict[str, Any], str]:
    """``(state dict, description)`` of the cached default ToyVOS pre-training of ``architecture`` (checked by
    :func:`voszoo.pretraining.cache.read_entry`); the description says what was loaded, for logs and errors."""
    path, entry = _checked_entry(architecture, overrides=(), build_missing=False, progress=False)
    probe = entry.get("metrics", {}).get("probe", {}).get("iou")
    shown = f"{probe:.3f}" if isinstance(probe, float) else "n/a"
    description = (
        f"ToyVOS pre-training {path} ({architecture}, recipe {entry['key']}, {entry['steps']} steps, probe IoU {shown})"
    )
    return entry["state_dict"], description


def _task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    return float(pretrain(cfg, HydraConfig.get().runtime.output_dir)["probe"]["iou"])


def main() -> None:
    hydra_entry(_task, "pretrain")


if __name__ == "__main__":
    main()
