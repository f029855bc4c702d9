"""Shared machinery of ``side_by_side_aot.py`` and ``side_by_side_stm.py``: voszoo next to an official implementation.

The official code is never part of voszoo: it is imported at run time from the user's checkout (a path argument,
prepended to ``sys.path`` in a child process), and modules it imports but does not use are stubbed here, never
edited there. Each side runs in its own child process (so that the CPU peak resident set size is that side's alone)
on the same video, stored once by the parent as ``video.npz`` in a work folder; the official child also writes its
randomly initialised state dict there, which the voszoo child converts with voszoo's converter. Every child writes
its per-frame logits (``<side>/logits_<t>.pt``, cropped to the frame, (N+1, H', W') float32) and a ``result.json``
with its timings and peak memory; the parent compares the logits. See docs/side_by_side.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voszoo.profiling import machine_info

__all__ = [
    "DEFAULT_SIZE",
    "TOLERANCE",
    "ModelInput",
    "add_common_arguments",
    "add_protocol_arguments",
    "check_arguments",
    "checkout_commit",
    "child_arguments",
    "compare_logits",
    "compare_video",
    "import_from_checkout",
    "load_video",
    "markdown_table",
    "merge_results",
    "parse_size",
    "protocol_report",
    "protocol_table",
    "run_protocol_presets",
    "record_segment_logits",
    "render_video",
    "report",
    "run_child",
    "run_presets",
    "run_timed",
    "stub_missing_modules",
    "voszoo_preset",
    "write_child_result",
]

DEFAULT_SIZE = (480, 854)
TOLERANCE = 1e-4
"""Largest accepted max |logit difference| relative to the largest |official logit| of a frame."""


# -- inputs ---------------------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (e.g. ``"96x160"``) -> (H, W); argparse ``type``. Each side must be at least 32 pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HxW, e.g. 480x854")
    height, width = int(match.group(1)), int(match.group(2))
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small: each side must be at least 32 pixels")
    return height, width


def render_video(*, size: tuple[int, int], frames: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """ToyVOS video ``index`` of ``seed`` at ``size``: images (T, H, W, 3) uint8 and the first frame's labels (H, W)
    uint8 with object ids 1..N (every ToyVOS object is annotated in the first frame)."""
    from voszoo.data.toy import render_toyvos_video

    video, _ = render_toyvos_video(seed=seed, index=index, frames=frames, size=size)
    labels = video.labels[0].astype(np.uint8)
    ids = [int(v) for v in np.unique(labels) if v != 0]
    if ids != list(range(1, len(ids) + 1)) or not ids:
        raise ValueError(f"ToyVOS video {index} (seed {seed}) has first-frame object ids {ids}, expected 1..N")
    return video.frames, labels


def load_video(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (images, labels) :func:`render_video` returned, from the parent's ``video.npz``."""
    with np.load(path) as data:
        return data["images"], data["labels"]


class ModelInput:
    """The one model input both sides see: a frame normalised as voszoo does and padded right/bottom to the stride
    (:class:`voszoo.inference.preprocess.FrameGeometry`, the tensor :class:`InferenceSession` builds itself).

    ``frame(image)``: (H, W, 3) uint8 -> (1, 3, hp, wp) float32 normalised; ``raw(image)``: the same in [0, 1]
    before normalisation (for official code that normalises inside, STM); ``labels(labels)``: (H, W) ->
    (1, 1, hp, wp) float32 label map (nearest); ``crop(maps)``: (..., hp, wp) -> (..., h, w) without the padding.
    """

    def __init__(self, size: tuple[int, int], *, stride: int, device: torch.device) -> None:
        from voszoo.inference.preprocess import FrameGeometry

        self.geometry = FrameGeometry.create(tuple(size), stride=stride)
        self.device = device
        self._mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    @property
    def padded(self) -> tuple[int, int]:
        return self.geometry.padded

    def frame(self, image: np.ndarray) -> Tensor:
        from voszoo.inference.preprocess import image_to_tensor

        return self.geometry.to_model(image_to_tensor(image, device=self.device))

    def raw(self, image: np.ndarray) -> Tensor:
        return self.frame(image) * self._std + self._mean

    def labels(self, labels: np.ndarray) -> Tensor:
        given = torch.from_numpy(labels.astype(np.float32)).to(self.device)[None, None]
        return self.geometry.to_model(given, mode="nearest")

    def crop(self, maps: Tensor) -> Tensor:
        height, width = self.geometry.resized
        return maps[..., :height, :width]


