"""``voszoo-viz``: overlays of an evaluation run's masks and its HTML report (docs/evaluation.md).

voszoo-viz outputs/eval/stm_r18/<date>_<time>                   # -> <run>/viz/report.html
voszoo-viz RUN --compare OTHER_RUN --out compare_viz             # two methods side by side
voszoo-viz RUN --format gif --fps 5 --no-ground-truth --sequences bike-packing dog
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from voszoo.errors import UserError, add_verbose_flag, run_command
from voszoo.viz.animation import FORMATS

__all__ = ["main"]

PROG = "voszoo-viz"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Draw an evaluation run's predicted (and ground-truth) masks on its frames in the DAVIS palette: "
        "PNG frames and one MP4/GIF per video, and report.html, a per-sequence J&F table (worst first) linking to "
        "them. Reads the folder voszoo-eval wrote (predictions/, results.json, .hydra/config.yaml).",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="a voszoo-eval output folder (or voszoo-train run)")
    parser.add_argument("--compare", type=Path, metavar="OTHER_RUN", help="a second run shown side by side")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/viz)")
    parser.add_argument("--data-root", default=None, help="the dataset folder, if it moved since RUN was scored")
    parser.add_argument("--sequences", nargs="+", default=None, help="only these videos (default: every predicted)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="animation format (auto: MP4 if imageio-ffmpeg is installed, else GIF)",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="animation frame rate (default 10)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in [0, 1] (default 0.5)")
    parser.add_argument("--no-ground-truth", action="store_true", help="draw the prediction only")
    add_verbose_flag(parser)
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.fps <= 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must lie in [0, 1], got {args.alpha}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose:
        from voszoo.errors import request_full_errors

        request_full_errors()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        from voszoo.viz.report import write_report
        from voszoo.viz.runs import load_run

        _check(args)
        run = load_run(args.run, data_root=args.data_root)
        compare = load_run(args.compare, data_root=args.data_root) if args.compare is not None else None
        if args.sequences is not None:
            missing = [name for name in args.sequences if name not in run.sequences]
            if missing:
                raise UserError(
                    f"--sequences: {', '.join(missing)} not predicted in {run.predictions}",
                    hint=f"predicted: {', '.join(run.sequences[:20])}",
                )
        report = write_report(
            run,
            args.out if args.out is not None else args.run / "viz",
            compare=compare,
            sequences=args.sequences,
            fps=args.fps,
            fmt=args.format,
            alpha=args.alpha,
            ground_truth=not args.no_ground_truth,
        )
        print(f"report: {report}")
        return 0

    return run_command(body, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
