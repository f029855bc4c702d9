"""AOT side by side with the official code (github.com/yoxu515/aot-benchmark, pure-PyTorch path): same weights,
same frames, same memory schedule; logit agreement, FPS and peak memory of each.

For every preset (``--models``, default ``aot_t aot_l r50_aot_l``; official configs ``aott``, ``aotl``,
``r50_aotl``) the official ``AOT`` model is built from the checkout given as the first argument
(``configs.default.DefaultEngineConfig`` + ``networks.models.build_vos_model``) with a seeded random
initialisation, and its state dict is converted into the voszoo preset by
:func:`voszoo.models.convert_aot.load_official_aot` (strict). Both run the same synthetic ToyVOS video
(``--size``, default 480x854; ``--frames``), each through its own inference loop: the official
``AOTInferEngine`` driven as ``networks/managers/evaluator.py`` drives it (``add_reference_frame``, then per frame
``match_propogate_one_frame``, ``decode_current_logits``, softmax, argmax, ``update_memory`` with the label map;
long-term gap ``TEST_LONG_TERM_MEM_GAP``, short-term skip ``TEST_SHORT_TERM_MEM_SKIP``), and voszoo's
:class:`~voszoo.inference.session.InferenceSession` with the preset's memory policy. Each side runs in its own
child process. Reported per preset: max |logit difference| per frame, absolute and relative to the largest |official
logit| (the N+1 channels of the video's objects; the official ones for unused identities are -1e10), argmax
agreement, FPS of each and voszoo/official, and peak memory growth of each (``voszoo.profiling``'s measure).

What the official code needs here, done at run time (the checkout is never edited, nothing of it is copied):

- the official package names ``configs``, ``networks`` and ``utils`` are imported from the checkout (prepended to
  ``sys.path`` in the child); they need only torch, numpy and pillow;
- ``spatial_correlation_sampler`` (a CUDA extension) is not used: the LSTT's short-term attention is built as the
  official ``MultiheadLocalAttentionV2`` with ``enable_corr=False``, its pure-PyTorch unfold branch, by replacing
  the names ``MultiheadLocalAttentionV2``/``V3`` in ``networks.layers.transformer`` before the model is built. The
  checkout's own fallback, ``MultiheadLocalAttentionV3``, cannot run at the current official commit (a shape error
  in ``output = agg_value + agg_bias``: the 2021 fix of commit 2470858 was undone by the DeAOT release a2debb5);
  ``--official-local-attention as-is`` keeps whatever the checkout chooses.

Both sides see the same input tensor: the frame normalised and zero-padded right/bottom to a multiple of 16, as
voszoo's session prepares it with ``protocol="voszoo"`` (the official evaluator instead resizes frames to 16k+1 sides
with OpenCV; that difference of the two pipelines is left out of this comparison on purpose). With ``--davis ROOT``
(the protocol mode) the pipelines themselves are compared on real DAVIS frames: the official ``DAVIS_Test`` +
``MultiRestrictSize`` + ``MultiToTensor`` and the evaluator's loop against ``InferenceSession(protocol="official")``
(:func:`_official_protocol_side`). docs/side_by_side.md has the details.

    python benchmarks/side_by_side_aot.py /path/to/aot-benchmark --size 96x160 --frames 4 --json /tmp/aot.json
    python benchmarks/side_by_side_aot.py /path/to/aot-benchmark --threads 2          # 480x854, 12 frames
    python benchmarks/side_by_side_aot.py /path/to/aot-benchmark --davis /tmp/davis16 --models aot_t   # protocol
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    from benchmarks import side_by_side_common as common  # python -m benchmarks.side_by_side_aot
except ImportError:
    import side_by_side_common as common  # python benchmarks/side_by_side_aot.py

OFFICIAL_CONFIGS = {"aot_t": "aott", "aot_s": "aots", "aot_b": "aotb", "aot_l": "aotl", "r50_aot_l": "r50_aotl"}
"""voszoo preset -> official ``configs/models/<name>.py``."""
DEFAULT_MODELS = ("aot_t", "aot_l", "r50_aot_l")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "side_by_side_aot.json"
DEFAULT_PROTOCOL_OUT = Path(__file__).resolve().parent / "results" / "side_by_side_aot_protocol.json"
REPO = "github.com/yoxu515/aot-benchmark"


def _official_model(args: argparse.Namespace) -> tuple[Any, Any, Any, list[str]]:
    """The official model of ``args.model`` (seeded random init, eval mode, on ``args.device``), its state dict
    saved to ``workdir/official_state.pt``; returns (model, the ``networks.engines`` module, the config, the
    runtime patches applied)."""
    device = torch.device(args.device)
    attention, transformer, config_module, models, engines = common.import_from_checkout(
        args.checkout,
        [
            "networks.layers.attention",
            "networks.layers.transformer",
            "configs.default",
            "networks.models",
            "networks.engines",
        ],
        marker="networks/engines/aot_engine.py",
        repo=REPO,
    )
    patches = []
    if args.official_local_attention == "v2-unfold":
        pure = functools.partial(attention.MultiheadLocalAttentionV2, enable_corr=False)
        transformer.MultiheadLocalAttentionV2 = pure
        transformer.MultiheadLocalAttentionV3 = pure
        patches.append(
            "networks.layers.transformer.MultiheadLocalAttentionV2/V3 -> MultiheadLocalAttentionV2(enable_corr=False)"
        )
    cfg = config_module.DefaultEngineConfig(exp_name="side_by_side", model=OFFICIAL_CONFIGS[args.model])
    torch.manual_seed(args.seed)
    model = models.build_vos_model(cfg.MODEL_VOS, cfg).to(device).eval()
    torch.save(model.state_dict(), args.workdir / "official_state.pt")
    return model, engines, cfg, patches


def _eval_engine(engines: Any, cfg: Any, model: Any, device: torch.device) -> Any:
    """The official evaluation engine (the official evaluator's memory gaps) around the official ``model``."""
    return engines.build_engine(
        cfg.MODEL_ENGINE,
        phase="eval",
        aot_model=model,
        gpu_id=device.index or 0,
        long_term_mem_gap=cfg.TEST_LONG_TERM_MEM_GAP,
        short_term_mem_skip=cfg.TEST_SHORT_TERM_MEM_SKIP,
    ).eval()


def _official_side(args: argparse.Namespace) -> dict[str, Any]:
    """Build the official model (seeded random init), save its state dict, run the official engine."""
    device = torch.device(args.device)
    model, engines, cfg, patches = _official_model(args)
    engine = _eval_engine(engines, cfg, model, device)
    images, labels = common.load_video(args.workdir / "video.npz")
    num_objects = int(labels.max())
    inputs = common.ModelInput(args.size, stride=16, device=device)

    @torch.no_grad()
    def step(t: int) -> torch.Tensor | None:
        frame = inputs.frame(images[t])
        if t == 0:
            engine.add_reference_frame(frame, inputs.labels(labels), frame_step=0, obj_nums=[num_objects])
            return None
        engine.match_propogate_one_frame(frame)
        logits = engine.decode_current_logits(inputs.padded)  # (1, M+1, hp, wp); the frame is the padded input
        label = torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).float()
        engine.update_memory(F.interpolate(label, size=engine.input_size_2d, mode="nearest"))  # MODEL_USE_PREV_PROB
        inputs.crop(label).to(torch.uint8).cpu()  # the label map the evaluator saves
        return inputs.crop(logits[0, : num_objects + 1])

    result = common.run_timed(len(images), step, out_dir=args.workdir / "official", warmup=args.warmup, device=device)
    return result | {
        "implementation": f"{REPO} AOTInferEngine, config {OFFICIAL_CONFIGS[args.model]}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_schedule": {
            "long_term_gap": cfg.TEST_LONG_TERM_MEM_GAP,
            "short_term_skip": cfg.TEST_SHORT_TERM_MEM_SKIP,
        },
        "local_attention": type(model.LSTT.layers[0].short_term_attn).__name__
        + ("(enable_corr=False)" if args.official_local_attention == "v2-unfold" else ""),
        "runtime_patches": patches,
        "use_prev_prob": bool(cfg.MODEL_USE_PREV_PROB),
        "model_input": list(inputs.padded),
    }