# -- the official checkout ------------------------------------------------------------------------------------------
def stub_missing_modules(names: Sequence[str]) -> list[str]:
    """Put an empty module into ``sys.modules`` for every name in ``names`` that cannot be imported (dotted names
    become attributes of their stubbed parent); returns the names stubbed. For modules an official file imports
    at the top but whose code the run never calls (e.g. STM's ``cv2`` and ``matplotlib``)."""
    stubbed: list[str] = []
    for name in names:
        if name in sys.modules:
            continue
        parent, _, child = name.rpartition(".")
        if parent not in stubbed:
            try:
                if importlib.util.find_spec(name) is not None:
                    continue
            except ModuleNotFoundError:  # a dotted name whose parent is missing
                pass
        if parent and parent not in sys.modules:
            raise ValueError(f"stub_missing_modules: stub {parent!r} before {name!r}")
        module = types.ModuleType(name)
        module.__doc__ = "empty stub installed by benchmarks/side_by_side_common.py (module not installed)"
        sys.modules[name] = module
        if parent:
            setattr(sys.modules[parent], child, module)
        stubbed.append(name)
    return stubbed


def import_from_checkout(checkout: Path, modules: Sequence[str], *, marker: str, repo: str) -> list[Any]:
    """Import ``modules`` from the official checkout at ``checkout`` (prepended to ``sys.path``).

    ``marker`` is a file every checkout of ``repo`` has; a folder without it raises ``ValueError`` saying what to
    pass, and so does a module that resolves to a file outside the checkout (a name clash with an installed
    package, e.g. another top-level ``utils``).
    """
    checkout = Path(checkout).expanduser().resolve()
    if not (checkout / marker).is_file():
        raise ValueError(
            f"{checkout} is not a checkout of {repo}: it has no {marker} (git clone {repo} and pass its path)"
        )
    sys.path.insert(0, str(checkout))
    imported = []
    for name in modules:
        module = importlib.import_module(name)
        origin = Path(getattr(module, "__file__", "") or "").resolve()
        if checkout not in origin.parents:
            raise ValueError(
                f"module {name!r} was imported from {origin}, not from the checkout {checkout}: another installed "
                "package has the same top-level name; run in an environment without it"
            )
        imported.append(module)
    return imported


