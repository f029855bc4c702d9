"""Training throughput: samples per second of the shared Trainer's step with the real data loader and without it.

For every model (default: the models of the quick experiments, ``conf/experiment/*_quick.yaml``, each with its
experiment's recipe: crop size, clip length, objects per clip, batch size, optimizer, EMA, frozen layers; another
preset gets ``model=<name> trainer=quick``), three numbers:

- ``loader``: :class:`voszoo.engine.Trainer` ``fit`` on the real ``ClipDataset`` (the trainer builds its own
  DataLoader: ``--workers`` processes, ``pin_memory`` on CUDA, a new iterator per epoch), i.e. what ``voszoo-train``
  runs: forward, backward, gradient clipping, optimizer, schedule and EMA, plus waiting for data;
- ``preloaded``: the same ``fit`` on one batch, already on the device, repeated: the step with no data cost;
- ``data only``: the DataLoader alone, built with the trainer's arguments (batch size, workers, ``collate_clips``,
  ``pin_memory`` on CUDA, the trainer's seeded permutation through ``shard_indices``), no model.

The two trainer runs go through ``Trainer.fit`` itself (no re-implemented loop); a hook stamps the wall clock after
every step (CUDA synchronised). The first ``--warmup`` steps are not timed (worker start-up, allocator and cuDNN
warm-up); ``samples/s = batch_size x accumulate x timed steps / seconds``. ``data_bound`` = 1 - loader / preloaded: the
share of the step spent waiting for data (about 0 when the loader keeps up; it is data-bound when ``data only`` is
not well above ``preloaded``). Each trainer run starts from freshly built, identically seeded weights; its
checkpoint and ``metrics.jsonl`` go to a temporary directory, after the timed steps. Weights are random: speed does
not depend on them.

Results are merged into ``benchmarks/results/train_throughput.json`` (one entry per model, the latest run wins) and
rendered as the Markdown table ``benchmarks/results/train_throughput.md`` (also printed).

    python benchmarks/bench_train_throughput.py --steps 3 --warmup 1            # a quick check, every quick model
    python benchmarks/bench_train_throughput.py --models stm_r18 aot_t --steps 50 --workers 4
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
    """The composed ``conf/train.yaml`` with Hydra ``overrides`` (Hydra's global state is cleared afterwards)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from voszoo._paths import conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="bench_train_throughput"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


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
        """Wall-clock stamps: one before the first step, one after every step (CUDA synchronised)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def _stamp(self, trainer: Any) -> None:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            self.stamps.append(time.perf_counter())

        def before_train(self, trainer: Any) -> None:
            self._stamp(trainer)

        def after_step(self, trainer: Any, metrics: Any) -> None:
            self._stamp(trainer)

    return StepClock()


def _timing(stamps: list[float], *, warmup: int, samples_per_step: int) -> dict[str, float]:
    timed = [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1 :], strict=True)]
    seconds = stamps[-1] - stamps[warmup]
    return {
        "samples_per_s": round(samples_per_step * len(timed) / seconds, 3),
        "step_seconds_median": round(statistics.median(timed), 4),
        "timed_seconds": round(seconds, 3),
    }


def time_trainer(cfg: Any, *, preloaded: bool, steps: int, warmup: int) -> dict[str, Any]:
    """``Trainer.fit`` for ``warmup + steps`` steps on the real dataset, or on one preloaded batch repeated."""
    from voszoo.engine import Trainer
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    run = build_run(cfg)
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
    result = _timing(clock.stamps, warmup=warmup, samples_per_step=samples_per_step)
    result["final_loss"] = round(float(metrics["loss"]), 5)
    return result


def time_data_only(cfg: Any, *, steps: int, warmup: int) -> dict[str, Any]:
    """The trainer's DataLoader alone for ``warmup + steps`` batches (a new epoch, i.e. a new iterator and new worker
    processes, whenever one ends, as in training)."""
    from torch.utils.data import DataLoader

    from voszoo.device import resolve_device
    from voszoo.engine.distributed import shard_indices
    from voszoo.train import build_run
    from voszoo.types import collate_clips

    run = build_run(cfg)
    dataset, args = run["dataset"], run["args"]
    batch_size, workers = int(args["batch_size"]), int(args["num_workers"])
    device = resolve_device(args["device"])
    total = (warmup + steps) * int(args["accumulate"])
    stamps = [time.perf_counter()]
    epoch = 0
    while len(stamps) <= total:
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(epoch)
        indices = shard_indices(len(dataset), epoch=epoch, seed=int(cfg.seed))
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=indices,
            num_workers=workers,
            collate_fn=collate_clips,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(int(cfg.seed) + epoch),
        )
        if len(indices) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} samples, fewer than batch_size {batch_size}")
        for _ in zip(range(total + 1 - len(stamps)), loader, strict=False):
            stamps.append(time.perf_counter())
        epoch += 1
    return _timing(stamps, warmup=warmup * int(args["accumulate"]), samples_per_step=batch_size)


def benchmark(model: str, experiments: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The three measurements of one model, with the settings they ran with."""
    from voszoo.cli_common import prepare_data
    from voszoo.device import resolve_device

    overrides = run_overrides(model, experiments, args)
    cfg = compose_train(overrides)
    prepare_data(cfg.data)  # ToyVOS is generated on first use, as voszoo-train does
    loader = time_trainer(cfg, preloaded=False, steps=args.steps, warmup=args.warmup)
    preloaded = time_trainer(cfg, preloaded=True, steps=args.steps, warmup=args.warmup)
    data_only = time_data_only(cfg, steps=args.steps, warmup=args.warmup)
    train = cfg.data.train
    return {
        "model": model,
        "config": overrides,
        "batch_size": int(cfg.trainer.batch_size),
        "accumulate": int(cfg.trainer.accumulate),
        "clip": [int(train.num_frames), *(int(s) for s in train.transform.size)],
        "max_objects": int(train.max_objects),
        "workers": int(cfg.trainer.num_workers),
        "device": str(resolve_device(cfg.trainer.device)),
        "amp": str(cfg.trainer.amp),
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "loader": loader,
        "preloaded": preloaded,
        "data_only": data_only,
        "data_bound": round(1.0 - loader["samples_per_s"] / preloaded["samples_per_s"], 3),
    }


