"""Can a model fit one fixed batch? Foreground and identity accuracy while training on the same clips over and over.

The standard first check when a model does not learn: if it cannot fit a handful of clips, something in the model,
loss or optimiser is wrong; if it can, the problem is data, schedule or generalisation. For VOS the interesting part
is *identity*: a model can find every object (foreground IoU near 1) and still give them the wrong ids. This script
takes the first ``batch_size`` clips with at least ``--min-objects`` objects from the ``voszoo-train`` config the
overrides compose, trains on that one batch for ``--steps`` steps with the config's optimiser and gradient clipping
(no schedule: the base learning rate), and every ``--every`` steps reports, over the predicted frames of the batch:

- ``fg IoU``: IoU of predicted foreground (any object) against true foreground;
- ``right id``: share of true-object pixels predicted as the right object;
- ``wrong id``: share of true-object pixels predicted as another object (identity confusion);

in training mode (the step's own forward: dropout and, for AOT, identities shuffled per sample) and in eval mode
(a second forward without gradients: fixed identities, BatchNorm running statistics).

    python benchmarks/overfit_batch.py --steps 160 experiment=aot_quick 'data.train.transform.scale=[0.05,0.1]'
    python benchmarks/overfit_batch.py --steps 120 experiment=aot_quick model.identity.num_identities=2 \\
        model.decoder.out_channels=3 --json /tmp/overfit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from torch import Tensor

__all__ = ["identity_stats", "main", "pick_batch"]


def identity_stats(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """fg IoU, right-id and wrong-id shares (see the module docstring) of logits (B, T, N+1, H, W) against labels
    (B, T, H, W); void (255) pixels are left out."""
    pred = logits.argmax(2)
    valid = labels != 255
    truth = (labels > 0) & valid
    found = (pred > 0) & valid
    objects = max(int(truth.sum()), 1)
    return {
        "fg_iou": int((found & truth).sum()) / max(int((found | truth).sum()), 1),
        "right_id": int(((pred == labels) & truth).sum()) / objects,
        "wrong_id": int((found & truth & (pred != labels)).sum()) / objects,
    }


def pick_batch(dataset: Any, size: int, *, min_objects: int) -> list[dict[str, Any]]:
    """The first ``size`` samples of ``dataset`` (epoch 0, in index order) with at least ``min_objects`` objects;
    ValueError naming the dataset if one pass finds too few (a second pass would only repeat the same clips: a
    sample is fixed by its epoch and index)."""
    picked: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        sample = dataset[index]
        if int(sample["num_objects"]) >= min_objects:
            picked.append(sample)
            if len(picked) == size:
                return picked
    raise ValueError(
        f"--min-objects {min_objects}: only {len(picked)} of {size} clips of {type(dataset).__name__} have that many "
        "objects; lower it or raise data.train.max_objects"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="voszoo-train overrides (conf/train.yaml)")
    parser.add_argument("--steps", type=int, default=160, help="optimisation steps on the fixed batch")
    parser.add_argument("--every", type=int, default=20, help="report every this many steps (and at the last)")
    parser.add_argument("--min-objects", type=int, default=2, help="clips need at least this many objects")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.min_objects < 1:
        print("overfit_batch: --steps, --every and --min-objects must be >= 1", file=sys.stderr)
        return 2
    from voszoo.cli_common import prepare_data
    from voszoo.data.io import VOSDataError, atomic_write_bytes
    from voszoo.hydra_compose import compose_config
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = compose_config("train", args.overrides)
    try:
        prepare_data(cfg.data)
        run = build_run(cfg)
        items = pick_batch(run["dataset"], int(cfg.trainer.batch_size), min_objects=args.min_objects)
    except (ValueError, VOSDataError) as error:
        print(f"overfit_batch: {error}", file=sys.stderr)
        return 2
    model, optimizer = run["model"], run["optimizer"]
    clip = collate_clips(items)
    labels = clip.labels[:, 1:]
    clip_norm = cfg.trainer.get("clip_grad_norm")
    print(f"batch: {len(items)} clips, objects {clip.num_objects.tolist()}, images {tuple(clip.images.shape)}")
    columns = [f"{mode} {name}" for mode in ("train", "eval") for name in ("fg IoU", "right id", "wrong id")]
    print("| step | loss | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    rows = []
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        out = model(clip)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_norm))
        optimizer.step()
        if step % args.every and step != args.steps:
            continue
        model.eval()
        with torch.no_grad():
            evaluated = model(clip)
        train, held = identity_stats(out["logits"].detach(), labels), identity_stats(evaluated["logits"], labels)
        row = {"step": step, "loss": out["loss"].item(), "train": train, "eval": held}
        rows.append(row)
        cells = [f"{row['loss']:.3f}", *(f"{part[k]:.3f}" for part in (train, held) for k in train)]
        print(f"| {step} | " + " | ".join(cells) + " |", flush=True)
    print(f"{args.steps} steps in {time.perf_counter() - started:.0f} s")
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"overrides": args.overrides, "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