def checkout_commit(checkout: Path) -> str | None:
    """The checkout's git commit (``git rev-parse HEAD``, read-only), or None if it is not a git work tree."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


# -- running one side -----------------------------------------------------------------------------------------------
def run_timed(
    num_frames: int,
    step: Callable[[int], Tensor | None],
    *,
    out_dir: Path,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """Run ``step(t)`` for t = 0..num_frames-1 (frame 0: the reference, returns None; later frames return their
    logits (N+1, h, w), already cropped) and time it.

    Each frame's logits are written to ``out_dir/logits_<t>.pt`` after its clock stopped, so they neither count in
    the time nor accumulate in memory. Returns ``fps`` (frames after the reference and ``warmup`` more, over their
    wall time), ``seconds_per_frame`` (every frame after the reference), ``reference_seconds`` and ``peak_mem_mb``
    (growth of the whole video over the memory in use before it, :mod:`voszoo.profiling`'s measure).
    """
    from voszoo.profiling import PeakMemory

    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = []
    with PeakMemory(device) as peak:
        for t in range(num_frames):
            start = time.perf_counter()
            logits = step(t)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            if logits is not None:
                torch.save(logits.detach().float().cpu().clone(), out_dir / f"logits_{t:04d}.pt")
            del logits
    timed = seconds[1 + warmup :]
    return {
        "fps": len(timed) / sum(timed) if timed and sum(timed) > 0 else None,
        "timed_frames": len(timed),
        "seconds_per_frame": [round(s, 5) for s in seconds[1:]],
        "reference_seconds": round(seconds[0], 5),
        "peak_mem_mb": None if peak.peak_mb is None else round(peak.peak_mb, 1),
    }


def run_child(script: Path, arguments: list[str], *, device: torch.device, out: Path) -> dict[str, Any]:
    """Run ``script`` with ``arguments`` in a fresh Python process and return the JSON it wrote to ``out``.

    On the CPU the child sees no GPU (``CUDA_VISIBLE_DEVICES=""``): official STM moves tensors to CUDA whenever
    CUDA is available. A child that fails raises ``RuntimeError`` with the end of its stderr.
    """
    env = dict(os.environ)
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    completed = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, check=False, env=env
    )
    if completed.returncode != 0 or not out.is_file():
        lines = completed.stderr.strip().splitlines() or ["(no output on stderr)"]
        tail = "\n".join(lines[-12:])
        raise RuntimeError(
            f"{script.name} {' '.join(arguments[:2])} exited with {completed.returncode}: {lines[-1]}\n{tail}"
        )
    return json.loads(out.read_text())


# -- comparing ------------------------------------------------------------------------------------------------------
def compare_logits(official: Tensor, voszoo: Tensor) -> dict[str, float]:
    """Agreement of one frame's logits, both (N+1, h, w): ``max_abs_diff``, ``logit_scale`` (max |official|),
    ``rel_diff`` (their ratio) and ``label_agreement`` (fraction of pixels with the same argmax)."""
    if official.shape != voszoo.shape:
        raise ValueError(f"logit shapes differ: official {tuple(official.shape)}, voszoo {tuple(voszoo.shape)}")
    official, voszoo = official.double(), voszoo.double()
    diff = float((official - voszoo).abs().max())
    scale = float(official.abs().max())
    agreement = float((official.argmax(0) == voszoo.argmax(0)).double().mean())
    return {
        "max_abs_diff": diff,
        "logit_scale": scale,
        "rel_diff": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")),
        "label_agreement": agreement,
    }


def compare_video(official_dir: Path, voszoo_dir: Path, num_frames: int) -> list[dict[str, float]]:
    """:func:`compare_logits` of every frame after the reference, from the two children's logit files."""
    rows = []
    for t in range(1, num_frames):
        name = f"logits_{t:04d}.pt"
        official = torch.load(official_dir / name, weights_only=True)
        voszoo = torch.load(voszoo_dir / name, weights_only=True)
        rows.append({"frame": t, **compare_logits(official, voszoo)})
    return rows


# -- reporting ------------------------------------------------------------------------------------------------------
def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _preset_table(columns: list[str], rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], list[str]]) -> str:
    """A Markdown table with a line per preset: ``cells(row)`` for a preset that ran, its error for one that failed."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(
                f"| {row['model']} | failed: {row.get('error', '?').splitlines()[0]} |" + " |" * (len(columns) - 2)
            )
            continue
        lines.append("| " + " | ".join(cells(row)) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per preset: logit agreement, FPS of each side and their ratio, peak memory of each side."""
    columns = ["preset", "max abs diff", "max rel diff", "agree", "FPS official", "FPS voszoo", "ratio"]
    columns += ["peak MB official", "peak MB voszoo"]

    def cells(row: dict[str, Any]) -> list[str]:
        official, voszoo = row["official"], row["voszoo"]
        return [
            row["model"],
            _cell(row["max_abs_diff"], ".2e"),
            _cell(row["max_rel_diff"], ".2e"),
            "yes" if row["agree"] else "NO",
            _cell(official["fps"], ".2f"),
            _cell(voszoo["fps"], ".2f"),
            _cell(row["fps_ratio"], ".2f"),
            _cell(official["peak_mem_mb"], ".0f"),
            _cell(voszoo["peak_mem_mb"], ".0f"),
        ]

    return _preset_table(columns, rows, cells)


