"""Optimizer parameter groups, learning-rate schedules and freezing (voszoo.engine.optim)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from voszoo.engine.ema import ModelEMA
from voszoo.engine.optim import (
    ConstantSchedule,
    PolyWarmupSchedule,
    build_optimizer,
    freeze_batchnorm,
    freeze_parameters,
    fresh_parameter_names,
    matches_any,
    param_groups,
)


class Net(nn.Module):
    """query_encoder.backbone.{conv1, bn1, layer1.conv}, decoder.{proj, norm}, embedding (1-D), head_scale (2-D)."""

    def __init__(self) -> None:
        super().__init__()
        self.query_encoder = nn.Module()
        self.query_encoder.backbone = nn.Module()
        self.query_encoder.backbone.conv1 = nn.Conv2d(3, 4, 3)
        self.query_encoder.backbone.bn1 = nn.BatchNorm2d(4)
        self.query_encoder.backbone.layer1 = nn.Module()
        self.query_encoder.backbone.layer1.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.decoder = nn.Module()
        self.decoder.proj = nn.Linear(4, 2)
        self.decoder.norm = nn.GroupNorm(1, 4)
        self.embedding = nn.Parameter(torch.zeros(4))
        self.head_scale = nn.Parameter(torch.ones(2, 2))


def group_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[float, float, float]]:
    """name -> (lr, lr_mult, weight_decay) of the group holding each parameter."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {
        by_id[id(p)]: (group["lr"], group["lr_mult"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }


def test_default_groups_encoder_lr_and_no_decay_on_norms_and_biases() -> None:
    model = Net()
    groups = group_of(build_optimizer(model, lr=1e-3, weight_decay=0.05, encoder_lr_mult=0.1), model)
    enc, other = (1e-4, 0.1), (1e-3, 1.0)
    expected = {
        "query_encoder.backbone.conv1.weight": (*enc, 0.05),
        "query_encoder.backbone.conv1.bias": (*enc, 0.0),
        "query_encoder.backbone.bn1.weight": (*enc, 0.0),
        "query_encoder.backbone.bn1.bias": (*enc, 0.0),
        "query_encoder.backbone.layer1.conv.weight": (*enc, 0.05),
        "decoder.proj.weight": (*other, 0.05),
        "decoder.proj.bias": (*other, 0.0),
        "decoder.norm.weight": (*other, 0.0),
        "decoder.norm.bias": (*other, 0.0),
        "embedding": (*other, 0.0),
        "head_scale": (*other, 0.05),
    }
    assert set(groups) == set(expected)
    for name, (lr, mult, wd) in expected.items():
        assert groups[name] == pytest.approx((lr, mult, wd)), name


def test_model_declared_weight_decay_exemptions() -> None:
    class Exempting(Net):
        no_weight_decay_keys = ("head_scale", "decoder.proj")

    model = Exempting()
    groups = group_of(build_optimizer(model, lr=1e-3, weight_decay=0.05), model)
    assert groups["head_scale"][2] == 0.0 and groups["decoder.proj.weight"][2] == 0.0
    assert groups["query_encoder.backbone.conv1.weight"][2] == 0.05  # the rest keeps the default rule
    Exempting.no_weight_decay_keys = "head_scale"  # a bare string is a mistake, not a list of one-letter keys
    with pytest.raises(ValueError, match="no_weight_decay_keys must be a sequence of strings"):
        build_optimizer(model, lr=1e-3, weight_decay=0.05)


def test_aot_exempts_what_the_official_recipe_exempts() -> None:
    from voszoo.models.registry import create_model

    model = create_model("aot_t")
    groups = group_of(build_optimizer(model, lr=1e-3, weight_decay=0.07), model)
    assert groups["LSTT.layers.0.short_term_attn.relative_emb_v"][2] == 0.0
    assert groups["decoder.conv_out.weight"][2] == 0.0
    assert groups["LSTT.layers.0.linear_Q.weight"][2] == 0.07


def test_explicit_and_model_declared_encoder_prefixes() -> None:
    model = Net()
    groups = group_of(build_optimizer(model, lr=1.0, encoder_lr_mult=0.5, encoder_prefixes=["decoder.proj"]), model)
    assert groups["decoder.proj.weight"][1] == 0.5
    assert groups["query_encoder.backbone.conv1.weight"][1] == 1.0

    class Declared(Net):
        encoder_parameter_prefixes = ("head_scale",)

    class Method(Net):
        def encoder_parameter_prefixes(self) -> list[str]:
            return [".layer1"]

    declared = Declared()
    groups = group_of(build_optimizer(declared, lr=1.0, encoder_lr_mult=0.5), declared)
    assert groups["head_scale"][1] == 0.5 and groups["query_encoder.backbone.conv1.weight"][1] == 1.0
    method = Method()
    groups = group_of(build_optimizer(method, lr=1.0, encoder_lr_mult=0.5), method)
    assert groups["query_encoder.backbone.layer1.conv.weight"][1] == 0.5
    assert groups["query_encoder.backbone.conv1.weight"][1] == 1.0


def test_frozen_parameters_are_left_out_and_optimizer_names() -> None:
    model = Net()
    frozen = freeze_parameters(model, ["query_encoder.backbone.conv1"])
    assert frozen == ["query_encoder.backbone.conv1.weight", "query_encoder.backbone.conv1.bias"]
    optimizer = build_optimizer(model, name="SGD", lr=0.1)
    assert isinstance(optimizer, torch.optim.SGD)
    assert "query_encoder.backbone.conv1.weight" not in group_of(optimizer, model)
    assert isinstance(build_optimizer(model, name="adam", lr=0.1), torch.optim.Adam)
    with pytest.raises(ValueError, match=r"unknown optimizer 'lamb'.*'adamw', 'adam', 'sgd'"):
        build_optimizer(model, name="lamb", lr=0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        build_optimizer(model, lr=0.0)


def test_pattern_matching_at_dot_boundaries() -> None:
    name = "query_encoder.backbone.layer1.0.conv1.weight"
    assert matches_any(name, ["query_encoder.backbone"])
    assert matches_any(name, [".layer1"])
    assert matches_any(name, [".layer1.0.conv1"])
    assert not matches_any(name, ["query_encoder.back"])
    assert not matches_any(name, [".layer"])
    assert not matches_any(name, ["backbone"])  # not a prefix of the path
    assert matches_any("head_scale", ["head_scale"])


def test_freeze_parameters_rejects_patterns_matching_nothing() -> None:
    with pytest.raises(ValueError, match=r"\['query_encoder.backbone.conv9'\] match no parameter.*'decoder'"):
        freeze_parameters(Net(), ["query_encoder.backbone.conv9"])
    with pytest.raises(ValueError, match="not the string"):
        freeze_parameters(Net(), "decoder")


def test_poly_warmup_values_by_hand() -> None:
    schedule = PolyWarmupSchedule(base_lr=1.0, total_steps=10, warmup_steps=4, power=2.0, min_lr=0.1)
    # warm-up (s + 1) / 4; then 0.1 + 0.9 * (1 - (s - 4) / 6) ** 2; clamped at min_lr after total_steps
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 0.1 + 0.9 * (5 / 6) ** 2, 0.1 + 0.9 * (4 / 6) ** 2]
    expected += [0.1 + 0.9 * (3 / 6) ** 2, 0.1 + 0.9 * (2 / 6) ** 2, 0.1 + 0.9 * (1 / 6) ** 2, 0.1, 0.1]
    assert [schedule.lr_at(s) for s in range(12)] == pytest.approx(expected)
    no_warmup = PolyWarmupSchedule(base_lr=2.0, total_steps=4)
    assert [no_warmup.lr_at(s) for s in range(5)] == pytest.approx([2.0 * (1 - s / 4) ** 0.9 for s in range(5)])
    constant = ConstantSchedule(base_lr=0.3, warmup_steps=3)
    assert [constant.lr_at(s) for s in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_schedule_applies_lr_mult_and_resumes_exactly() -> None:
    model = Net()
    optimizer = build_optimizer(model, lr=1.0, encoder_lr_mult=0.1)
    schedule = PolyWarmupSchedule(base_lr=1.0, total_steps=10, warmup_steps=4)
    for _ in range(2):
        schedule.apply(optimizer)
        schedule.step()
    lr = schedule.apply(optimizer)
    assert lr == pytest.approx(0.75)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.75 * (0.1 if group["name"].startswith("encoder") else 1.0))
    restored = PolyWarmupSchedule(base_lr=1.0, total_steps=20, warmup_steps=4)
    changed = restored.load_state_dict(copy.deepcopy(schedule.state_dict()))
    assert restored.last_step == 2 and changed == ["total_steps: saved 10, now 20"]
    with pytest.raises(ValueError, match="warmup_steps must lie"):
        PolyWarmupSchedule(base_lr=1.0, total_steps=3, warmup_steps=4)


def test_freeze_batchnorm_survives_train_calls_and_copies() -> None:
    model = Net()
    frozen = freeze_batchnorm(model)
    bn = model.query_encoder.backbone.bn1
    assert frozen == ["query_encoder.backbone.bn1"]
    model.train()
    assert not bn.training and model.decoder.proj.training
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    bn(torch.randn(2, 4, 3, 3) + 5.0)
    assert torch.equal(bn.running_mean, torch.zeros(4))  # eval mode: statistics untouched
    clone = copy.deepcopy(model)
    clone.train()
    assert not clone.query_encoder.backbone.bn1.training
    assert not ModelEMA(model).module.query_encoder.backbone.bn1.training


def test_frozen_batchnorm_is_the_eval_affine_map_with_correct_gradients() -> None:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 3.0, 1.0]))
    model = nn.Sequential(bn)
    freeze_batchnorm(model)
    scale = torch.tensor([2.0, 1.0, -1.0]) / torch.sqrt(torch.tensor([4.0, 0.25, 1.0]) + bn.eps)
    shift = torch.tensor([0.0, 3.0, 1.0]) - torch.tensor([1.0, -2.0, 0.5]) * scale
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    torch.testing.assert_close(model(x), x * scale[:, None, None] + shift[:, None, None])
    # a channels-last gradient with an unusual batch stride (torch's CPU batch-norm backward gets this one wrong)
    grad = torch.randn(12).as_strided((1, 3, 2, 2), (3, 1, 6, 3))
    model(x).backward(grad)
    torch.testing.assert_close(x.grad, grad * scale[:, None, None])
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
    ]


