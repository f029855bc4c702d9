"""Looking at the masks: DAVIS-palette overlays, one animation per video and a static HTML report of an evaluation
run (``voszoo-viz``; docs/evaluation.md). Nothing here is imported by the models or the evaluator."""

from voszoo.viz.animation import write_animation
from voszoo.viz.overlay import overlay_labels, side_by_side
from voszoo.viz.report import write_report
from voszoo.viz.runs import EvalRun, load_run

__all__ = ["EvalRun", "load_run", "overlay_labels", "side_by_side", "write_animation", "write_report"]