def merge_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Merge ``rows`` into the JSON file at ``path`` (``{"results": {preset: row}}``; the latest run of a preset
    wins), written atomically."""
    from voszoo.data.io import atomic_write_bytes

    existing = json.loads(path.read_text()) if path.is_file() else {}
    results = existing.setdefault("results", {})
    for row in rows:
        results[row["model"]] = row
    atomic_write_bytes(path, (json.dumps(existing, indent=2) + "\n").encode())


# -- command line ---------------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: Path) -> None:
    """The arguments both scripts share, plus the hidden ones of their child processes."""
    parser.add_argument("checkout", type=Path, help="path to a local checkout of the official repository")
    parser.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, help="frame size HxW (default 480x854, DAVIS 480p)"
    )
    parser.add_argument("--frames", type=int, default=12, help="frames of the video, reference included (default 12)")
    parser.add_argument("--warmup", type=int, default=1, help="frames after the reference not counted in FPS")
    parser.add_argument("--seed", type=int, default=0, help="ToyVOS seed and weight-initialisation seed")
    parser.add_argument("--video", type=int, default=0, help="ToyVOS video index")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch intra-op threads in both children (default: torch's)")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help=f"largest accepted relative difference (default {TOLERANCE})"
    )
    parser.add_argument("--json", type=Path, default=default_out, help=f"results file (default {default_out})")
    parser.add_argument("--child", choices=("official", "voszoo"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)


def check_arguments(args: argparse.Namespace) -> None:
    """Value checks argparse cannot do; raises ``ValueError`` naming the argument."""
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (a reference frame and a compared one), got {args.frames}")
    if args.warmup < 0 or args.warmup >= args.frames - 1:
        raise ValueError(f"--warmup must be in [0, frames - 2] = [0, {args.frames - 2}], got {args.warmup}")
    if args.tolerance <= 0:
        raise ValueError(f"--tolerance must be > 0, got {args.tolerance}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")


def child_arguments(
    args: argparse.Namespace, *, side: str, model: str, workdir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one child process: the parent's settings, the side, the preset and ``extra`` (the
    script's own options)."""
    arguments = ["--child", side, "--model", model, "--workdir", str(workdir), str(args.checkout)]
    arguments += ["--size", f"{args.size[0]}x{args.size[1]}", "--frames", str(args.frames)]
    arguments += ["--warmup", str(args.warmup), "--seed", str(args.seed), "--video", str(args.video)]
    arguments += ["--device", args.device]
    if args.threads is not None:
        arguments += ["--threads", str(args.threads)]
    return arguments + list(extra)