def _official_protocol_side(args: argparse.Namespace) -> dict[str, Any]:
    """Protocol mode (``--davis``): the official model (seeded random init, state dict saved for the voszoo child)
    run as ``networks/managers/evaluator.py`` runs it on DAVIS 2016 val, through the checkout's own dataset classes
    and transforms: ``dataloaders.eval_datasets.DAVIS_Test`` (year 2016, 480p) with
    ``Compose([MultiRestrictSize(TEST_MAX_SHORT_EDGE, TEST_MAX_LONG_EDGE, TEST_FLIP, TEST_MULTISCALE,
    MODEL_ALIGN_CORNERS), MultiToTensor()])``, the settings ``tools/eval.py`` gives them by default (no multi-scale:
    short edge unlimited, long edge 480 * 1.3 * 800 / 480), a ``DataLoader`` of batch 1 per sequence; frame 0:
    the label resized ``nearest`` to the image and ``add_reference_frame``; later frames:
    ``match_propogate_one_frame``, ``decode_current_logits((height, width))``, softmax, argmax, and
    ``update_memory`` with the argmax label resized ``nearest`` to ``engine.input_size_2d``. The checkout's
    ``dataloaders`` need OpenCV (``cv2``) importable in this process."""
    from torch.utils.data import DataLoader

    device = torch.device(args.device)
    model, engines, cfg, patches = _official_model(args)
    eval_datasets, video_transforms = common.import_from_checkout(
        args.checkout,
        ["dataloaders.eval_datasets", "dataloaders.video_transforms"],
        marker="networks/engines/aot_engine.py",
        repo=REPO,
    )
    from torchvision import transforms

    cfg.TEST_MULTISCALE = [1.0]  # tools/eval.py defaults for DAVIS (no --ms, no --flip, --max_resolution 480 * 1.3)
    cfg.TEST_FLIP = False
    cfg.TEST_MAX_SHORT_EDGE = None
    cfg.TEST_MAX_LONG_EDGE = 480 * 1.3 * 800.0 / 480.0
    eval_transforms = transforms.Compose(
        [
            video_transforms.MultiRestrictSize(
                cfg.TEST_MAX_SHORT_EDGE,
                cfg.TEST_MAX_LONG_EDGE,
                cfg.TEST_FLIP,
                cfg.TEST_MULTISCALE,
                cfg.MODEL_ALIGN_CORNERS,
            ),
            video_transforms.MultiToTensor(),
        ]
    )
    dataset = eval_datasets.DAVIS_Test(
        split=["val"],
        root=str(args.davis),
        year=2016,
        transform=eval_transforms,
        full_resolution=False,
        result_root=str(args.workdir / "official_first_frames"),
    )
    wanted = list(args.sequences)
    start = time.perf_counter()
    model_input = None
    with torch.no_grad():
        for index in range(len(dataset)):
            seq_dataset = dataset[index]
            if seq_dataset.seq_name not in wanted:
                continue
            engine = _eval_engine(engines, cfg, model, device)
            out_dir = args.workdir / "official" / seq_dataset.seq_name
            loader = DataLoader(seq_dataset, batch_size=1, shuffle=False, num_workers=0)
            for frame_idx, samples in enumerate(loader):
                (sample,) = samples  # one augmentation: no flip, one scale
                image = sample["current_img"].to(device)
                height, width = int(sample["meta"]["height"]), int(sample["meta"]["width"])
                obj_nums = [int(n) for n in sample["meta"]["obj_num"]]
                if frame_idx == 0:
                    given = sample["current_label"].to(device).float()
                    label = F.interpolate(given, size=image.size()[2:], mode="nearest")
                    engine.add_reference_frame(image, label, frame_step=0, obj_nums=obj_nums)
                    model_input = list(image.shape[-2:])
                    # DAVIS_Test copies the (binarised) first-frame label into the results: the original size
                    common.save_frame_output(out_dir, 0, logits=None, labels=given[0, 0].to(torch.uint8).cpu().numpy())
                    continue
                engine.match_propogate_one_frame(image)
                logits = engine.decode_current_logits((height, width))
                prob = torch.softmax(logits, dim=1)
                pred_label = torch.argmax(prob, dim=1, keepdim=True).float()
                engine.update_memory(F.interpolate(pred_label, size=engine.input_size_2d, mode="nearest"))
                common.save_frame_output(
                    out_dir,
                    frame_idx,
                    logits=logits[0, : obj_nums[0] + 1],
                    labels=pred_label[0, 0].to(torch.uint8).cpu().numpy(),
                )
    return {
        "implementation": f"{REPO} DAVIS_Test + MultiRestrictSize + MultiToTensor, AOTInferEngine as in "
        f"networks/managers/evaluator.py, config {OFFICIAL_CONFIGS[args.model]}",
        "model_input": model_input,
        "runtime_patches": patches,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="side_by_side_aot.py",
        description="AOT presets next to the official aot-benchmark code (pure-PyTorch path) with the same weights "
        "and frames: max logit difference per frame, FPS and peak memory of each. See docs/side_by_side.md.",
    )
    common.add_common_arguments(parser, default_out=DEFAULT_OUT)
    common.add_protocol_arguments(parser, default_out=DEFAULT_PROTOCOL_OUT)
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        choices=sorted(OFFICIAL_CONFIGS),
        help=f"voszoo AOT presets (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--official-local-attention",
        choices=("v2-unfold", "as-is"),
        default="v2-unfold",
        help="official short-term attention: MultiheadLocalAttentionV2's pure-PyTorch branch (default) or whatever "
        "the checkout picks (V3 without spatial_correlation_sampler, broken at the current official commit)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return common.side_by_side_main(
        args,
        prog="side_by_side_aot",
        script=Path(__file__).resolve(),
        official_side=_official_side,
        converter="voszoo.models.convert_aot.load_official_aot",
        checkout_marker="networks/engines/aot_engine.py",
        repo=REPO,
        presets=args.models,
        official_protocol_side=_official_protocol_side,
        same_schedule=lambda official, voszoo: official["long_term_gap"] == voszoo["long_term_gap"],
        child_extra=["--official-local-attention", args.official_local_attention],
    )


if __name__ == "__main__":
    raise SystemExit(main())
