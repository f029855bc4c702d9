"""Speed and peak memory of ``voszoo.layers.local_attention`` backends against a naive dense reference.

The workload is AOT's short-term attention (Sec. 4.2 Eq. 7): 8 heads of 32 channels, window 15, a relative key bias
(B, heads, 225, H, W) and a relative value embedding (heads, 32, 225), on 1/16-resolution feature maps (24x24 for a
384x384 crop, 30x54 for 480x854 DAVIS frames), batch 1 and 2. "dense" is the naive reference the official code
falls back to without its CUDA extension: an (H*W) x (H*W) logit matrix per head, masked outside each window.

Every (backend, size, batch, mode) runs in a fresh subprocess, so peak memory is the growth of the process's peak
resident set size (``resource.getrusage(...).ru_maxrss``) during the first call, measured before any warm-up; time is
the median of ``--repeats`` calls after one warm-up. Modes: "fwd" (inference, no autograd) and "fwd+bwd"
(gradients for q, k, v, bias and relative value). In "fwd" the child also reports the largest absolute difference to
the dense reference. Results are printed and written to ``benchmarks/results/local_attention.json``.

    python benchmarks/bench_local_attention.py [--sizes 24x24 30x54] [--batches 1 2] [--tile-sizes 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from voszoo.layers.local_attention import local_window_attention
from voszoo.profiling import cpu_model_name

RESULTS = Path(__file__).resolve().parent / "results" / "local_attention.json"
BACKENDS = ("dense", "tiled", "unfold", "flex")


def dense_local_attention(q, k, v, *, window: int, bias, rel_v, scale: float):
    """Naive reference: full (HW x HW) logits per head, masked to the window; bias and relative value by slot."""
    b, h, dk, height, width = q.shape
    hw, r, w2 = height * width, (window - 1) // 2, window * window
    dev = q.device
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    oy, ox = torch.meshgrid(torch.arange(window, device=dev) - r, torch.arange(window, device=dev) - r, indexing="ij")
    ky = ys.reshape(hw, 1) + oy.reshape(1, w2)
    kx = xs.reshape(hw, 1) + ox.reshape(1, w2)
    inside = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width)
    key_of_slot = torch.where(inside, ky * width + kx, hw)  # (HW, w2); out-of-image slots -> extra column hw
    qf = q.flatten(3).transpose(-1, -2) * scale
    logits = torch.cat([qf @ k.flatten(3), q.new_zeros(b, h, hw, 1)], dim=-1)  # (B, h, HW, HW + 1)
    slot_bias = torch.where(inside, bias.flatten(3).transpose(-1, -2), float("-inf"))  # (B, h, HW, w2)
    dense_bias = torch.full_like(logits, float("-inf")).scatter(-1, key_of_slot.expand(b, h, hw, w2), slot_bias)
    attn = (logits + dense_bias).softmax(dim=-1)
    out = attn[..., :hw] @ v.flatten(3).transpose(-1, -2)
    out = out + attn.gather(-1, key_of_slot.expand(b, h, hw, w2)) @ rel_v.transpose(1, 2).unsqueeze(0)
    return out.transpose(-1, -2).reshape(b, h, v.shape[2], height, width)


def _inputs(*, batch: int, height: int, width: int, heads: int, head_dim: int, window: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    w2 = window * window

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).requires_grad_(grad)

    q, k, v = (rand(batch, heads, head_dim, height, width) for _ in range(3))
    return q, k, v, rand(batch, heads, w2, height, width), rand(heads, head_dim, w2, std=0.1)


def _child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    torch.manual_seed(0)
    grad = spec["mode"] == "fwd+bwd"
    window = spec["window"]
    q, k, v, bias, rel_v = _inputs(
        batch=spec["batch"],
        height=spec["height"],
        width=spec["width"],
        heads=spec["heads"],
        head_dim=spec["head_dim"],
        window=window,
        grad=grad,
    )
    scale = spec["head_dim"] ** -0.5

    def forward():
        if spec["backend"] == "dense":
            return dense_local_attention(q, k, v, window=window, bias=bias, rel_v=rel_v, scale=scale)
        return local_window_attention(
            q,
            k,
            v,
            window_size=window,
            bias=bias,
            relative_value=rel_v,
            scale=scale,
            backend=spec["backend"],
            tile_size=spec["tile_size"],
        )

    def run():
        if grad:
            out = forward()
            out.square().mean().backward()
            for t in (q, k, v, bias, rel_v):
                t.grad = None
            return out.detach()
        with torch.no_grad():
            return forward()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    result = dict(
        spec, median_ms=1000 * statistics.median(times), min_ms=1000 * min(times), peak_mib=(rss1 - rss0) / 1024
    )
    if not grad and spec["backend"] != "dense":
        with torch.no_grad():
            ref = dense_local_attention(q, k, v, window=window, bias=bias, rel_v=rel_v, scale=scale)
        result["max_abs_diff_vs_dense"] = float((out - ref).abs().max())
    return result


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 30x54, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(24, 24), (30, 54)], help="HxW feature maps")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--window", type=int, default=15)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["dense", "tiled", "unfold"],
        choices=BACKENDS,
        help="'flex' on CPU is torch's eager dense reference (forward only)",
    )
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[8], help="tile sides for the tiled backend")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.window < 1 or args.window % 2 == 0:
        print(f"bench_local_attention: --window must be a positive odd int, got {args.window}", file=sys.stderr)
        return 2

    specs = []
    for mode in args.modes:
        for height, width in args.sizes:
            for batch in args.batches:
                for backend in args.backends:
                    if backend == "flex" and mode != "fwd":
                        continue
                    for tile in args.tile_sizes if backend == "tiled" else [0]:
                        specs.append(
                            dict(
                                backend=backend,
                                tile_size=tile or 8,
                                mode=mode,
                                height=height,
                                width=width,
                                batch=batch,
                                heads=args.heads,
                                head_dim=args.head_dim,
                                window=args.window,
                                repeats=args.repeats,
                            )
                        )
    rows = []
    for spec in specs:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            print(f"bench_local_attention: child failed for {spec}:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        name = row["backend"] + (f"(t={row['tile_size']})" if row["backend"] == "tiled" else "")
        diff = row.get("max_abs_diff_vs_dense")
        print(
            f"{row['mode']:8s} {row['height']}x{row['width']} B={row['batch']} {name:12s} "
            f"{row['median_ms']:9.1f} ms  peak +{row['peak_mib']:7.1f} MiB"
            + (f"  |diff|={diff:.1e}" if diff is not None else ""),
            flush=True,
        )
    machine = dict(
        platform=platform.platform(),
        cpu_model=cpu_model_name(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_average=os.getloadavg(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(machine=machine, results=rows), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
