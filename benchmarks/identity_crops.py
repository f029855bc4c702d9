"""Does a trained checkpoint tell objects apart, and at which frame size? Identity shares on ToyVOS val crops.

A quick recipe can score below copy-first-frame for two different reasons: it never learned to tell objects apart
(wrong identities even at its training geometry), or it learned at the 96x96 training crops and fails on the
192x192 evaluation frames (more tokens, more memory frames). This script separates the two. It cuts square crops of
``--size`` pixels (stride size/2) from the first ``--videos`` ToyVOS val videos, keeps the crops whose frame 0 holds
at least two objects (ids renumbered 1..N), and runs the model's own training unroll in eval mode on frames
(0, 2, 4): frame 0 with its ground truth, frames 2 and 4 predicted. Over the predicted frames' object pixels it
reports

- ``right id``: the share predicted as the right object;
- ``wrong id``: the share predicted as another object (identity confusion; the rest is lost to background);

and, for models with an STM memory reader (``model.reader``: STM, MUNet, MGA), ``read mass``: for query tokens of
frame 2 inside an object, the share of the read's affinity on memory tokens (frame 0) of the same object: how
well the matching itself holds, before any decoder. For identity models (``model.id_bank``: AOT, BATMAN) it adds
``identity_sensitivity``, the largest change of frame 2's logits when the identity embeddings are zeroed (does the
decoder read them at all), relative to the largest logit, and the cosine similarities of the bank's slot
embeddings on a full patch (``slot_cosine``: min / max between object slots, and between background and objects):
can the slots be told apart.

    python benchmarks/identity_crops.py stm_r18 outputs/learning_curves/stm/last.pt --size 96 192
    python benchmarks/identity_crops.py munet_r18 init --size 96     # init: ToyVOS pre-training, tied, untrained
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["crop_clips", "main", "score"]


def _load_video(root: Path, name: str, frames: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    from voszoo.data.transforms import normalize_image

    images, labels = [], []
    for index in frames:
        image_path = next((root / "JPEGImages" / "480p" / name).glob(f"{index:05d}.*"))
        images.append(normalize_image(np.array(Image.open(image_path).convert("RGB"))))
        mask = np.array(Image.open(root / "Annotations" / "480p" / name / f"{index:05d}.png"))
        labels.append(torch.from_numpy(mask.astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


def crop_clips(images: torch.Tensor, labels: torch.Tensor, *, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Square crops (stride size/2) of a (T, 3, H, W) clip and its (T, H, W) labels whose first frame holds >= 2
    objects, ids renumbered 1..N in order (what a model's training unroll expects); labels 255 stay void."""
    height, width = labels.shape[-2:]
    stride = max(size // 2, 1)
    crops = []
    for top in range(0, height - size + 1, stride):
        for left in range(0, width - size + 1, stride):
            image = images[..., top : top + size, left : left + size]
            label = labels[..., top : top + size, left : left + size]
            ids = [int(i) for i in label[0].unique() if 0 < int(i) < 255]
            if len(ids) < 2:
                continue
            lookup = torch.zeros(256, dtype=torch.long)
            lookup[255] = 255
            for new, old in enumerate(ids, start=1):
                lookup[old] = new
            crops.append((image, lookup[label]))
    return crops


def _build(preset: str, checkpoint: str) -> torch.nn.Module:
    from omegaconf import open_dict

    from voszoo.engine.checkpoint import read_checkpoint
    from voszoo.models.registry import build_model, compose_model_config, random_weights_config

    if checkpoint == "init":  # what a quick recipe starts from: the ToyVOS pre-training, tied where the preset can
        cfg = compose_model_config(preset)
        with open_dict(cfg):
            for key in ("encoder", "query_encoder", "memory_encoder"):
                if key in cfg and "weights" in cfg[key]:
                    cfg[key].weights = "toyvos"
            if "tie_initial_weights" in cfg or preset.startswith(("stm", "munet", "mga")):
                cfg.tie_initial_weights = True
        return build_model(cfg)
    model = build_model(random_weights_config(preset))
    model.load_state_dict(read_checkpoint(checkpoint)["state_dict"])
    return model


def score(model: torch.nn.Module, root: Path, *, size: int, videos: int) -> dict[str, float]:
    """right id, wrong id (and read mass for STM-family models) over the val crops; see the module docstring."""
    from voszoo.layers.memory_read import memory_affinity
    from voszoo.types import Clip

    reader = getattr(model, "reader", None)
    affinities: list[torch.Tensor] = []
    if reader is not None:
        original = reader.forward

        def recording(memory_key, memory_value, query_key, query_value=None, **kwargs):
            affinities.append(memory_affinity(memory_key, query_key))
            return original(memory_key, memory_value, query_key, query_value, **kwargs)

        reader.forward = recording
    elif hasattr(model, "id_bank"):
        reader = model.propagator.layers[0].long_term_attn
        original = reader.forward

        def recording(query, key, value):  # AOT's long-term attention: Q and K already projected
            if key.shape[1] == query.shape[1]:  # one memory frame: frame 0 read by frame 2 (or by itself)
                affinities.append(_head_affinity(query[0], key[0], reader.num_heads))
            return original(query, key, value)

        reader.forward = recording
    right = wrong = total = 0
    masses: list[float] = []
    last_clip = None
    names = sorted(p.name for p in (root / "Annotations" / "480p").iterdir())[:videos]
    model.eval()
    for name in names:
        images, labels = _load_video(root, name, (0, 2, 4))
        for image, label in crop_clips(images, labels, size=size):
            count = int(label[0][label[0] < 255].max())
            clip = Clip(
                images=image[None],
                labels=label[None],
                num_objects=torch.tensor([count]),
                names=[name],
                frame_indices=torch.tensor([[0, 2, 4]]),
            )
            affinities.clear()
            last_clip = clip
            with torch.no_grad():
                predicted = model(clip)["logits"].argmax(2)[0]
            truth = label[1:]
            objects = (truth > 0) & (truth < 255)
            right += int(((predicted == truth) & objects).sum())
            wrong += int(((predicted != truth) & (predicted > 0) & objects).sum())
            total += int(objects.sum())
            if affinities:  # identity models record the reference's self-read first, then frames 2 and 4
                masses.append(_read_mass(affinities[0 if hasattr(model, "reader") else 1], label, count))
    if reader is not None:
        del reader.forward  # back to the class's method
    result = {"right_id": right / max(total, 1), "wrong_id": wrong / max(total, 1), "crops_pixels": float(total)}
    if hasattr(model, "id_bank") and last_clip is not None:
        result["identity_sensitivity"] = _identity_sensitivity(model, last_clip)
        result["memory_sensitivity"] = _memory_sensitivity(model, last_clip)
    if masses:
        result["read_mass"] = float(np.nanmean(masses))  # crops without a token mostly inside an object: nan
    return result


def _identity_sensitivity(model: torch.nn.Module, clip: Any) -> float:
    """max |logits - logits with zeroed identity embeddings| / max |logits| on a clip's predicted frames."""
    with torch.no_grad():
        logits = model(clip)["logits"]
        original = model._embed_identities
        model._embed_identities = lambda masks, assignment: original(masks, assignment) * 0.0
        try:
            blind = model(clip)["logits"]
        finally:
            del model._embed_identities  # back to the class method
    valid = logits > -1e9  # objects a sample lacks carry -1e10 in both
    return float((logits - blind)[valid].abs().max() / logits[valid].abs().max())


def _memory_sensitivity(model: torch.nn.Module, clip: Any) -> float:
    """max |logits - logits with the first block's long- and short-term attention outputs zeroed| / max |logits|."""
    block = model.propagator.layers[0]
    with torch.no_grad():
        logits = model(clip)["logits"]
        hooks = [
            m.register_forward_hook(lambda _m, _a, out: out * 0.0)
            for m in (block.long_term_attn, block.short_term_attn)
        ]
        try:
            blind = model(clip)["logits"]
        finally:
            for hook in hooks:
                hook.remove()
    valid = logits > -1e9
    return float((logits - blind)[valid].abs().max() / logits[valid].abs().max())


def _head_affinity(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head of (L_q, C) and (L_k, C) tokens: (heads, L_q, L_k)."""
    q, k = (x.reshape(x.shape[0], heads, -1).transpose(0, 1) for x in (query, key))
    return torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)


def slot_cosines(bank: torch.nn.Module, *, size: int = 96) -> dict[str, list[float]]:
    """Cosine similarities of the identity bank's slot embeddings, each slot filling a whole (size x size) mask
    (token at the centre): [min, max] between object slots and between the background slot and object slots."""
    slots = bank.num_identities + 1
    vectors = []
    with torch.no_grad():
        for slot in range(slots):
            masks = torch.zeros(1, 2, size, size)
            masks[0, 0 if slot == 0 else 1] = 1.0
            embedding = bank(masks, torch.tensor([[0, max(slot, 1)]]))
            vectors.append(embedding[0, :, embedding.shape[2] // 2, embedding.shape[3] // 2])
    unit = F.normalize(torch.stack(vectors), dim=1)
    cosine = unit @ unit.T
    objects = cosine[1:, 1:][~torch.eye(slots - 1, dtype=torch.bool)]
    background = cosine[0, 1:]
    return {
        "objects": [float(objects.min()), float(objects.max())],
        "background_objects": [float(background.min()), float(background.max())],
    }


def _read_mass(affinity: torch.Tensor, label: torch.Tensor, count: int) -> float:
    """Share of the affinity (objects x HW_query x HW_memory) of frame-2 object tokens on same-object memory
    tokens of frame 0, labels pooled to the token grid; averaged over the objects' reads."""
    grid = int(round(affinity.shape[1] ** 0.5))

    def shares(frame: torch.Tensor) -> torch.Tensor:  # (N+1, tokens): each token's label shares
        clean = torch.where(frame == 255, torch.zeros_like(frame), frame)
        one_hot = F.one_hot(clean, count + 1).permute(2, 0, 1)[None].float()
        return F.adaptive_avg_pool2d(one_hot, (grid, grid))[0].flatten(1)

    memory, query = shares(label[0]), shares(label[1])
    inside = query[1:].sum(0) > 0.5
    if not bool(inside.any()):
        return float("nan")
    per_object = [float(((affinity[k] @ memory.T) * query.T).sum(1)[inside].mean()) for k in range(affinity.shape[0])]
    return float(np.nanmean(per_object))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="model preset of the checkpoint, e.g. stm_r18, munet_r18, aot_t_r18")
    parser.add_argument("checkpoint", help="a voszoo checkpoint (.pt), or 'init' for the untrained quick start")
    parser.add_argument("--size", type=int, nargs="+", default=[96, 192], help="crop sizes (192: whole frames)")
    parser.add_argument("--videos", type=int, default=16, help="first N ToyVOS val videos")
    parser.add_argument("--data", type=Path, default=Path("data/toyvos"), help="ToyVOS root (DAVIS layout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.data / "Annotations" / "480p").is_dir():
        parser.error(f"--data {args.data}: no Annotations/480p folder (generate ToyVOS with voszoo-toyvos first)")
    torch.manual_seed(0)
    model = _build(args.preset, args.checkpoint)
    results: dict[str, Any] = {"preset": args.preset, "checkpoint": args.checkpoint, "sizes": {}}
    if hasattr(model, "id_bank"):
        results["slot_cosine"] = slot_cosines(model.id_bank)
        print(f"{args.preset} {args.checkpoint} identity slots, cosine: {results['slot_cosine']}", flush=True)
    for size in args.size:
        results["sizes"][str(size)] = score(model, args.data, size=size, videos=args.videos)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in results["sizes"][str(size)].items() if k != "crops_pixels")
        print(f"{args.preset} {args.checkpoint} crops {size}: {shown}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
