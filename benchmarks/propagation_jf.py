"""What the ToyVOS pre-training's matching alone gives, in J&F: label propagation with no decoder and no training.

Each frame's labels are propagated from frame 0 (its ground-truth labels) and the previous frame (its propagated
class shares) through the pre-trained embeddings (``PropagationPretrainer.embed``: softmax of cosine affinities /
tau, values = class shares of each feature cell), upsampled bilinearly to the frame and arg-maxed. The result is a
reference for the quick recipes: a method whose read used these features as they are would score about this much
at the same feature stride, before its decoder refines anything.

    python benchmarks/propagation_jf.py ~/.cache/voszoo/runs/toyvos-resnet18-<key>/last.pt --scale s8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PropagationPredictor", "main"]


class PropagationPredictor:
    """A :class:`voszoo.inference.predict.VideoPredictor` that propagates labels with a PropagationPretrainer."""

    name = "propagation"

    def __init__(self, model, *, scale: str) -> None:
        self.model = model.eval()
        self.scale = scale

    def _embed(self, frame: np.ndarray) -> torch.Tensor:
        from voszoo.data.transforms import normalize_image

        return self.model.embed(normalize_image(frame)[None])[self.scale][0]  # (D, h, w)

    @torch.no_grad()
    def predict(self, video) -> Iterator[np.ndarray]:
        from voszoo.pretraining.propagation import VOID, class_fractions

        first = torch.from_numpy(video.labels(0).astype(np.int64))
        classes = int(first[first != VOID].max()) + 1
        reference = self._embed(video.frame(0))
        grid = tuple(reference.shape[-2:])
        keys = [reference.flatten(1)]
        values = [class_fractions(first, num_classes=classes, size=grid).flatten(1)]
        yield video.labels(0)
        previous: tuple[torch.Tensor, torch.Tensor] | None = None
        for index in range(1, video.num_frames):
            query = self._embed(video.frame(index)).flatten(1)  # (D, N)
            memory_keys = torch.cat(keys + ([previous[0]] if previous else []), 1)
            memory_values = torch.cat(values + ([previous[1]] if previous else []), 1)
            attention = torch.softmax(query.T @ memory_keys / self.model.temperature, dim=-1)
            shares = (attention @ memory_values.T).T  # (C, N)
            full = F.interpolate(shares.reshape(1, classes, *grid), size=video.size, mode="bilinear")[0]
            yield full.argmax(0).numpy().astype(np.uint8)
            previous = (query, shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a voszoo-pretrain run checkpoint (runs/<...>/last.pt)")
    parser.add_argument("--scale", default="s8", help="feature scale to propagate at (s16 or s8)")
    parser.add_argument("--data", type=Path, default=Path("data/toyvos"), help="a ToyVOS folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=Path("outputs/propagation_jf"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from voszoo.backbones.resnet import ResNetBackbone
    from voszoo.data.davis import ToyVOS
    from voszoo.engine.checkpoint import read_checkpoint
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.pretraining.propagation import PropagationPretrainer

    checkpoint = read_checkpoint(args.checkpoint)
    recipe = checkpoint["config"]
    model = PropagationPretrainer(encoder=ResNetBackbone(depth=int(recipe["encoder"]["depth"])), **recipe["objective"])
    model.load_state_dict(checkpoint["state_dict"])
    predictor = PropagationPredictor(model, scale=args.scale)
    result = evaluate_predictor(predictor, ToyVOS(args.data, split=args.split), args.out / args.scale, workers=1)
    print(json.dumps({"scale": args.scale, "step": checkpoint["step"], **{k: result[k] for k in ("J&F", "J", "F")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