def run_presets(
    *, script: Path, args: argparse.Namespace, presets: Sequence[str], child_extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The parent's work: render the video once, then for every preset run the official child and the voszoo child
    (``script --child ...`` plus ``child_extra``) and compare their logits. Returns one row per preset
    (``status`` ``"ok"`` or ``"failed"`` with ``error``)."""
    import tempfile

    from tqdm.auto import tqdm

    device = torch.device(args.device)
    images, labels = render_video(size=args.size, frames=args.frames, seed=args.seed, index=args.video)
    num_objects = int(labels.max())
    rows = []
    with tempfile.TemporaryDirectory(prefix="voszoo-side-by-side-") as tmp:
        np.savez(Path(tmp) / "video.npz", images=images, labels=labels)
        for model in tqdm(presets, desc="side by side", unit="preset", disable=None):
            workdir = Path(tmp) / model
            workdir.mkdir()
            (workdir / "video.npz").symlink_to(Path(tmp) / "video.npz")
            row: dict[str, Any] = {"model": model, "size": list(args.size), "frames": args.frames}
            row |= {"warmup": args.warmup, "objects": num_objects, "seed": args.seed, "video": args.video}
            try:
                sides = {}
                for side in ("official", "voszoo"):  # official first: it writes the weights voszoo converts
                    arguments = child_arguments(args, side=side, model=model, workdir=workdir, extra=child_extra)
                    sides[side] = run_child(script, arguments, device=device, out=workdir / side / "result.json")
                per_frame = compare_video(workdir / "official", workdir / "voszoo", args.frames)
            except (RuntimeError, ValueError, OSError) as error:
                rows.append(row | {"status": "failed", "error": str(error)})
                continue
            official, voszoo = sides["official"], sides["voszoo"]
            max_rel = max(r["rel_diff"] for r in per_frame)
            ratio = voszoo["fps"] / official["fps"] if official["fps"] and voszoo["fps"] else None
            row |= {
                "status": "ok",
                "checkout": str(Path(args.checkout).expanduser().resolve()),
                "commit": checkout_commit(args.checkout),
                "model_input": official["model_input"],
                "max_abs_diff": max(r["max_abs_diff"] for r in per_frame),
                "max_rel_diff": max_rel,
                "min_label_agreement": min(r["label_agreement"] for r in per_frame),
                "tolerance": args.tolerance,
                "agree": max_rel <= args.tolerance,
                "fps_ratio": ratio,
                "per_frame": per_frame,
                "official": official,
                "voszoo": voszoo,
                "machine": machine_info(device),
            }
            rows.append(row)
    return rows


def report(
    rows: list[dict[str, Any]],
    *,
    out: Path,
    prog: str,
    table: Callable[[list[dict[str, Any]]], str] | None = None,
    disagreement: Callable[[dict[str, Any]], str] | None = None,
) -> int:
    """Print the table (``table``, default :func:`markdown_table`), merge the rows into ``out`` and return the exit
    status: 1 if a preset failed or does not agree (``disagreement(row)`` says how, on stderr), else 0."""
    print((table or markdown_table)(rows))
    merge_results(out, rows)
    print(f"written {out}")
    status = 0
    for row in rows:
        if row["status"] != "ok":
            print(f"{prog}: {row['model']} failed: {row['error']}", file=sys.stderr)
            status = 1
        elif not row["agree"]:
            say = disagreement or _logit_disagreement
            print(f"{prog}: {row['model']}: {say(row)}; see {out}", file=sys.stderr)
            status = 1
    return status


def _logit_disagreement(row: dict[str, Any]) -> str:
    diff, tolerance = row["max_rel_diff"], row["tolerance"]
    return f"logits differ by {diff:.2e} relative (tolerance {tolerance:.0e}), each frame in per_frame"


def voszoo_preset(name: str) -> Any:
    """The composed config of voszoo preset ``name`` with every ``weights`` key null: the encoders start random
    (nothing is downloaded) and are overwritten by the converted official state dict anyway."""
    from voszoo.models.registry import random_weights_config

    return random_weights_config(name)


def record_segment_logits(model: torch.nn.Module) -> dict[str, Tensor]:
    """Make ``model.segment`` (on this instance only) keep a reference to its latest logits (B, N+1, hp, wp) under
    ``"logits"`` of the returned dict; the session that calls it is unchanged (no copy is made)."""
    holder: dict[str, Tensor] = {}
    segment = model.segment

    def recording_segment(memory: Any, feats: Any) -> Tensor:
        holder["logits"] = logits = segment(memory, feats)
        return logits

    model.segment = recording_segment  # type: ignore[method-assign]
    return holder


def write_child_result(workdir: Path, side: str, result: dict[str, Any]) -> None:
    """The child's ``result.json`` (``workdir/<side>/result.json``), read by :func:`run_child`."""
    from voszoo.data.io import atomic_write_bytes

    atomic_write_bytes(workdir / side / "result.json", (json.dumps(result, indent=2) + "\n").encode())


def voszoo_side(args: argparse.Namespace, *, converter: str) -> dict[str, Any]:
    """The voszoo child of either script: build preset ``args.model``, load the official state dict the official
    child saved through ``converter`` (``"module.function"``, called as ``function(model, path, strict=True)``;
    imported here, so the official child never imports it), run the video through ``InferenceSession`` with the
    preset's memory policy and time it (:func:`run_timed`)."""
    from voszoo.inference.session import InferenceSession
    from voszoo.memory import EveryN
    from voszoo.models.registry import build_memory_policy, build_model

    device = torch.device(args.device)
    cfg = voszoo_preset(args.model)
    model = build_model(cfg)
    module, function = converter.rsplit(".", 1)
    conversion = getattr(importlib.import_module(module), function)(
        model, args.workdir / "official_state.pt", strict=True
    )
    model = model.to(device).eval()
    holder = record_segment_logits(model)
    session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg), device=device)
    images, labels = load_video(args.workdir / "video.npz")
    inputs = ModelInput(args.size, stride=model.stride, device=device)

    def step(t: int) -> Tensor | None:
        session.step(images[t], labels if t == 0 else None)
        return None if t == 0 else inputs.crop(holder.pop("logits")[0])

    result = run_timed(len(images), step, out_dir=args.workdir / "voszoo", warmup=args.warmup, device=device)
    policy = build_memory_policy(cfg)
    return result | {
        "implementation": f"voszoo {args.model} through InferenceSession",
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_schedule": {
            "policy": repr(policy),
            "long_term_gap": policy.n if isinstance(policy, EveryN) else None,
            "previous_frame": policy.reads_short_term,
        },
        "conversion": str(conversion).splitlines()[0].split(": ", 1)[-1],  # without the temporary path
        "model_input": list(inputs.padded),
    }


