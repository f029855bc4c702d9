"""The shared trainer on a tiny real VOS model (tests/trainer_toys.py): exact resume, accumulation, clipping,
freezing, AMP on CPU, hooks and metrics, stages, and the errors a user meets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn
from trainer_toys import RandomClips, ToyVOS

from voszoo.engine import (
    CheckpointError,
    EvalHook,
    Hook,
    PolyWarmupSchedule,
    Trainer,
    build_optimizer,
    read_checkpoint,
)
from voszoo.types import collate_clips

STEPS = 6


def make_trainer(output_dir: Path, *, max_steps: int = STEPS, init_seed: int = 0, **overrides) -> Trainer:
    """ToyVOS with dropout and BatchNorm, AdamW groups, poly schedule, EMA, clipping, 1 x 2 accumulated batches."""
    torch.manual_seed(init_seed)
    model = overrides.pop("model", None) or ToyVOS(dropout=0.3)
    lr = overrides.pop("lr", 0.05)
    optimizer = overrides.pop("optimizer", None) or build_optimizer(model, lr=lr, weight_decay=0.01)
    arguments = dict(
        model=model,
        data=RandomClips(length=5),
        optimizer=optimizer,
        schedule=PolyWarmupSchedule(base_lr=lr, total_steps=STEPS, warmup_steps=2),
        output_dir=output_dir,
        max_steps=max_steps,
        batch_size=1,
        accumulate=2,
        clip_grad_norm=1.0,
        ema_decay=0.8,
        checkpoint_every=0,
        log_every=2,
        device="cpu",
        seed=3,
        model_name="toy",
        progress=False,
    )
    arguments.update(overrides)
    return Trainer(**arguments)


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every tensor of the training state: weights and buffers, EMA, optimizer moments."""
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.module.state_dict().items()})
    for index, values in trainer.optimizer.state_dict()["state"].items():
        state.update({f"opt.{index}.{k}": v.clone() for k, v in values.items() if isinstance(v, torch.Tensor)})
    return state


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Six steps in one go: the reference of the resume tests."""
    output_dir = tmp_path_factory.mktemp("straight")
    trainer = make_trainer(output_dir)
    trainer.fit()
    return output_dir, snapshot(trainer)


def test_resume_after_save_is_exact(tmp_path: Path, straight: tuple[Path, dict[str, torch.Tensor]]) -> None:
    first = make_trainer(tmp_path, max_steps=3)
    first.fit()
    checkpoint = read_checkpoint(tmp_path / "last.pt")
    # 6 micro-batches of a 5-sample epoch: epoch 1, one batch consumed
    assert (checkpoint["step"], checkpoint["position"]["epoch"], checkpoint["position"]["batch_in_epoch"]) == (3, 1, 1)
    assert checkpoint["model_name"] == "toy" and checkpoint["model_class"] == "trainer_toys.ToyVOS"
    resumed = make_trainer(tmp_path, init_seed=123)  # other initial weights: everything comes from the checkpoint
    resumed.fit(resume="auto")
    assert resumed.step == STEPS
    assert_identical(snapshot(resumed), straight[1])
    steps = [record["step"] for record in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert steps == [2, 3, 4, 6]  # every log_every=2 steps and each run's last step, nothing twice


def test_interrupt_mid_step_saves_and_resumes_exactly(
    tmp_path: Path, straight: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    trainer = make_trainer(tmp_path)
    calls = []

    def interrupt_on_tenth_forward(module: nn.Module, args: tuple) -> None:
        calls.append(1)
        if len(calls) == 10:  # the second micro-batch of step 5: step 5 never happened
            raise KeyboardInterrupt

    trainer.model.register_forward_pre_hook(interrupt_on_tenth_forward)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    checkpoint = read_checkpoint(tmp_path / "last.pt")
    assert (checkpoint["step"], checkpoint["position"]["epoch"], checkpoint["position"]["batch_in_epoch"]) == (4, 1, 3)
    resumed = make_trainer(tmp_path, init_seed=7)
    resumed.fit(resume=True)
    assert_identical(snapshot(resumed), straight[1])


def test_finished_run_returns_at_once(straight: tuple[Path, dict[str, torch.Tensor]]) -> None:
    output_dir, state = straight
    before = {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()}
    again = make_trainer(output_dir, init_seed=5)
    assert again.fit() == {}
    assert again.completed and again.step == STEPS
    assert {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()} == before
    assert_identical(snapshot(again), state)


def test_fresh_runs_differ_with_seed_and_resume_false_restarts(tmp_path: Path) -> None:
    a = make_trainer(tmp_path / "a", max_steps=2)
    a.fit()
    b = make_trainer(tmp_path / "b", max_steps=2, seed=4)  # same initial weights, other dropout and data order
    b.fit()
    assert not torch.equal(a.model.head.weight, b.model.head.weight)
    again = make_trainer(tmp_path / "a", max_steps=2)
    again.fit(resume=False)
    assert_identical(snapshot(again), snapshot(a))


def hand_sgd_reference(lr: float, samples: list[dict]) -> dict[str, torch.Tensor]:
    """One SGD step on the loss of one batch of ``samples`` (= the mean of their losses: every sample has the same
    number of pixels and no void), computed directly with autograd; BatchNorm weights stay (they are frozen)."""
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    model.eval()  # BatchNorm frozen: running statistics (the initial 0 / 1) are used
    model(collate_clips(samples))["loss"].backward()
    return {
        n: p.detach() if n.startswith("encoder.bn.") else (p - lr * p.grad).detach()
        for n, p in model.named_parameters()
    }


@pytest.mark.parametrize(("batch_size", "accumulate"), [(2, 1), (1, 2)])
def test_accumulation_matches_one_large_batch(tmp_path: Path, batch_size: int, accumulate: int) -> None:
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    trainer = make_trainer(
        tmp_path,
        max_steps=1,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        schedule=None,
        data=RandomClips(length=4, void=False),
        shuffle=False,
        batch_size=batch_size,
        accumulate=accumulate,
        clip_grad_norm=None,
        freeze_bn=True,
    )
    trainer.fit()
    data = RandomClips(length=4, void=False)
    expected = hand_sgd_reference(0.5, [data[0], data[1]])
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], atol=1e-6, rtol=0, msg=name)


def test_gradient_clipping_by_hand(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(
        tmp_path,
        max_steps=1,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        schedule=None,
        data=RandomClips(length=2, void=False),
        shuffle=False,
        batch_size=2,
        accumulate=1,
        clip_grad_norm=1e-3,
        freeze_bn=True,
    )
    metrics = trainer.fit()
    unclipped = hand_sgd_reference(1.0, [RandomClips(length=2, void=False)[i] for i in range(2)])
    gradient = {n: before[n] - unclipped[n] for n in before}  # lr = 1: the update is the gradient
    norm = torch.sqrt(sum((g**2).sum() for g in gradient.values()))
    assert metrics["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert norm > 1e-2  # the clip is active
    for name, param in trainer.model.named_parameters():
        expected = before[name] - gradient[name] * (1e-3 / norm)
        torch.testing.assert_close(param.detach(), expected, atol=1e-7, rtol=0, msg=name)


def test_frozen_batchnorm_and_prefixes_do_not_move(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(tmp_path, max_steps=2, model=model, freeze_bn=True, freeze_prefixes=["encoder.conv"])
    trainer.fit()
    after = trainer.model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.bn.", "encoder.conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not trainer.model.encoder.bn.training
    trainer.model.train()
    assert not trainer.model.encoder.bn.training and trainer.model.encoder.conv.training
    # built before freezing, the optimizer holds the frozen parameters, but they get no gradient (and no decay)
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if n.startswith("encoder."))
    with pytest.raises(ValueError, match=r"\['encoder.convv'\] match no parameter"):
        make_trainer(tmp_path, freeze_prefixes=["encoder.convv"])


def test_amp_on_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        make_trainer(tmp_path, amp="fp16")
    with pytest.raises(ValueError, match=r"amp must be one of \['none', 'bf16', 'fp16'\]"):
        make_trainer(tmp_path, amp="fp32")
    with caplog.at_level("WARNING"):
        trainer = make_trainer(tmp_path, amp="bf16", max_steps=1)
    assert trainer.amp == "none" and "training in float32" in caplog.text
    trainer.fit()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def before_train(self, trainer: Trainer) -> None:
        self.events.append(("before", trainer.step))

    def after_step(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        self.events.append(("step", trainer.step, sorted(metrics)))

    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        self.events.append(("log", step, sorted(metrics)))

    def after_train(self, trainer: Trainer) -> None:
        self.events.append(("after", trainer.step, trainer.completed))


def test_hooks_eval_and_metrics_file(
    tmp_path: Path, straight: tuple[Path, dict[str, torch.Tensor]], caplog: pytest.LogCaptureFixture
) -> None:
    seen = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        seen.append((model.training, torch.is_grad_enabled(), model.head.weight.sum().item()))
        torch.rand(100)  # consumes the global RNG: the hook must not let this change the training run
        return {"score": float(len(seen))}

    recorder = Recorder()
    evaluation = EvalHook(evaluate, every=4)
    trainer = make_trainer(tmp_path, hooks=[recorder, evaluation])
    with caplog.at_level("INFO", logger="voszoo.engine"):
        trainer.fit()
    assert "step 2/6  loss " in caplog.text and " it/s  eta " in caplog.text  # the console line
    assert_identical(snapshot(trainer), straight[1])
    assert recorder.events[0] == ("before", 0) and recorder.events[-1] == ("after", STEPS, True)
    metric_keys = ["ce", "epoch", "grad_norm", "loss", "lr", "time"]
    assert [e for e in recorder.events if e[0] == "step"] == [("step", s, metric_keys) for s in range(1, STEPS + 1)]
    # the model, then the EMA model, at steps 4 and 6 (the end); eval mode without gradients
    assert [(training, grad) for training, grad, _ in seen] == [(False, False)] * 4
    assert seen[1][2] != seen[0][2]
    assert [(step, sorted(r)) for step, r in evaluation.history] == [(4, ["eval/score", "eval_ema/score"])] * 1 + [
        (6, ["eval/score", "eval_ema/score"])
    ]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 4, 6, 6]
    assert records[2] == {"step": 4, "eval/score": 1.0, "eval_ema/score": 2.0}
    assert set(records[0]) == {"step", *metric_keys}
    assert records[0]["lr"] == pytest.approx(0.05)  # step 2 is the last warm-up step: base_lr
    logs = [e for e in recorder.events if e[0] == "log"]
    assert [e[1] for e in logs] == [2, 4, 4, 6, 6]
    assert trainer.model.training  # back in train mode after evaluation
    assert "step 4  eval/score 1.0000  eval_ema/score 2.0000" in caplog.text  # the console line of an evaluation


def test_eval_hook_without_at_end_skips_the_last_step(tmp_path: Path) -> None:
    """``voszoo-train`` evaluates the final model itself: the periodic hook must not do it a second time, even when
    ``every`` divides the step count."""
    steps = []
    evaluation = EvalHook(lambda model: steps.append(len(steps)) or {"score": 0.0}, every=3, at_end=False)
    make_trainer(tmp_path, hooks=[evaluation]).fit()
    assert STEPS == 6 and [step for step, _ in evaluation.history] == [3]


def test_pretraining_stage_then_main_stage(tmp_path: Path) -> None:
    pretrain = make_trainer(tmp_path / "pretrain", max_steps=2)
    pretrain.fit()
    pretrained = {k: v.clone() for k, v in pretrain.model.state_dict().items()}
    start = {}

    class Capture(Hook):
        def before_train(self, trainer: Trainer) -> None:
            start.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            start["ema"] = trainer.ema_model.head.weight.clone()

    main = make_trainer(
        tmp_path / "main", max_steps=1, init_seed=9, init_from=tmp_path / "pretrain" / "last.pt", hooks=[Capture()]
    )
    main.fit()
    assert all(torch.equal(start[k], pretrained[k]) for k in pretrained)
    assert torch.equal(start["ema"], pretrained["head.weight"])
    assert read_checkpoint(tmp_path / "main" / "last.pt")["step"] == 1
    # a checkpoint of another preset is refused, naming both
    other = make_trainer(tmp_path / "other", max_steps=1, model_name="toy_b", init_from=tmp_path / "pretrain/last.pt")
    with pytest.raises(
        CheckpointError, match=r"saved from model toy \(class trainer_toys.ToyVOS\); this run builds toy_b"
    ):
        other.fit()
    with pytest.raises(CheckpointError, match=r"this run builds toy_b"):
        make_trainer(tmp_path / "pretrain", model_name="toy_b").fit()
    with pytest.raises(CheckpointError, match=r"resume=True but there is no checkpoint"):
        make_trainer(tmp_path / "empty").fit(resume=True)


def test_main_stage_from_the_pretraining_ema_weights(tmp_path: Path) -> None:
    """``init_from_ema=True`` starts from the checkpoint's EMA weights (AOT's PRE -> PRE_YTB_DAV), not its raw ones."""
    pretrain = make_trainer(tmp_path / "pretrain", max_steps=3)
    pretrain.fit()
    ema = {k: v.clone() for k, v in pretrain.ema_model.state_dict().items()}
    raw = pretrain.model.state_dict()
    assert not torch.equal(ema["head.weight"], raw["head.weight"])  # the test can tell the two apart
    start = {}

    class Capture(Hook):
        def before_train(self, trainer: Trainer) -> None:
            start.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    checkpoint = tmp_path / "pretrain" / "last.pt"
    make_trainer(tmp_path / "main", max_steps=1, init_from=checkpoint, init_from_ema=True, hooks=[Capture()]).fit()
    assert start.keys() == ema.keys() and all(torch.equal(start[k], ema[k]) for k in ema)
    with pytest.raises(ValueError, match="init_from_ema=True needs init_from"):
        make_trainer(tmp_path / "none", init_from_ema=True)
    no_ema = make_trainer(tmp_path / "plain", max_steps=1, ema_decay=None)
    no_ema.fit()
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        make_trainer(tmp_path / "main2", init_from=tmp_path / "plain" / "last.pt", init_from_ema=True).fit()


def test_iterable_of_batches_and_checkpoint_every(tmp_path: Path) -> None:
    data = RandomClips(length=3)
    batches = [collate_clips([data[i]]) for i in range(3)]
    trainer = make_trainer(tmp_path, data=batches, max_steps=4, accumulate=1, checkpoint_every=2, keep_checkpoints=2)
    trainer.fit()
    assert (trainer.epoch, trainer.step) == (1, 4)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt")
    assert names == ["checkpoint_00000002.pt", "checkpoint_00000004.pt", "last.pt"]
    assert read_checkpoint(tmp_path / "last.pt")["position"]["batch_in_epoch"] == 1


def test_dataset_epochs_are_announced(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=3, accumulate=2)  # 6 micro-batches of a 5-sample dataset
    trainer.fit()
    assert trainer.data.epochs_seen == [0, 1]


def test_bad_model_output_and_bad_arguments(tmp_path: Path) -> None:
    class NoLoss(ToyVOS):
        def forward(self, clip):
            return {"total": super().forward(clip)["loss"]}

    class NanLoss(ToyVOS):
        def forward(self, clip):
            return {"loss": super().forward(clip)["loss"] * float("nan")}

    with pytest.raises(ValueError, match=r"NoLoss.forward must return a dict with the total loss under 'loss'"):
        make_trainer(tmp_path / "a", model=NoLoss()).fit()
    with pytest.raises(FloatingPointError, match="the loss is nan at step 0"):
        make_trainer(tmp_path / "b", model=NanLoss()).fit()
    with pytest.raises(ValueError, match="accumulate must be an integer >= 1"):
        make_trainer(tmp_path, accumulate=0)
    with pytest.raises(ValueError, match="parameters that are not the model's"):
        make_trainer(tmp_path, optimizer=torch.optim.SGD(ToyVOS().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        make_trainer(tmp_path / "c", batch_size=8).fit()
    with pytest.raises(ValueError, match="device must be"):
        make_trainer(tmp_path, device="tpu")


class ProgressProbe(nn.Module):
    """Records the (step, total) the trainer reports before each step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def set_training_progress(self, step: int, total_steps: int) -> None:
        self.seen.append((step, total_steps))


def test_submodules_hear_the_training_progress(tmp_path: Path) -> None:
    model = ToyVOS(dropout=0.3)
    model.probe = ProgressProbe()
    make_trainer(tmp_path, model=model, max_steps=3).fit()
    assert model.probe.seen == [(0, 3), (1, 3), (2, 3)]