def test_model_ema_by_hand() -> None:
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("count", torch.tensor(0))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.count.fill_(7)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(2.0)  # 0.5 * 1 + 0.5 * 3
    assert ema.module.count.item() == 7  # integer buffers are copied
    assert not ema.module.weight.requires_grad and not ema.module.training
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(2.5)
    ramp = ModelEMA(model, decay=0.9, warmup=2)
    assert ramp.current_decay() == pytest.approx(0.9 * (1 - math.exp(-1 / 2)))
    with torch.no_grad():
        model.weight.fill_(5.0)
    ramp.update(model)
    d = 0.9 * (1 - math.exp(-0.5))
    assert ramp.module.weight.item() == pytest.approx(d * 3.0 + (1 - d) * 5.0)
    restored = ModelEMA(nn.Linear(1, 1, bias=False).requires_grad_(False), decay=0.9)
    restored.module.register_buffer("count", torch.tensor(0))
    restored.load_state_dict(ramp.state_dict())
    assert restored.updates == 1 and restored.module.weight.item() == pytest.approx(ramp.module.weight.item())


def test_encoder_parameters_no_weights_filled_get_their_own_rate(tmp_path) -> None:
    """STM's memory encoder next to a loaded ResNet: its mask-input conv1_extra is fresh; a backbone built without
    weights is fresh throughout; with encoder_lr_mult_fresh=None nothing changes."""
    from voszoo.backbones.resnet import ResNetBackbone

    source = tmp_path / "resnet18.pth"
    torch.save(ResNetBackbone(depth=18).state_dict(), source)

    class TwoEncoders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.memory_encoder = ResNetBackbone(depth=18, weights=str(source), extra_input_channels=2)
            self.mask_encoder = ResNetBackbone(depth=18, image_channels=1)
            self.head = nn.Conv2d(256, 2, 1)

    model = TwoEncoders()
    fresh = fresh_parameter_names(model)
    assert "memory_encoder.conv1_extra.weight" in fresh and "memory_encoder.conv1.weight" not in fresh
    assert {n for n, _ in model.mask_encoder.named_parameters()} == {
        n.removeprefix("mask_encoder.") for n in fresh if n.startswith("mask_encoder.")
    }
    groups = param_groups(model, lr=1.0, weight_decay=0.1, encoder_lr_mult=0.1, encoder_lr_mult_fresh=1.0)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate[id(model.memory_encoder.conv1_extra.weight)] == 1.0 and rate[id(model.mask_encoder.conv1.weight)] == 1.0
    assert rate[id(model.memory_encoder.layer1[0].conv1.weight)] == pytest.approx(0.1)
    assert rate[id(model.head.weight)] == 1.0
    plain = param_groups(model, lr=1.0, weight_decay=0.1, encoder_lr_mult=0.1)
    assert {g["name"] for g in plain} == {"encoder/decay", "encoder/no_decay", "other/decay", "other/no_decay"}