def side_by_side_main(
    args: argparse.Namespace,
    *,
    prog: str,
    script: Path,
    official_side: Callable[[argparse.Namespace], dict[str, Any]],
    converter: str,
    checkout_marker: str,
    repo: str,
    presets: Sequence[str],
    same_schedule: Callable[[dict[str, Any], dict[str, Any]], bool],
    child_extra: Sequence[str] = (),
    official_protocol_side: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> int:
    """The ``main`` of both scripts after parsing: run one side (``--child``; the voszoo side is :func:`voszoo_side`
    with ``converter``) or the whole comparison, set
    ``same_memory_schedule`` on each row with ``same_schedule(official, voszoo)`` and report. Exit status as
    :func:`report`, 2 on bad arguments or a folder without ``checkout_marker``. With ``--davis`` (the protocol
    mode) the children are ``official_protocol_side`` and :func:`voszoo_protocol_side`, the parent
    :func:`run_protocol_presets` and :func:`protocol_report`."""
    protocol_mode = getattr(args, "davis", None) is not None
    try:
        check_arguments(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.child is not None:  # one side, in its own process (see run_presets)
            if args.child == "official":
                result = (official_protocol_side if protocol_mode else official_side)(args)
            elif protocol_mode:
                result = voszoo_protocol_side(args, converter=converter)
            else:
                result = voszoo_side(args, converter=converter)
            write_child_result(args.workdir, args.child, result)
            return 0
        if not (Path(args.checkout).expanduser() / checkout_marker).is_file():
            raise ValueError(f"{args.checkout} is not a checkout of {repo} (no {checkout_marker})")
        if protocol_mode:
            if official_protocol_side is None:
                raise ValueError("this script has no protocol mode (--davis)")
            if not (Path(args.davis) / "JPEGImages" / "480p").is_dir():
                raise ValueError(f"--davis {args.davis} has no JPEGImages/480p folder (a DAVIS-layout root)")
            rows = run_protocol_presets(script=script, args=args, presets=presets, child_extra=child_extra)
            return protocol_report(rows, out=args.protocol_json, prog=prog)
        rows = run_presets(script=script, args=args, presets=presets, child_extra=child_extra)
    except ValueError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    for row in rows:
        if row["status"] == "ok":
            row["same_memory_schedule"] = same_schedule(
                row["official"]["memory_schedule"], row["voszoo"]["memory_schedule"]
            )
    return report(rows, out=args.json, prog=prog)


# -- protocol mode (--davis): the official evaluator's own dataset transforms vs voszoo's protocol=official ---------
def add_protocol_arguments(parser: argparse.ArgumentParser, *, default_out: Path) -> None:
    """``--davis ROOT`` switches a script to the protocol mode: real DAVIS frames through the official code's own
    dataset classes and transforms on one side and ``InferenceSession(protocol="official")`` on the other."""
    parser.add_argument(
        "--davis",
        type=Path,
        help="DAVIS-layout root (JPEGImages/480p, Annotations/480p with palette ids, ImageSets/2016/val.txt): run "
        "the official evaluator's input protocol on its frames instead of the synthetic video (every frame of each "
        "sequence folder is used: give it folders holding the first few frames)",
    )
    parser.add_argument("--sequences", nargs="+", help="sequences of --davis (default: its ImageSets/2016/val.txt)")
    parser.add_argument(
        "--protocol-json", type=Path, default=default_out, help=f"results of --davis (default {default_out})"
    )


def protocol_sequences(args: argparse.Namespace) -> list[str]:
    """``--sequences``, or every sequence of ``--davis``'s 2016 val split."""
    if args.sequences:
        return list(args.sequences)
    return (Path(args.davis) / "ImageSets" / "2016" / "val.txt").read_text().split()


def protocol_child_arguments(args: argparse.Namespace) -> list[str]:
    """The protocol-mode options a child process needs."""
    return ["--davis", str(args.davis), "--sequences", *protocol_sequences(args)]


def save_frame_output(out_dir: Path, t: int, *, logits: Tensor | None, labels: np.ndarray) -> None:
    """``out_dir/logits_<t>.pt`` ((N+1, H, W) float32, if given) and ``out_dir/labels_<t>.png`` (voszoo's palette
    PNG writer on both sides, so that equal label maps give equal files)."""
    from voszoo.data.io import write_labels

    out_dir.mkdir(parents=True, exist_ok=True)
    if logits is not None:
        torch.save(logits.detach().float().cpu().clone(), out_dir / f"logits_{t:04d}.pt")
    write_labels(out_dir / f"labels_{t:04d}.png", np.asarray(labels))


def voszoo_protocol_side(args: argparse.Namespace, *, converter: str) -> dict[str, Any]:
    """The voszoo child of the protocol mode: the converted official weights through ``InferenceSession`` with
    ``protocol="official"`` (logits in the protocol's score space, i.e. at the frame size, and label PNGs, under
    ``voszoo/<sequence>/``) and with ``protocol="voszoo"`` (label PNGs under ``voszoo_pad/<sequence>/``), frames read
    by voszoo's DAVIS 2016 reader."""
    from voszoo.data.davis import DAVIS
    from voszoo.inference.session import InferenceSession
    from voszoo.models.registry import build_memory_policy, build_model

    device = torch.device(args.device)
    cfg = voszoo_preset(args.model)
    model = build_model(cfg)
    module, function = converter.rsplit(".", 1)
    getattr(importlib.import_module(module), function)(model, args.workdir / "official_state.pt", strict=True)
    model = model.to(device).eval()
    holder = record_segment_logits(model)
    davis = DAVIS(args.davis, year="2016", split="val")
    seconds: dict[str, float] = {}
    model_input = None
    for protocol, folder in (("official", "voszoo"), ("voszoo", "voszoo_pad")):
        start = time.perf_counter()
        for name in args.sequences:
            video = davis.video(name)
            session = InferenceSession(
                model, policy_factory=lambda: build_memory_policy(cfg), device=device, protocol=protocol
            )
            for t in range(video.num_frames):
                result = session.step(video.frame(t), video.labels(0) if t == 0 else None)
                logits = None
                if t > 0 and protocol == "official":
                    logits = session.transform.scores(holder.pop("logits").float())[0]
                save_frame_output(args.workdir / folder / name, t, logits=logits, labels=result.labels)
            if protocol == "official":
                model_input = list(session.transform.model_size)
        seconds[protocol] = round(time.perf_counter() - start, 2)
    return {
        "implementation": f"voszoo {args.model} through InferenceSession(protocol='official' | 'voszoo')",
        "model_input": model_input,
        "seconds": seconds,
    }


def _pngs_identical(first: Path, second: Path) -> dict[str, bool]:
    from PIL import Image

    same_bytes = first.read_bytes() == second.read_bytes()
    same_pixels = bool(np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second))))
    return {"png_identical": same_bytes, "labels_identical": same_pixels}


