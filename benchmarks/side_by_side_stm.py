"""STM side by side with the official code (github.com/seoungwugoh/STM): same weights, same frames, same memory
schedule; logit agreement, FPS and peak memory of each.

The official ``STM`` model (``model.py`` of the checkout given as the first argument) is built with a seeded random
initialisation and its state dict is converted into the voszoo preset ``stm`` by
:func:`voszoo.models.convert.load_official_stm` (strict). Both run the same synthetic ToyVOS video (``--size``,
default 480x854; ``--frames``), each through its own inference loop: the official one as ``eval_DAVIS.py``'s
``Run_video`` does it (that file parses arguments and reads DAVIS at import, so its loop is followed here, not
imported: a soft-probability buffer ``Es`` for the whole video; at frame t, memorise frame t-1 with ``Es[t-1]``,
read the kept frames plus frame t-1, ``Es[t] = softmax(logit)``, keep frame t-1 if it is a multiple of
``Mem_every = 5``), and voszoo's :class:`~voszoo.inference.session.InferenceSession` with the preset's memory policy
(``every_n``, n = 5). Each side runs in its own child process. Reported: max |logit difference| per frame, absolute
and relative to the largest |official logit|, argmax agreement, FPS of each and voszoo/official, and peak memory
growth of each (``voszoo.profiling``'s measure).

What the official code needs here, done at run time (the checkout is never edited, nothing of it is copied):

- ``model.py`` and ``helpers.py`` import ``cv2`` and ``matplotlib.pyplot`` at the top but the model never calls
  them: when they are not installed, empty stub modules stand in for them;
- the encoders call ``torchvision.models.resnet50(pretrained=True)``, which downloads ImageNet weights; while the
  model is built, ``torchvision.models.resnet50`` is replaced by a builder with ``weights=None`` (random init, the
  point of this comparison: the weights only have to be the same on both sides);
- ``helpers.ToCuda`` moves tensors to CUDA whenever CUDA is available, so on ``--device cpu`` the child processes
  see no GPU (``CUDA_VISIBLE_DEVICES=""``).

Both sides see the same input tensor: the frame normalised and zero-padded right/bottom to a multiple of 16, as
voszoo's session prepares it; the official model, which normalises inside, gets that tensor de-normalised
(the official ``pad_divide_by`` would pad both sides of a raw [0, 1] frame with black instead). The soft-probability
buffer has N+1 channels (the official DAVIS loader pads it to 11, whose extra channels, at logit log(1e-7), change
the probabilities by less than 1e-6). With ``--davis ROOT`` (the protocol mode) the pipelines themselves are compared
on real DAVIS frames: the official ``DAVIS_MO_Test`` and ``Run_video`` loop against
``InferenceSession(protocol="official")`` (:func:`_official_protocol_side`). docs/side_by_side.md has the details.

    python benchmarks/side_by_side_stm.py /path/to/STM --size 96x160 --frames 4 --json /tmp/stm.json
    python benchmarks/side_by_side_stm.py /path/to/STM --threads 2          # 480x854, 12 frames
    python benchmarks/side_by_side_stm.py /path/to/STM --davis /tmp/davis16     # the protocol mode
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:
    from benchmarks import side_by_side_common as common  # python -m benchmarks.side_by_side_stm
except ImportError:
    import side_by_side_common as common  # python benchmarks/side_by_side_stm.py

MEM_EVERY = 5
"""``Mem_every`` of the official ``eval_DAVIS.py`` (the voszoo preset's ``every_n`` policy has n = 5)."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "side_by_side_stm.json"
DEFAULT_PROTOCOL_OUT = Path(__file__).resolve().parent / "results" / "side_by_side_stm_protocol.json"
REPO = "github.com/seoungwugoh/STM"


@contextlib.contextmanager
def _resnet50_without_download() -> Iterator[None]:
    """While active, ``torchvision.models.resnet50(pretrained=...)`` builds a randomly initialised ResNet-50."""
    import torchvision

    original = torchvision.models.resnet50

    def random_resnet50(*args: Any, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        kwargs.pop("weights", None)
        return original(weights=None)

    torchvision.models.resnet50 = random_resnet50
    try:
        yield
    finally:
        torchvision.models.resnet50 = original


def _official_side(args: argparse.Namespace) -> dict[str, Any]:
    """Build the official model (seeded random init), save its state dict, run Run_video's loop."""
    device = torch.device(args.device)
    stubbed = common.stub_missing_modules(["cv2", "matplotlib", "matplotlib.pyplot"])
    (official_module,) = common.import_from_checkout(args.checkout, ["model"], marker="eval_DAVIS.py", repo=REPO)
    torch.manual_seed(args.seed)
    with _resnet50_without_download():
        model = official_module.STM()
    model = model.to(device).eval()
    torch.save(model.state_dict(), args.workdir / "official_state.pt")
    images, labels = common.load_video(args.workdir / "video.npz")
    num_objects = int(labels.max())
    channels = num_objects + 1
    inputs = common.ModelInput(args.size, stride=16, device=device)
    to_memorize = set(range(0, len(images), MEM_EVERY))
    count = torch.tensor([num_objects])
    state: dict[str, Any] = {}

    @torch.no_grad()
    def step(t: int) -> torch.Tensor | None:
        frame = inputs.raw(images[t])  # the official model normalises inside
        if t == 0:
            probs = torch.zeros(1, channels, len(images), *inputs.padded, device=device)  # Run_video's Es
            reference = inputs.labels(labels)[0, 0].long()
            probs[0, :, 0] = F.one_hot(reference, channels).permute(2, 0, 1).float()
            state.update(probs=probs, previous=frame)
            return None
        probs = state["probs"]
        key, value = model(state["previous"], probs[:, :, t - 1], count)  # memorise frame t-1
        if t - 1 == 0:
            keys, values = key, value
        else:
            keys, values = torch.cat([state["keys"], key], dim=3), torch.cat([state["values"], value], dim=3)
        logits = model(frame, keys, values, count)  # (1, N+1, hp, wp) soft-aggregated logits
        probs[:, :, t] = F.softmax(logits, dim=1)
        if t - 1 in to_memorize:
            state.update(keys=keys, values=values)
        state["previous"] = frame
        inputs.crop(probs[0, :, t].argmax(dim=0)).to(torch.uint8).cpu()  # the frame's label map
        return inputs.crop(logits[0])

    result = common.run_timed(len(images), step, out_dir=args.workdir / "official", warmup=args.warmup, device=device)
    return result | {
        "implementation": f"{REPO} model.STM, eval_DAVIS.py Run_video loop",
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_schedule": {"long_term_gap": MEM_EVERY, "previous_frame": True},
        "stubbed_modules": stubbed,
        "runtime_patches": ["torchvision.models.resnet50(pretrained=True) -> resnet50(weights=None) while building"],
        "model_input": list(inputs.padded),
    }


def _official_protocol_side(args: argparse.Namespace) -> dict[str, Any]:
    """Protocol mode (``--davis``): the official model (seeded random init, state dict saved for the voszoo child)
    on DAVIS 2016 val as ``eval_DAVIS.py -y 16 -s val`` runs it: frames and masks from the checkout's own
    ``dataset.DAVIS_MO_Test(root, resolution='480p', imset='2016/val.txt', single_object=True)`` (frames
    ``np.array(PIL RGB) / 255.``, masks one-hot over K = 11 channels), ``Run_video``'s loop with ``Mem_every=5``
    (``eval_DAVIS.py`` parses arguments at import, so its loop is followed here), ``pred = argmax(Es)``. The model's
    own ``memorize``/``segment`` pad with ``pad_divide_by(16)`` and crop the logits. Annotations must be palette ids
    (DAVIS 2017 files): the loader's single-object test ``(mask > 0.5) * (mask < 255)`` empties 0/255 masks."""
    device = torch.device(args.device)
    common.stub_missing_modules(["cv2", "matplotlib", "matplotlib.pyplot"])
    official_module, dataset_module = common.import_from_checkout(
        args.checkout, ["model", "dataset"], marker="eval_DAVIS.py", repo=REPO
    )
    torch.manual_seed(args.seed)
    with _resnet50_without_download():
        model = official_module.STM()
    model = model.to(device).eval()
    torch.save(model.state_dict(), args.workdir / "official_state.pt")
    dataset = dataset_module.DAVIS_MO_Test(str(args.davis), resolution="480p", imset="2016/val.txt", single_object=True)
    wanted = list(args.sequences)
    start = time.perf_counter()
    model_input = None
    with torch.no_grad():
        for index, video in enumerate(dataset.videos):
            if video not in wanted:
                continue
            frames, masks, num_objects, info = dataset[index]
            frames, masks = frames[None].to(device), masks[None].to(device)  # DataLoader batch of 1
            num_objects = int(num_objects[0])
            num_frames = int(info["num_frames"])
            count = torch.tensor([num_objects])
            to_memorize = [int(i) for i in np.arange(0, num_frames, step=MEM_EVERY)]
            probs = torch.zeros_like(masks)  # Run_video's Es
            probs[:, :, 0] = masks[:, :, 0]
            kept: dict[str, torch.Tensor] = {}  # Run_video's keys, values
            out_dir = args.workdir / "official" / video
            common.save_frame_output(out_dir, 0, logits=None, labels=masks[0, :, 0].argmax(0).to(torch.uint8).cpu())
            for t in range(1, num_frames):
                prev_key, prev_value = model(frames[:, :, t - 1], probs[:, :, t - 1], count)
                if t - 1 == 0:
                    this_keys, this_values = prev_key, prev_value
                else:
                    this_keys = torch.cat([kept["keys"], prev_key], dim=3)
                    this_values = torch.cat([kept["values"], prev_value], dim=3)
                logit = model(frames[:, :, t], this_keys, this_values, count)
                probs[:, :, t] = F.softmax(logit, dim=1)
                if t - 1 in to_memorize:
                    kept.update(keys=this_keys, values=this_values)
                label = probs[0, :, t].argmax(dim=0).to(torch.uint8).cpu()  # np.argmax(Es[0]) of Run_video
                common.save_frame_output(out_dir, t, logits=logit[0, : num_objects + 1], labels=label)
            model_input = [frames.shape[-2] + (-frames.shape[-2]) % 16, frames.shape[-1] + (-frames.shape[-1]) % 16]
    return {
        "implementation": f"{REPO} dataset.DAVIS_MO_Test + model.STM, eval_DAVIS.py Run_video loop (Mem_every=5)",
        "model_input": model_input,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="side_by_side_stm.py",
        description="voszoo's STM next to the official STM code with the same weights and frames: max logit "
        "difference per frame, FPS and peak memory of each. See docs/side_by_side.md.",
    )
    common.add_common_arguments(parser, default_out=DEFAULT_OUT)
    common.add_protocol_arguments(parser, default_out=DEFAULT_PROTOCOL_OUT)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.model is None:
        args.model = "stm"
    return common.side_by_side_main(
        args,
        prog="side_by_side_stm",
        script=Path(__file__).resolve(),
        official_side=_official_side,
        converter="voszoo.models.convert.load_official_stm",
        checkout_marker="eval_DAVIS.py",
        repo=REPO,
        presets=["stm"],
        official_protocol_side=_official_protocol_side,
        same_schedule=lambda official, voszoo: official == {key: voszoo.get(key) for key in official},
    )


if __name__ == "__main__":
    raise SystemExit(main())
