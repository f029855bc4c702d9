"""Cost of one model: parameters, multiply-accumulates per frame, inference speed and peak memory.

:func:`profile_model` measures a built :class:`~voszoo.models.base.VOSModel` on synthetic frames (the numbers do not
depend on the weights, so a randomly initialised model costs the same as a trained one):

- ``params``: the parameters of the model, the training criterion's excluded (it does not run at inference).
- ``macs_per_frame``: multiply-accumulates of one inference step: ``encode`` + ``segment`` + ``memorize`` of one frame
  read against a one-frame memory (the reference frame, memorised before counting), at the size the model really
  runs, i.e. ``size`` zero-padded up to a multiple of ``model.stride`` as the inference session does (480x854 ->
  480x864 at stride 16 or 32). Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, MACs = FLOPs / 2:
  convolutions (transposed too), linear layers and every matrix product (``mm``, ``bmm``, ``einsum``, ``@``) and
  scaled-dot-product attention (the CPU kernel is registered here, torch counts only the GPU kernels). Not counted:
  element-wise ops, softmax, normalisation, pooling, interpolation, ``grid_sample`` and indexing, and the
  session's pre/post-processing (resize, pad, un-pad, argmax). A longer memory costs more in the memory read.
- ``fps``: frames per second of a short :class:`~voszoo.inference.session.InferenceSession` (``frames`` frames of
  ``size``, the first one the reference with ``num_objects`` masks): the frames after the reference, over the wall
  time they took, pre/post-processing included. A short session includes one-off warm-up costs, so this is a
  conservative number.
- ``peak_mem_mb``: the peak memory growth of that session over what was in use just before it (the weights and the
  process's own footprint are not included): on CUDA ``torch.cuda.max_memory_allocated`` minus the allocated memory
  before; on CPU the peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
  resident size before; ``None`` where neither can be measured. On CPU run it in a fresh process (``python -m
  voszoo.profiling``, as voszoo-bench does): memory the allocator kept from earlier work hides growth.
- ``device``: where it ran, e.g. ``"cpu (2 threads)"`` or ``"cuda (NVIDIA A100)"``.

    python -m voszoo.profiling stm_r18                                   # a preset
    python -m voszoo.profiling --config outputs/train/stm/.../.hydra/config.yaml --json profile.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from voszoo.errors import add_verbose_flag

__all__ = [
    "PeakMemory",
    "count_macs",
    "count_params",
    "cpu_model_name",
    "describe_device",
    "machine_info",
    "mac_formulas",
    "main",
    "profile_model",
]

logger = logging.getLogger("voszoo.profiling")

_MIB = 1024.0 * 1024.0


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` without those of its ``criterion`` submodule (training only)."""
    criterion = getattr(model, "criterion", None)
    skip = {id(p) for p in criterion.parameters()} if isinstance(criterion, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args: Any, out_shape=None, **kw
) -> int:
    """FLOPs of ``convolution_backward``: each gradient it computes (input, weight; ``output_mask[:2]``) takes the
    forward's multiplications once more. torch's own formula ignores ``groups`` in the weight gradient, which counts
    a depthwise convolution's weight gradient ``groups`` times over (a 1024-channel 5x5 depthwise conv: 1000x)."""
    from torch.utils.flop_counter import conv_flop_count

    output_mask = args[2] if len(args) > 2 else kw.get("output_mask", (True, True, True))  # after padding, groups
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flop_counter() -> Any:
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_cpu_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def mac_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas of the ops :func:`count_macs` counts, by op packet (e.g. ``torch.ops.aten.convolution``): each
    takes the op's arguments (tensors) and ``out_val=`` its output, and returns FLOPs (= 2 x MACs). The same table
    as ``count_macs``'s counter, for an observer that times and counts op by op (``benchmarks/bench_roofline.py``)."""
    return dict(_flop_counter().flop_registry)


