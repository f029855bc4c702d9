"""Speed and peak memory of BATMAN's bilateral attention (``voszoo.layers.bilateral``) against a dense reference.

Workload: Sec. 3.2 / 4.1 of shared/papers/000: 8 heads of 32 channels, W_d = 7 (15 x 15 window), W_b = 84, one
bilateral encoding E per token, on 1/16-resolution maps (24x24 for 384x384 crops, 30x54 for 480x854 DAVIS frames),
batch 1. "bilateral" is the windowed implementation (rank mask + E bias in (225, H, W) layout, tiled exact local
attention); "dense" forms Eq. 1 literally: an (HW x HW) logit matrix per head plus the E bias, with the bilateral mask
scattered to a dense (HW x HW) boolean mask.

Each (impl, size, mode) runs in a fresh subprocess: peak memory is the growth of the peak resident set size during
the first call; time is the median of ``--repeats`` calls after one warm-up. Modes "fwd" (no autograd) and "fwd+bwd"
(gradients for q, k, v and E). "fwd" also reports the largest difference to the dense result. Results are printed and
written to ``benchmarks/results/bilateral.json``.

    python benchmarks/bench_bilateral.py [--sizes 24x24 30x54] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from voszoo.layers.bilateral import bilateral_attention, bilateral_keep_mask

RESULTS = Path(__file__).resolve().parent / "results" / "bilateral.json"
IMPLS = ("dense", "bilateral")


def dense_bilateral_attention(q, k, v, e, *, window: int, bilateral_window: int):
    """Eq. 1-2 with a dense (HW x HW) mask: logits q.k / sqrt(d) + E_key where kept, -inf elsewhere."""
    b, h, d, height, width = q.shape
    hw, r, w2 = height * width, (window - 1) // 2, window * window
    keep = bilateral_keep_mask(e, window_size=window, bilateral_window=bilateral_window)[:, 0]  # (B, w2, H, W)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    oy, ox = torch.meshgrid(torch.arange(window) - r, torch.arange(window) - r, indexing="ij")
    ky, kx = ys.reshape(hw, 1) + oy.reshape(1, w2), xs.reshape(hw, 1) + ox.reshape(1, w2)
    inside = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width)
    key_of_slot = torch.where(inside, ky * width + kx, hw)
    dense = torch.zeros(b, hw, hw + 1, dtype=torch.bool)
    dense.scatter_(2, key_of_slot.expand(b, hw, w2), keep.flatten(2).transpose(1, 2))
    logits = (q.flatten(3).transpose(-1, -2) @ k.flatten(3)) * d**-0.5 + e.flatten(1)[:, None, None, :]
    attn = logits.masked_fill(~dense[:, None, :, :hw], float("-inf")).softmax(-1)
    return (attn @ v.flatten(3).transpose(-1, -2)).transpose(-1, -2).reshape(b, h, d, height, width)


def child(impl: str, height: int, width: int, mode: str, repeats: int) -> dict:
    torch.set_num_threads(torch.get_num_threads())
    g = torch.Generator().manual_seed(0)
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(1, 8, 32, height, width, generator=g).requires_grad_(grad) for _ in range(3))
    e = torch.randn(1, 1, height, width, generator=g).requires_grad_(grad)

    def run():
        if impl == "dense":
            out = dense_bilateral_attention(q, k, v, e, window=15, bilateral_window=84)
        else:
            out = bilateral_attention(q, k, v, e, window_size=15, bilateral_window=84, backend="tiled")
        if grad:
            out.sum().backward()
        return out

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.set_grad_enabled(grad):
        out = run()
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            run()
        times.append(time.perf_counter() - start)
    result = {
        "impl": impl,
        "size": f"{height}x{width}",
        "mode": mode,
        "ms": 1000 * statistics.median(times),
        "peak_mb": peak_mb,
    }
    if mode == "fwd" and impl == "bilateral":
        ref = dense_bilateral_attention(q, k, v, e, window=15, bilateral_window=84)
        result["max_abs_diff"] = float((out - ref).abs().max())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["24x24", "30x54"], help="token grids HxW")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median reported)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, size, mode, repeats = args.child
        h, w = (int(s) for s in size.split("x"))
        print(json.dumps(child(impl, h, w, mode, int(repeats))))
        return 0
    rows = []
    for size in args.sizes:
        for mode in ("fwd", "fwd+bwd"):
            for impl in IMPLS:
                cmd = [sys.executable, __file__, "--child", impl, size, mode, str(args.repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    print(f"{impl} {size} {mode} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                extra = f"  max|diff| {row['max_abs_diff']:.1e}" if "max_abs_diff" in row else ""
                print(f"{impl:9s} {size:6s} {mode:8s} {row['ms']:9.1f} ms  {row['peak_mb']:8.1f} MB{extra}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