# -- output --------------------------------------------------------------------------------------------------------
def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per model: samples/s with the loader, with a preloaded batch, of the loader alone, and the gap."""
    lines = [
        "| model | batch | clip (T x H x W) | workers | device / amp | with loader (samples/s) | preloaded batch "
        "(samples/s) | loader alone (samples/s) | data-bound share |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results.items():
        batch = row["batch_size"] * row["accumulate"]
        share = f"{row['data_bound']:.0%}".replace("-0%", "0%")  # negative: noise, the loader run was faster
        clip = " x ".join(str(s) for s in row["clip"])
        lines.append(
            f"| {name} | {batch} | {clip} | {row['workers']} | {row['device']} / {row['amp']} | "
            f"{row['loader']['samples_per_s']:.2f} | {row['preloaded']['samples_per_s']:.2f} | "
            f"{row['data_only']['samples_per_s']:.2f} | {share} |"
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
        results = {}
        for model in models:
            print(f"{model}: {args.warmup} + {args.steps} steps with the loader, preloaded, loader alone", flush=True)
            results[model] = benchmark(model, experiments, args)
    except (ValueError, HydraException) as error:
        print(f"bench_train_throughput: {'; '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    machine = machine_info()
    existing = json.loads(args.json.read_text()) if args.json.is_file() else {}
    existing.setdefault("results", {})
    for name, row in results.items():
        existing["results"][name] = {**row, "machine": machine}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(existing, indent=2) + "\n")
    table = markdown_table(existing["results"])
    header = (
        "# Training throughput\n\nWritten by `benchmarks/bench_train_throughput.py` (see its docstring for what is "
        "timed); the machine and load of each row are in `train_throughput.json`.\n\n"
    )
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(header + table + "\n")
    print(markdown_table(results))
    print(f"written {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
