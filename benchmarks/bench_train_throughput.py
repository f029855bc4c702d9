"""Training throughput: time per step of the shared Trainer with the real data loader and without it, the data's own
cost, and a training step's MACs by stage (issue 22, item 3).

For every model (default: the models of the quick experiments, ``conf/experiment/*_quick.yaml``, each with its
experiment's recipe: crop size, clip length, objects per clip, batch size, optimizer, EMA, frozen layers; another
preset gets ``model=<name> trainer=quick``; with ``--paper-crop`` each preset at its paper's crop and clip length,
:data:`PAPER_RECIPES`, batch 1 unless ``--batch-size``), the measurements named by ``--runs``:

- ``loader``: :class:`voszoo.engine.Trainer` ``fit`` on the real ``ClipDataset`` (the trainer builds its own
  DataLoader: ``--workers`` processes, ``pin_memory`` on CUDA, a new iterator per epoch), i.e. what ``voszoo-train``
  runs: forward, backward, gradient clipping, optimizer, schedule and EMA, plus waiting for data;
- ``preloaded``: the same ``fit`` on one batch, already on the device, repeated: the step with no data cost;
- ``data``: the DataLoader alone, built with the trainer's arguments (batch size, workers, ``collate_clips``,
  ``pin_memory`` on CUDA, the trainer's seeded permutation through ``shard_indices``), no model; and once more with 0
  workers, in this process, whose CPU time per step is then the data's whole cost (``data_cpu_share``: that over the
  preloaded step's CPU time; below 1, one worker with a core to itself keeps ahead);
- ``persistent``: the loader over two epochs or more with new workers per epoch and with ``persistent_workers``
  (``epoch_start_s``: each epoch's wait for its first batch);
- ``macs``: one forward and backward under ``bench_roofline.OpCensus``: MACs by stage and an estimate of a GPU step
  at ``--gpu-tmacs`` (compute-bound, labelled as an estimate).

``--variant`` runs the trainer with the image encoders in channels-last or ``torch.compile`` of the hot modules.
The two trainer runs go through ``Trainer.fit`` itself (no re-implemented loop); a hook stamps the wall clock and this
process's CPU time after every step (CUDA synchronised). The first ``--warmup`` steps are not timed (worker start-up,
compilation, allocator and cuDNN warm-up); ``samples/s = batch_size x accumulate x timed steps / seconds``.
``data_bound`` = 1 - loader / preloaded: the share of the step spent waiting for data (wall clock: only meaningful on
a quiet machine). Each trainer run starts from freshly built, identically seeded weights (random: no ``weights`` is
loaded; speed does not depend on them); its checkpoint and ``metrics.jsonl`` go to a temporary directory.

Results are merged into ``benchmarks/results/train_throughput.json`` after every model (one entry per model, recipe,
variant and override; a new run's measurements replace the old ones of the same name, the others stay) and rendered
as ``benchmarks/results/train_throughput.md`` (also printed).

    python benchmarks/bench_train_throughput.py --threads 1 --steps 3 --warmup 1 --runs loader,preloaded,data,macs
    python benchmarks/bench_train_throughput.py --threads 1 --paper-crop --steps 1 --warmup 1 --runs preloaded,data,macs
    python benchmarks/bench_train_throughput.py --device cuda --amp bf16 --workers 8 --steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
DEFAULT_JSON = RESULTS / "train_throughput.json"
DEFAULT_MARKDOWN = RESULTS / "train_throughput.md"


# -- configuration -------------------------------------------------------------------------------------------------
def compose_train(overrides: list[str]) -> Any:
    """The composed ``conf/train.yaml`` with Hydra ``overrides``."""
    from voszoo.hydra_compose import compose_config

    return compose_config("train", overrides)


def quick_experiments() -> dict[str, str]:
    """{model preset: quick experiment} for every ``conf/experiment/*_quick.yaml``, in file-name order."""
    from voszoo._paths import conf_dir

    found: dict[str, str] = {}
    for path in sorted((conf_dir() / "experiment").glob("*_quick.yaml")):
        cfg = compose_train([f"experiment={path.stem}"])
        found.setdefault(str(cfg.model.name), path.stem)
    return found


def run_overrides(model: str, experiments: dict[str, str], args: argparse.Namespace) -> list[str]:
    """The Hydra overrides of one model's runs: its quick experiment (or ``model=<name> trainer=quick``), then the
    command line's."""
    base = [f"experiment={experiments[model]}"] if model in experiments else [f"model={model}", "trainer=quick"]
    extra = [f"trainer.device={args.device}", f"seed={args.seed}"]
    if args.workers is not None:
        extra.append(f"trainer.num_workers={args.workers}")
    if args.batch_size is not None:
        extra.append(f"trainer.batch_size={args.batch_size}")
    if args.amp is not None:
        extra.append(f"trainer.amp={args.amp}")
    return [*base, *extra, *args.override]


# -- measurements --------------------------------------------------------------------------------------------------
def _step_clock():
    from voszoo.engine import Hook

    class StepClock(Hook):
        """Wall-clock and CPU-time stamps (this process, every thread): one before the first step, one after every
        step (CUDA synchronised)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.cpu: list[float] = []

        def _stamp(self, trainer: Any) -> None:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def before_train(self, trainer: Any) -> None:
            self._stamp(trainer)

        def after_step(self, trainer: Any, metrics: Any) -> None:
            self._stamp(trainer)

    return StepClock()


def _timing(
    stamps: list[float], *, warmup: int, samples_per_step: int, cpu: list[float] | None = None
) -> dict[str, float]:
    timed = [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1 :], strict=True)]
    seconds = stamps[-1] - stamps[warmup]
    result = {
        "samples_per_s": round(samples_per_step * len(timed) / seconds, 3),
        "step_seconds_median": round(statistics.median(timed), 4),
        "timed_seconds": round(seconds, 3),
    }
    if cpu is not None:  # CPU time of this process: hardly changed by other processes on the cores
        cpu_seconds = cpu[-1] - cpu[warmup]
        result["cpu_s_per_step"] = round(cpu_seconds / len(timed), 4)
        result["samples_per_cpu_s"] = round(samples_per_step * len(timed) / cpu_seconds, 3)
    return result


def apply_variant(model: torch.nn.Module, variant: str) -> list[str]:
    """Put ``model`` in the training ``variant``: ``eager`` (as voszoo-train runs on CPU), ``channels_last`` (the
    image encoders in channels-last, the inference CPU fast path) or ``compile`` (``torch.compile`` of the hot
    modules, eager fallback). Returns the converted submodule names."""
    from voszoo.inference import fast_paths

    if variant == "channels_last":
        return fast_paths.channels_last_encoders(model)
    if variant == "compile":
        fast_paths.compile_hot_modules(model)
        return list(fast_paths.hot_module_names(model))
    return []


def time_trainer(cfg: Any, *, preloaded: bool, steps: int, warmup: int, variant: str = "eager") -> dict[str, Any]:
    """``Trainer.fit`` for ``warmup + steps`` steps on the real dataset, or on one preloaded batch repeated."""
    from voszoo.engine import Trainer
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    run = build_run(cfg)
    apply_variant(run["model"], variant)
    args = dict(run["args"])
    total = warmup + steps
    args.update(max_steps=total, checkpoint_every=0, log_every=total, progress=False)
    data: Any = run["dataset"]
    if preloaded:
        loader = torch.utils.data.DataLoader(data, batch_size=args["batch_size"], collate_fn=collate_clips)
        batch = next(iter(loader)).to(args["device"])
        data = [batch] * (total * int(args["accumulate"]))  # an iterable of ready batches: no loading, no copy
    clock = _step_clock()
    with tempfile.TemporaryDirectory(prefix="voszoo_throughput_") as out:
        trainer = Trainer(
            model=run["model"],
            data=data,
            optimizer=run["optimizer"],
            schedule=run["schedule"],
            output_dir=out,
            collate_fn=collate_clips,
            hooks=[clock],
            seed=int(cfg.seed),
            model_name=str(cfg.model.name),
            **args,
        )
        metrics = trainer.fit(resume=False)
    samples_per_step = int(args["batch_size"]) * int(args["accumulate"])
    result = _timing(clock.stamps, warmup=warmup, samples_per_step=samples_per_step, cpu=clock.cpu)
    result["first_steps_s"] = [
        round(b - a, 3) for a, b in zip(clock.stamps, clock.stamps[1 : 1 + warmup], strict=False)
    ]
    result["final_loss"] = round(float(metrics["loss"]), 5)
    return result


def time_data_only(
    cfg: Any, *, steps: int, warmup: int, workers: int | None = None, persistent: bool = False
) -> dict[str, Any]:
    """The trainer's DataLoader alone for ``warmup + steps`` batches: a new iterator (new worker processes) per
    epoch, as the trainer does, or with ``persistent`` one DataLoader with ``persistent_workers=True`` whose workers
    live across epochs. ``workers`` overrides the config's (0: loading in this process, whose CPU time per batch is
    then the data's own cost). ``epoch_start_s``: per epoch, the time from the new iterator to its first batch."""
    from torch.utils.data import DataLoader

    from voszoo.device import resolve_device
    from voszoo.engine.distributed import shard_indices
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    run = build_run(cfg)
    dataset, args = run["dataset"], run["args"]
    batch_size = int(args["batch_size"])
    workers = int(args["num_workers"]) if workers is None else workers
    device = resolve_device(args["device"])
    total = (warmup + steps) * int(args["accumulate"])
    if len(dataset) < batch_size:
        raise ValueError(f"the dataset has {len(dataset)} samples, fewer than batch_size {batch_size}")

    def make_loader(sampler: Any, epoch: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_clips,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=persistent and workers > 0,
            generator=torch.Generator().manual_seed(int(cfg.seed) + epoch),
        )

    stamps, cpu, epoch_start = [time.perf_counter()], [time.process_time()], []
    epoch, persistent_loader = 0, None
    while len(stamps) <= total:
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(epoch)  # (persistent workers keep their copy: the data repeats; timing only)
        indices = shard_indices(len(dataset), epoch=epoch, seed=int(cfg.seed))
        if persistent:
            persistent_loader = persistent_loader or make_loader(indices, epoch)
            loader = persistent_loader
        else:
            loader = make_loader(indices, epoch)
        started = time.perf_counter()
        for index, _ in zip(range(total + 1 - len(stamps)), loader, strict=False):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if index == 0:
                epoch_start.append(round(stamps[-1] - started, 4))
        epoch += 1
    result = _timing(stamps, warmup=warmup * int(args["accumulate"]), samples_per_step=batch_size, cpu=cpu)
    result.update(
        workers=workers,
        persistent_workers=persistent,
        epoch_start_s=epoch_start,
        batches_per_epoch=len(dataset) // batch_size,
    )
    return result


def _roofline_module() -> Any:
    """benchmarks/bench_roofline.py (its op census), loaded by path: this script may run from anywhere."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_roofline", Path(__file__).resolve().parent / "bench_roofline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_step_macs(cfg: Any, *, gpu_tmacs: float) -> dict[str, Any]:
    """MACs of one training step (one micro-batch: forward and backward) by stage, counted by bench_roofline's op
    census: the forward's ops are charged to the stage running (``StageTimer.stage``: backbone, memory_write,
    matching, decoder; ``other`` = the loss and what glues the frames together), the backward's to ``backward``.
    ``gpu_ms``: each stage's MACs at ``gpu_tmacs`` TMAC/s, the backward shared out in proportion to the forward
    stages' MACs: an estimate of a compute-bound GPU step, not a measurement."""
    from torch.utils.data import DataLoader

    from voszoo.stage_timing import StageTimer
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    run = build_run(cfg)
    model = run["model"].train()
    batch = next(iter(DataLoader(run["dataset"], batch_size=int(run["args"]["batch_size"]), collate_fn=collate_clips)))
    timer = StageTimer(model)
    census = _roofline_module().OpCensus(stage_of=lambda: timer.stage or "backward", peak_macs=1.0, bandwidth=1.0)
    with timer, timer.frame(), census:
        out = model(batch)
    with census:
        out["loss"].backward()
    macs: dict[str, float] = {}
    for (stage, _op), record in census.records.items():
        macs[stage] = macs.get(stage, 0.0) + record["macs"]
    forward = {stage: macs.get(stage, 0.0) for stage in ("backbone", "memory_write", "matching", "decoder", "other")}
    total_forward = sum(forward.values())
    backward = macs.get("backward", 0.0)
    gpu_ms = {
        stage: 1000.0 * value * (1.0 + backward / total_forward) / (gpu_tmacs * 1e12)
        for stage, value in forward.items()
    }
    return {
        "forward_gmacs": {stage: value / 1e9 for stage, value in forward.items()},
        "backward_gmacs": backward / 1e9,
        "step_gmacs": (total_forward + backward) / 1e9,
        "gpu_tmacs_assumed": gpu_tmacs,
        "gpu_ms_estimate": gpu_ms,
        "gpu_ms_estimate_total": sum(gpu_ms.values()),
    }


PAPER_RECIPES = (
    # (preset name prefix, crop side, clip frames, where from); batch 1 on this CPU (the papers use 4-16 per GPU)
    ("stm", 384, 3, "STM (Oh et al. 2019) Sec. 4: 384x384 crops, 3-frame clips"),
    ("mga", 384, 3, "STM's: MGA's paper states none and builds on STM"),
    ("sitvos", 384, 3, "SITVOS Sec. 4: 384x384 crops (docs/methods/sitvos.md), STM's 3-frame clips"),
    ("munet", 400, 6, "MUNet Sec. 3.5: 400x400 crops, 6 consecutive frames (conf/experiment/munet.yaml)"),
    ("aot", 465, 5, "AOT: 465x465 crops, 5-frame clips (DATA_SEQ_LEN)"),
    ("r50_aot", 465, 5, "AOT: 465x465 crops, 5-frame clips (DATA_SEQ_LEN)"),
    ("batman", 465, 5, "AOT's recipe, which BATMAN's training follows (voszoo's reading)"),
)


def paper_recipe(model: str) -> tuple[int, int, str]:
    """(crop side, clip frames, source) of preset ``model``'s paper training crop."""
    for prefix, side, frames, source in PAPER_RECIPES:
        if model.startswith(prefix):
            return side, frames, source
    raise ValueError(f"no paper crop known for {model!r}; known prefixes: {[r[0] for r in PAPER_RECIPES]}")


def paper_overrides(model: str, batch_size: int) -> list[str]:
    """``model=<name> trainer=quick`` on the procedural stream at the paper's crop and clip length."""
    side, frames, _ = paper_recipe(model)
    return [
        f"model={model}",
        "trainer=quick",
        "data.train_source=stream",
        f"data.train.transform.size=[{side},{side}]",
        f"data.train.num_frames={frames}",
        f"trainer.batch_size={batch_size}",
    ]


def benchmark(model: str, experiments: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The measurements ``args.runs`` of one model, with the settings they ran with."""
    from omegaconf import open_dict

    from voszoo.cli_common import prepare_data
    from voszoo.device import resolve_device
    from voszoo.models.registry import without_weights

    if args.paper_crop:
        overrides = [*paper_overrides(model, args.batch_size or 1), *run_overrides(model, {}, args)[2:]]
    else:
        overrides = run_overrides(model, experiments, args)
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.model = without_weights(cfg.model)  # speed does not depend on weights: load and download none
    prepare_data(cfg.data)  # ToyVOS is generated on first use, as voszoo-train does
    steps, warmup, runs = args.steps, args.warmup, set(args.runs.split(","))
    train = cfg.data.train
    row: dict[str, Any] = {
        "model": model,
        "recipe": "paper crop: " + paper_recipe(model)[2] if args.paper_crop else experiments.get(model, "quick"),
        "variant": args.variant,
        "config": overrides,
        "batch_size": int(cfg.trainer.batch_size),
        "accumulate": int(cfg.trainer.accumulate),
        "clip": [int(train.num_frames), *(int(s) for s in train.transform.size)],
        "max_objects": int(train.max_objects),
        "train_source": str(cfg.data.train_source),
        "workers": int(cfg.trainer.num_workers),
        "device": str(resolve_device(cfg.trainer.device)),
        "amp": str(cfg.trainer.amp),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup_steps": warmup,
    }
    if "loader" in runs:
        row["loader"] = time_trainer(cfg, preloaded=False, steps=steps, warmup=warmup, variant=args.variant)
    if "preloaded" in runs:
        row["preloaded"] = time_trainer(cfg, preloaded=True, steps=steps, warmup=warmup, variant=args.variant)
    if "data" in runs:
        row["data_only"] = time_data_only(cfg, steps=steps, warmup=warmup)
        row["data_in_process"] = time_data_only(cfg, steps=steps, warmup=warmup, workers=0)
    if "persistent" in runs:
        data_steps = max(steps, 2 * (len(build_dataset(cfg)) // int(cfg.trainer.batch_size)))  # two epochs at least
        row["data_new_workers"] = time_data_only(cfg, steps=data_steps, warmup=0)
        row["data_persistent"] = time_data_only(cfg, steps=data_steps, warmup=0, persistent=True)
    if "macs" in runs:
        row["macs"] = count_step_macs(cfg, gpu_tmacs=args.gpu_tmacs)
    if "loader" in row and "preloaded" in row:
        row["data_bound"] = round(1.0 - row["loader"]["samples_per_s"] / row["preloaded"]["samples_per_s"], 3)
    step = row.get("preloaded") or row.get("loader")
    if step and "data_in_process" in row:
        # the data's CPU per step (loaded in this process) over the step's CPU: < 1 means one worker keeps ahead
        row["data_cpu_share"] = round(row["data_in_process"]["cpu_s_per_step"] / step["cpu_s_per_step"], 4)
    return row


def build_dataset(cfg: Any) -> Any:
    from voszoo.instantiate import build

    return build(cfg.data.train, key="data.train")


# -- output --------------------------------------------------------------------------------------------------------
def _cell(row: dict[str, Any], run: str, key: str, digits: int = 2) -> str:
    value = row.get(run, {}).get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per run key: the step's CPU time and samples per CPU second (preloaded batch), samples/s (wall) with
    the loader and preloaded, the data's CPU per step loaded in-process and its share of the step's CPU, the loader
    alone (workers as configured), the data-bound share, and the load average."""
    lines = [
        "| run | batch | clip (T x H x W) | data | workers | step CPU s (preloaded) | samples / CPU s | "
        "samples/s wall: loader / preloaded | data CPU s per step (in-process) | data CPU / step CPU | "
        "loader alone samples/s | data-bound share | load |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results.items():
        batch = row["batch_size"] * row["accumulate"]
        share = "-" if "data_bound" not in row else f"{row['data_bound']:.0%}".replace("-0%", "0%")
        cpu_share = "-" if "data_cpu_share" not in row else f"{row['data_cpu_share']:.1%}"
        clip = " x ".join(str(s) for s in row["clip"])
        wall = f"{_cell(row, 'loader', 'samples_per_s')} / {_cell(row, 'preloaded', 'samples_per_s')}"
        load = row.get("machine", {}).get("load_average_1min", "-")
        lines.append(
            f"| {name} | {batch} | {clip} | {row.get('train_source', '-')} | {row['workers']} | "
            f"{_cell(row, 'preloaded', 'cpu_s_per_step')} | {_cell(row, 'preloaded', 'samples_per_cpu_s', 3)} | "
            f"{wall} | {_cell(row, 'data_in_process', 'cpu_s_per_step', 3)} | {cpu_share} | "
            f"{_cell(row, 'data_only', 'samples_per_s')} | {share} | {load} |"
        )
    return "\n".join(lines)


def gpu_table(results: dict[str, dict[str, Any]]) -> str:
    """Per run with a MAC count: MACs of a training step by stage and the GPU estimate (labelled as such)."""
    stages = ("backbone", "memory_write", "matching", "decoder", "other")
    lines = [
        "| run | clip | forward GMACs (backbone / memory write / matching / decoder / other) | backward GMACs | "
        "GPU ms estimate per step (backbone / memory write / matching / decoder / other) | GPU ms total |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for name, row in results.items():
        macs = row.get("macs")
        if not macs:
            continue
        forward = " / ".join(f"{macs['forward_gmacs'][s]:.1f}" for s in stages)
        gpu = " / ".join(f"{macs['gpu_ms_estimate'][s]:.2f}" for s in stages)
        clip = " x ".join(str(s) for s in row["clip"])
        lines.append(
            f"| {name} | {clip} | {forward} | {macs['backward_gmacs']:.1f} | {gpu} | "
            f"{macs['gpu_ms_estimate_total']:.2f} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    from voszoo.profiling import machine_info as describe_machine

    return {**describe_machine("cuda" if torch.cuda.is_available() else "cpu"), "weights": "random init"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--models", nargs="+", help="model presets (default: the models of the quick experiments)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (default: the experiment's)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: the experiment's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision on CUDA (default: config)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override of train.yaml (repeat)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs",
        default="loader,preloaded,data",
        help="comma-separated measurements: loader, preloaded, data (loader alone, and in-process for its CPU), "
        "persistent (new workers per epoch vs persistent_workers over two epochs), macs (training-step MACs by "
        "stage and the GPU estimate)",
    )
    parser.add_argument(
        "--paper-crop", action="store_true", help="each preset at its paper's crop and clip length (PAPER_RECIPES)"
    )
    parser.add_argument(
        "--variant", choices=("eager", "channels_last", "compile"), default="eager", help="training fast path"
    )
    parser.add_argument(
        "--gpu-tmacs",
        type=float,
        default=62.4,
        help="assumed GPU rate for the estimate (default: A100 bf16, 312 TFLOP/s dense = 156 TMAC/s, at 40 %%)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON file the results are merged into")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN, help="Markdown table of the JSON's rows")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException

    try:
        if args.steps < 1 or args.warmup < 0:
            raise ValueError(f"need --steps >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
        for flag in ("workers", "batch_size", "threads"):
            value = getattr(args, flag)
            if value is not None and value < (0 if flag == "workers" else 1):
                raise ValueError(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'workers' else 1}, got {value}")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        from voszoo.models.registry import list_models

        experiments = quick_experiments()
        models = args.models or list(experiments)
        unknown = [m for m in models if m not in list_models()]
        if unknown:
            raise ValueError(f"unknown model preset(s) {unknown}; valid: {', '.join(list_models())}")
        unknown_runs = set(args.runs.split(",")) - {"loader", "preloaded", "data", "persistent", "macs"}
        if unknown_runs:
            raise ValueError(
                f"--runs: unknown {sorted(unknown_runs)}; valid: loader, preloaded, data, persistent, macs"
            )
        results = {}
        existing = json.loads(args.json.read_text()) if args.json.is_file() else {}
        existing.setdefault("results", {})
        for model in models:
            key = model + ("@paper" if args.paper_crop else "")
            key += "" if args.variant == "eager" else f"+{args.variant}"
            key += "".join(f" {override}" for override in args.override)  # another recipe: another row
            print(f"{key}: {args.warmup} + {args.steps} steps, runs {args.runs}", flush=True)
            results[key] = {**benchmark(model, experiments, args), "machine": machine_info()}
            previous = existing["results"].get(key, {})
            existing["results"][key] = {**previous, **results[key]}  # runs of an earlier call are kept
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(existing, indent=2) + "\n")  # after every model: resumable
    except (ValueError, HydraException) as error:
        print(f"bench_train_throughput: {'; '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    table = markdown_table(existing["results"]) + "\n\n" + gpu_table(existing["results"])
    header = (
        "# Training throughput\n\nWritten by `benchmarks/bench_train_throughput.py` (see its docstring for what is "
        "timed); the machine and load of each row are in `train_throughput.json`.\n\n"
    )
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(header + table + "\n")
    print(markdown_table(results))
    print(gpu_table(results))
    print(f"written {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
