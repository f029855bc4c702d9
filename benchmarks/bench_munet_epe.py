"""End-point error of MUNet's MU-Layer displacement against ToyVOS ground-truth flow (a benchmark figure, no threshold).

MUNet learns its displacement without flow supervision (shared/papers/002, Sec. 3.2); this script measures how
close it comes to the true motion. For every pair of consecutive frames (t, t+1) of the ToyVOS videos:

- the model's query encoder gives the stride-16 features of both frames; the MU-Layer
  (:meth:`voszoo.layers.motion_uncertainty.MULayer.estimate`) is called with ``current`` = frame t and ``previous`` =
  frame t+1. Its displacement at a cell x of ``current`` points to the match x + u in ``previous``, so with this
  order it estimates the *forward* flow of frame t, which is what ToyVOS stores (``ToyVOSVideo.flow(t)``: frame t ->
  t+1, channel 0 = dx). In the model the same operator runs the other way (current = t, previous = t-1: backward
  flow); the operator and its weights are the same;
- the ground truth is ``flow(t)`` averaged over each 16 x 16 cell (``avg_pool2d``, the cell's mean motion) and divided
  by 16, i.e. expressed in feature cells like the displacement;
- frames whose size is not a multiple of 16 are cropped at the bottom/right to the nearest multiple (cropping does
  not change the flow).

Reported (in feature cells; x16 gives pixels): mean EPE over all cells, over "moving" cells (ground truth >= 0.5
cell), and the EPE of predicting zero motion on the same cells (the trivial baseline), plus the mean uncertainty
(Eq. 2 window maximum). Results are printed and written as JSON.

    python benchmarks/bench_munet_epe.py                                   # random init munet_r18
    python benchmarks/bench_munet_epe.py --checkpoint outputs/train/munet_r18/<run>/last.pt --max-videos 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from voszoo.data.davis import ToyVOS
from voszoo.data.io import VOSDataError
from voszoo.inference.preprocess import image_to_tensor

CELL = 16
MOVING = 0.5  # cells


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """The model (eval mode) and a description of where its weights come from."""
    from voszoo.engine.checkpoint import load_model_weights, read_checkpoint
    from voszoo.models.registry import build_model, create_model

    if args.checkpoint is None:
        torch.manual_seed(args.seed)
        return create_model(args.model).eval(), f"random init (seed {args.seed}) of preset {args.model}"
    checkpoint = read_checkpoint(args.checkpoint)
    config = checkpoint.get("config") or {}
    if "model" in config:  # the run's composed model node: ablation variants rebuild exactly
        model = build_model(config["model"])
    else:
        model = create_model(checkpoint.get("model_name") or args.model)
    load_model_weights(model, args.checkpoint, use_ema=args.ema)
    return model.eval(), f"{args.checkpoint} (step {checkpoint.get('step')}{', EMA' if args.ema else ''})"


def mu_layer_of(model: torch.nn.Module) -> Any:
    layer = getattr(getattr(model, "motion", None), "mu_layer", None)
    if layer is None or not hasattr(layer, "estimate"):
        raise ValueError(
            f"{type(model).__name__} has no MU-Layer (model.motion.mu_layer); "
            "use a MUNet preset or model/motion=mu_layer"
        )
    return layer


def cell_flow(flow: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) pixel flow -> (2, H/16, W/16) mean flow per 16 x 16 cell, in cells."""
    return F.avg_pool2d(flow.permute(2, 0, 1)[None], CELL)[0] / CELL


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ToyVOS, *, max_videos: int | None) -> dict[str, float]:
    layer = mu_layer_of(model)
    names = list(data.sequences)[:max_videos]
    sums = {"epe": 0.0, "zero": 0.0, "epe_moving": 0.0, "zero_moving": 0.0, "uncertainty": 0.0}
    cells = moving = pairs = 0
    for name in tqdm(names, desc="videos", disable=None, file=sys.stderr):
        video = data.video(name)
        height, width = (s // CELL * CELL for s in video.size)
        if height == 0 or width == 0:
            raise VOSDataError(f"{name}: frames of {video.size} are smaller than one {CELL}x{CELL} cell")
        features = [
            model.query_encoder(image_to_tensor(video.frame(t)[:height, :width]))["s16"]
            for t in range(video.num_frames)
        ]
        for t in range(video.num_frames - 1):
            displacement, uncertainty = layer.estimate(previous=features[t + 1], current=features[t])
            truth = cell_flow(torch.from_numpy(video.flow(t)[:height, :width].copy()))
            error = (displacement[0] - truth).norm(dim=0)
            zero = truth.norm(dim=0)
            mask = zero >= MOVING
            sums["epe"] += float(error.sum())
            sums["zero"] += float(zero.sum())
            sums["epe_moving"] += float(error[mask].sum())
            sums["zero_moving"] += float(zero[mask].sum())
            sums["uncertainty"] += float(uncertainty.sum())
            cells += error.numel()
            moving += int(mask.sum())
            pairs += 1
    if pairs == 0:
        raise VOSDataError(f"no frame pairs in {data.root} (split {data.split})")
    return {
        "epe_cells": sums["epe"] / cells,
        "zero_motion_epe_cells": sums["zero"] / cells,
        "epe_moving_cells": sums["epe_moving"] / max(moving, 1),
        "zero_motion_epe_moving_cells": sums["zero_moving"] / max(moving, 1),
        "mean_uncertainty": sums["uncertainty"] / cells,
        "moving_fraction": moving / cells,
        "videos": len(names),
        "pairs": pairs,
        "cells": cells,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_munet_epe", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None, help="voszoo checkpoint (default: random init of --model)")
    parser.add_argument("--model", default="munet_r18", help="model preset without a checkpoint (default munet_r18)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--data-root", default="data/toyvos", help="ToyVOS root (default data/toyvos)")
    parser.add_argument("--split", default="val", help="ToyVOS split (default val)")
    parser.add_argument("--max-videos", type=int, default=None, help="first N videos of the split (default all)")
    parser.add_argument("--temperature", type=float, default=None, help="override the soft-argmin temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--out", default="benchmarks/results/munet_epe.json", help="JSON output (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.max_videos is not None and args.max_videos < 1:
            raise ValueError(f"--max-videos must be >= 1, got {args.max_videos}")
        data = ToyVOS(args.data_root, split=args.split)
        model, source = build(args)
        layer = mu_layer_of(model)
        if args.temperature is not None:
            if args.temperature <= 0:
                raise ValueError(f"--temperature must be > 0, got {args.temperature}")
            layer.temperature = args.temperature
        start = time.perf_counter()
        metrics = evaluate(model, data, max_videos=args.max_videos)
    except (VOSDataError, ValueError) as error:
        print(f"bench_munet_epe: error: {error}", file=sys.stderr)
        return 2
    result = {
        "weights": source,
        "data": f"{args.data_root} ({args.split})",
        "temperature": layer.temperature,
        "window": list(layer.window),
        "seconds": round(time.perf_counter() - start, 2),
        **metrics,
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
