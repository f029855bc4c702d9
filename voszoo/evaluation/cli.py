"""``voszoo-score``: J&F of a folder of predictions with the DAVIS 2017 semi-supervised protocol.

Writes the official ``global_results-val.csv`` and ``per-sequence_results-val.csv`` (byte for byte as
davis2017-evaluation would) plus ``results.json`` (full precision, per-frame values), and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voszoo.data.io import atomic_write_bytes
from voszoo.errors import add_verbose_flag, request_full_errors, run_command
from voszoo.evaluation.davis import evaluate_folders

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voszoo-score",
        description="Score VOS predictions with the DAVIS 2017 semi-supervised protocol (J&F), exactly as the "
        "official davis2017-evaluation code, faster. The first and last frame of each sequence are not scored.",
    )
    parser.add_argument(
        "--gt",
        required=True,
        type=Path,
        metavar="ANNOTATIONS_DIR",
        help="ground-truth folder with one sub-folder of PNG label maps per sequence (e.g. DAVIS/Annotations/480p)",
    )
    parser.add_argument(
        "--pred",
        required=True,
        type=Path,
        metavar="PRED_DIR",
        help="predictions: one sub-folder per sequence with a PNG per ground-truth frame, same names",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the CSV files and results.json (default: PRED_DIR, as the official code)",
    )
    parser.add_argument(
        "--sequences",
        nargs="+",
        default=None,
        metavar="SEQ",
        help="sequences to score, in this order (default: every sequence folder in --gt, sorted)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes scoring sequences in parallel (default: the usable CPU cores; 1 = no pool)",
    )
    parser.add_argument(
        "--davis2016",
        action="store_true",
        help="DAVIS 2016 binary data: any non-zero ground-truth or predicted pixel is object 1 "
        "(without it, ground-truth 255 is void and counts as background)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table, only the file paths")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``voszoo-score``; returns the process exit code (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    if args.verbose:
        request_full_errors()
    # Every input of this command comes from the user: a ValueError here is a bad argument, not a bug.
    return run_command(lambda: _score(args), prog="voszoo-score", also=(ValueError,))


def _score(args: argparse.Namespace) -> int:
    out_dir = args.pred if args.out is None else args.out
    result = evaluate_folders(
        args.gt,
        args.pred,
        sequences=args.sequences,
        workers=args.workers,
        davis2016=args.davis2016,
        progress=not args.quiet,
    )
    global_path, sequence_path = result.write_csvs(out_dir)
    json_path = out_dir / "results.json"
    atomic_write_bytes(json_path, result.to_json().encode())
    if not args.quiet:
        print(result.format_table())
        print()
    for path in (global_path, sequence_path, json_path):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