def _label_agreement(first: Path, second: Path) -> float:
    """Mean fraction of pixels with the same label in the two folders' PNGs of every frame after the first."""
    from PIL import Image

    names = sorted(path.name for path in first.glob("labels_*.png"))[1:]
    return float(
        np.mean([(np.asarray(Image.open(first / n)) == np.asarray(Image.open(second / n))).mean() for n in names])
    )


def _jf(davis_root: Path, name: str, pred_dir: Path) -> dict[str, float]:
    """J and F means of one sequence's predicted PNGs (DAVIS protocol: first and last frame not scored)."""
    from PIL import Image

    from voszoo.data.davis import DAVIS
    from voszoo.evaluation.davis import evaluate_sequence

    video = DAVIS(davis_root, year="2016", split="val").video(name)
    gt = np.stack([video.labels(t) for t in range(video.num_frames)])
    pred = np.stack([np.asarray(Image.open(pred_dir / f"labels_{t:04d}.png")) for t in range(video.num_frames)])
    result = evaluate_sequence(gt, pred, name=name, davis2016=True)
    return {"J": float(result.j.mean()), "F": float(result.f.mean())}


def run_protocol_presets(
    *, script: Path, args: argparse.Namespace, presets: Sequence[str], child_extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The parent's work in the protocol mode: per preset, the official child then the voszoo child on the
    ``--davis`` sequences; per frame after the first: the logits' max abs and relative difference and whether the
    label PNGs are identical; per sequence and protocol: J and F (random weights: these compare the protocols, they
    say nothing of the method)."""
    import tempfile

    device = torch.device(args.device)
    sequences = protocol_sequences(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="voszoo-protocol-") as tmp:
        for model in presets:
            workdir = Path(tmp) / model
            workdir.mkdir()
            row: dict[str, Any] = {"model": model, "davis": str(Path(args.davis).resolve()), "sequences": sequences}
            row |= {"seed": args.seed, "tolerance": args.tolerance}
            extra = [*protocol_child_arguments(args), *child_extra]
            try:
                sides = {}
                for side in ("official", "voszoo"):
                    arguments = child_arguments(args, side=side, model=model, workdir=workdir, extra=extra)
                    sides[side] = run_child(script, arguments, device=device, out=workdir / side / "result.json")
                per_sequence = {}
                for name in sequences:
                    official_dir, voszoo_dir = workdir / "official" / name, workdir / "voszoo" / name
                    frames = sorted(official_dir.glob("labels_*.png"))
                    per_frame = []
                    for path in frames[1:]:
                        t = int(path.stem.split("_")[1])
                        logits = f"logits_{t:04d}.pt"
                        agreement = compare_logits(
                            torch.load(official_dir / logits, weights_only=True),
                            torch.load(voszoo_dir / logits, weights_only=True),
                        )
                        per_frame.append({"frame": t, **agreement, **_pngs_identical(path, voszoo_dir / path.name)})
                    per_sequence[name] = {
                        "frames": len(frames),
                        "protocols_label_agreement": _label_agreement(voszoo_dir, workdir / "voszoo_pad" / name),
                        "per_frame": per_frame,
                        "jf": {
                            "official": _jf(args.davis, name, official_dir),
                            "voszoo_official": _jf(args.davis, name, voszoo_dir),
                            "voszoo_voszoo": _jf(args.davis, name, workdir / "voszoo_pad" / name),
                        },
                    }
            except (RuntimeError, ValueError, OSError) as error:
                rows.append(row | {"status": "failed", "error": str(error)})
                continue
            frames = [f for s in per_sequence.values() for f in s["per_frame"]]
            max_rel = max(f["rel_diff"] for f in frames)
            all_png = all(f["png_identical"] for f in frames)
            jf = {
                key: {
                    metric: float(np.mean([s["jf"][key][metric] for s in per_sequence.values()]))
                    for metric in ("J", "F")
                }
                for key in ("official", "voszoo_official", "voszoo_voszoo")
            }
            for value in jf.values():
                value["J&F"] = (value["J"] + value["F"]) / 2
            row |= {
                "status": "ok",
                "checkout": str(Path(args.checkout).expanduser().resolve()),
                "commit": checkout_commit(args.checkout),
                "protocols_label_agreement": float(
                    np.mean([s["protocols_label_agreement"] for s in per_sequence.values()])
                ),
                "official_model_input": sides["official"]["model_input"],
                "voszoo_model_input": sides["voszoo"]["model_input"],
                "max_abs_diff": max(f["max_abs_diff"] for f in frames),
                "max_rel_diff": max_rel,
                "all_png_identical": all_png,
                "agree": max_rel <= args.tolerance and all_png,
                "jf_mean": jf,
                "per_sequence": per_sequence,
                "official": sides["official"],
                "voszoo": sides["voszoo"],
                "machine": machine_info(device),
            }
            rows.append(row)
    return rows


def protocol_table(rows: list[dict[str, Any]]) -> str:
    """One line per preset: input sizes, logit agreement, PNG identity, J&F of each protocol."""
    columns = ["preset", "official input", "voszoo input", "frames", "max abs diff", "max rel diff", "PNGs identical"]
    columns += ["J&F official", "J&F voszoo official", "J&F voszoo voszoo", "labels equal official/voszoo protocol"]

    def cells(row: dict[str, Any]) -> list[str]:
        frames = sum(len(s["per_frame"]) for s in row["per_sequence"].values())
        identical = sum(f["png_identical"] for s in row["per_sequence"].values() for f in s["per_frame"])
        return [
            row["model"],
            "x".join(map(str, row["official_model_input"])),
            "x".join(map(str, row["voszoo_model_input"])),
            str(frames),
            _cell(row["max_abs_diff"], ".2e"),
            _cell(row["max_rel_diff"], ".2e"),
            f"{identical}/{frames}",
            *(f"{row['jf_mean'][key]['J&F']:.4f}" for key in ("official", "voszoo_official", "voszoo_voszoo")),
            f"{row['protocols_label_agreement']:.4f}",
        ]

    return _preset_table(columns, rows, cells)


def protocol_report(rows: list[dict[str, Any]], *, out: Path, prog: str) -> int:
    """Print :func:`protocol_table`, merge the rows into ``out``; exit status 1 if a preset failed, its logits
    differ by more than the tolerance or a PNG differs."""

    def disagreement(row: dict[str, Any]) -> str:
        return (
            f"max relative logit difference {row['max_rel_diff']:.2e} (tolerance {row['tolerance']:.0e}), "
            f"PNGs identical: {row['all_png_identical']}"
        )

    return report(rows, out=out, prog=prog, table=protocol_table, disagreement=disagreement)