def _synthetic_labels(height: int, width: int, num_objects: int) -> np.ndarray:
    """(H, W) uint8: ``num_objects`` vertical bands (ids 1..N) in the middle half of the rows, background around."""
    labels = np.zeros((height, width), dtype=np.uint8)
    bands = np.array_split(np.arange(width // 8, width - width // 8), num_objects)
    for obj, columns in enumerate(bands, start=1):
        labels[height // 4 : height - height // 4, columns] = obj
    return labels


def count_macs(
    model: nn.Module, *, size: tuple[int, int] = (480, 854), num_objects: int = 2, device: Any = "cpu"
) -> int:
    """Multiply-accumulates of one inference step of ``model`` on a frame of ``size`` (H, W), padded to the model
    stride: ``encode`` + ``segment`` + ``memorize`` against a one-frame memory (see the module docstring)."""
    from voszoo.inference.preprocess import FrameGeometry
    from voszoo.memory import KeepAll
    from voszoo.models.base import labels_to_probs

    height, width = FrameGeometry.create(tuple(size), stride=model.stride).padded
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 1, 3, height, width, generator=generator).to(device)
    labels = torch.from_numpy(_synthetic_labels(height, width, num_objects)).long()[None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            memory = model.new_memory(KeepAll(), num_objects=num_objects)
            model.memorize(memory, model.encode(frames[0]), labels_to_probs(labels, num_objects), 0)
            counter = _flop_counter()
            with counter:
                feats = model.encode(frames[1])
                logits = model.segment(memory, feats)
                model.memorize(memory, feats, torch.softmax(logits.float(), dim=1), 1)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _proc_status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory growth (MiB) over the level at :meth:`start`: CUDA allocator statistics, or on the CPU the peak
    resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size at start.

    :meth:`read` may be called after every frame (a running peak). As a context manager it starts on entry and sets
    :attr:`peak_mb` on exit. Where the CPU peak cannot be reset, ``start(strict=True)`` raises ValueError and
    ``start()`` logs a warning and measures the process-lifetime peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self._base: int | None = None

    def start(self, *, strict: bool = False) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _proc_status_kib("VmRSS")
        resettable = self._base is not None and _reset_peak_rss()
        if not resettable:
            if strict:
                raise ValueError(
                    "cannot measure the CPU peak memory: /proc/self/status or /proc/self/clear_refs missing"
                )
            if self._base is not None:
                logger.warning("cannot reset the peak RSS (/proc/self/clear_refs): using the process-lifetime peak")
        return self

    def read(self) -> float | None:
        """Peak growth since :meth:`start` in MiB (None on a CPU without ``/proc/self/status``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / _MIB
        if self._base is None:
            return None
        peak = _proc_status_kib("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return max(peak - self._base, 0) / 1024.0

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = self.read()


def describe_device(device: torch.device | str) -> str:
    """``"cpu (2 threads)"`` or ``"cuda (<GPU name>)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def cpu_model_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    if match:
        return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a benchmark's numbers come from, for its JSON: device, CPU model, cores, threads, torch, platform, and
    the 1-minute load average (other processes sharing the CPU slow every number)."""
    return {
        "device": describe_device(device),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def profile_model(
    model: nn.Module,
    *,
    size: tuple[int, int] = (480, 854),
    frames: int = 3,
    num_objects: int = 2,
    device: torch.device | str = "cpu",
    policy_factory: Callable[[], Any] | None = None,
    amp: str | None = None,
    compile_modules: bool = False,
    channels_last: bool = True,
    flush_denormal: bool | str = "auto",
) -> dict[str, Any]:
    """Parameters, MACs per frame, inference FPS and peak memory of ``model`` (a VOSModel) at ``size`` (H, W).

    ``frames`` (>= 2) frames are run through an inference session with ``policy_factory`` memory (default: keep
    every frame); the first carries ``num_objects`` reference masks. ``amp``, ``compile_modules``, ``channels_last``
    and ``flush_denormal`` are the session's fast paths (:class:`~voszoo.inference.session.InferenceSession`; with
    ``compile_modules`` the first, untimed frame also pays the compilation). Returns ``{"params": int,
    "macs_per_frame": int, "fps": float, "peak_mem_mb": float | None, "device": str, "fast_paths": dict}``; the
    module docstring says what each one counts.
    The session runs first, so that memory freed by it cannot hide growth from the MAC count and vice versa.
    """
    from voszoo.inference.session import InferenceSession
    from voszoo.memory import KeepAll

    if frames < 2:
        raise ValueError(f"profile_model: frames must be >= 2 (a reference frame and a timed one), got {frames}")
    if num_objects < 1:
        raise ValueError(f"profile_model: num_objects must be >= 1, got {num_objects}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"profile_model: size must be (height, width) in pixels, got {size}")
    device = torch.device(device)
    model = model.to(device)
    height, width = (int(s) for s in size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(frames)]
    labels = _synthetic_labels(height, width, num_objects)
    session = InferenceSession(
        model,
        policy_factory=policy_factory or KeepAll,
        device=device,
        amp=amp,
        compile_modules=compile_modules,
        channels_last=channels_last,
        flush_denormal=flush_denormal,
    )
    fast_paths = {"amp": amp, "compile": bool(compile_modules), "channels_last": bool(channels_last)}
    fast_paths["flush_denormal"] = session.flush_denormal
    with PeakMemory(device) as memory:
        session.step(images[0], labels)
        start = time.perf_counter()
        for image in images[1:]:
            session.step(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    del session
    return {
        "params": count_params(model),
        "macs_per_frame": count_macs(model, size=(height, width), num_objects=num_objects, device=device),
        "fps": (frames - 1) / seconds,
        "peak_mem_mb": memory.peak_mb,
        "device": describe_device(device),
        "fast_paths": fast_paths,
    }


def _load_model_config(args: argparse.Namespace) -> Any:
    import yaml
    from omegaconf import OmegaConf

    from voszoo.models.registry import compose_model_config

    if args.config is None:
        return compose_model_config(args.model, args.override, config_dir=args.config_dir or None)
    path = Path(args.config)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    cfg = OmegaConf.load(path)
    node = cfg.model if "model" in cfg and "_target_" not in cfg else cfg
    if "_target_" not in node:
        raise ValueError(f"--config {path}: neither a model node nor a run config with a 'model' node (_target_)")
    for override in args.override:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"--override {override!r} must have the form key=value")
        OmegaConf.update(node, key, yaml.safe_load(value), merge=True)
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voszoo.profiling",
        description="Parameters, MACs per frame (encode + segment + memorize, one-frame memory), inference FPS and "
        "peak memory growth of a voszoo model on synthetic frames. Weights do not change these numbers.",
    )
    parser.add_argument("model", nargs="?", help="model preset name (see voszoo.list_models()); or use --config")
    parser.add_argument("--config", help="YAML file: a run's .hydra/config.yaml (its 'model' node) or a model node")
    parser.add_argument("--override", action="append", default=[], help="model config override key=value (repeat)")
    parser.add_argument(
        "--config-dir", action="append", default=[], help="a folder of your own presets (<dir>/model/<name>.yaml)"
    )
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"), help="frame size")
    parser.add_argument("--frames", type=int, default=3, help="frames of the timed session (first = reference)")
    parser.add_argument("--objects", type=int, default=2, help="objects in the reference frame")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--memory-policy", action="store_true", help="use the preset's memory policy (default: all)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the hot modules (eager fallback)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep every tensor NCHW")
    parser.add_argument(
        "--flush-denormal", choices=("auto", "on", "off"), default="auto", help="flush subnormals (auto: on CPU)"
    )
    parser.add_argument("--json", help="also write the result to this JSON file")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if (args.model is None) == (args.config is None):
        parser.error("give either a model preset name or --config, not both")
    from voszoo.device import resolve_device
    from voszoo.errors import request_full_errors, run_command
    from voszoo.models.registry import build_memory_policy, build_model, without_weights

    if args.verbose:
        request_full_errors()

    def measure() -> int:
        node = without_weights(_load_model_config(args))  # costs do not depend on the weights: load none
        policy = (lambda: build_memory_policy(node)) if args.memory_policy else None
        result = profile_model(
            build_model(node),
            size=tuple(args.size),
            frames=args.frames,
            num_objects=args.objects,
            device=resolve_device(args.device, key="--device"),
            policy_factory=policy,
            amp=None if args.amp == "none" else args.amp,
            compile_modules=args.compile,
            channels_last=not args.no_channels_last,
            flush_denormal=args.flush_denormal,
        )
        _write(result, model=str(node.get("name", "<unnamed>")), args=args)
        return 0

    # Every input of this command comes from the user: a ValueError here is a bad argument, not a bug.
    return run_command(measure, prog="voszoo-profile", also=(ValueError,))


def _write(result: dict, *, model: str, args: argparse.Namespace) -> None:
    """Print the measurements as JSON (and write them to ``--json``)."""
    result["model"] = model
    result["size"] = list(args.size)
    text = json.dumps(result, indent=2)
    if args.json:
        from voszoo.data.io import atomic_write_bytes

        atomic_write_bytes(Path(args.json), (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    sys.exit(main())
