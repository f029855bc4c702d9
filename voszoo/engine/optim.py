"""Optimizer parameter groups, learning-rate schedules and parameter freezing.

Parameter groups (:func:`build_optimizer`): the encoder (backbone) learns at ``lr * encoder_lr_mult`` and norms and
biases get no weight decay, as in STM / AOT training recipes. Every group carries ``lr_mult``; a schedule sets
``group["lr"] = schedule_lr * group["lr_mult"]`` before every optimizer step.

Name patterns (``encoder_prefixes``, ``freeze_prefixes``) match parameter names at dot boundaries: ``"a.b"`` matches
``a.b`` and everything under it (``a.b.c.weight``) but not ``a.bc``; a pattern starting with a dot matches anywhere
in the name, so ``".layer1"`` matches ``query_encoder.backbone.layer1.0.conv1.weight``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "OPTIMIZERS",
    "build_optimizer",
    "fresh_parameter_names",
    "optimizer_from_config",
    "param_groups",
    "encoder_prefixes_of",
    "matches_any",
    "Schedule",
    "PolyWarmupSchedule",
    "ConstantSchedule",
    "freeze_batchnorm",
    "freeze_parameters",
]

OPTIMIZERS = ("adamw", "adam", "sgd")


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether parameter/module ``name`` matches one of ``patterns`` (see the module docstring)."""
    dotted = f".{name}."
    for pattern in patterns:
        if pattern.startswith("."):
            if f"{pattern.rstrip('.')}." in dotted:
                return True
        elif name == pattern or name.startswith(f"{pattern.rstrip('.')}."):
            return True
    return False


def encoder_prefixes_of(model: nn.Module) -> list[str] | None:
    """The model's own encoder prefixes (class attribute or method ``encoder_parameter_prefixes``), else None."""
    declared = getattr(model, "encoder_parameter_prefixes", None)
    if declared is None:
        return None
    prefixes = declared() if callable(declared) else declared
    if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
        raise ValueError(
            f"{type(model).__name__}.encoder_parameter_prefixes must be a sequence of strings, got {prefixes!r}"
        )
    return list(prefixes)


def fresh_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that no pretrained weights filled, as declared by submodules with a
    ``fresh_parameter_prefixes`` attribute (prefixes relative to the submodule; ``""`` = all of it), e.g. a
    :class:`voszoo.backbones.ResNetBackbone` built without weights, or its mask-input ``conv1_extra``."""
    fresh: set[str] = set()
    for module_name, module in model.named_modules():
        prefixes = getattr(module, "fresh_parameter_prefixes", None)
        if not prefixes:
            continue
        base = f"{module_name}." if module_name else ""
        for name, _ in module.named_parameters():
            if any(name.startswith(prefix) for prefix in prefixes):
                fresh.add(base + name)
    return fresh


def _is_encoder_default(name: str) -> bool:
    module_path = name.rsplit(".", 1)[0] if "." in name else ""
    return "encoder" in module_path or "backbone" in module_path


def _no_weight_decay(name: str, param: nn.Parameter, exempt: Sequence[str] = ()) -> bool:
    last = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or last.endswith("bias") or "norm" in name or "bn" in name or any(k in name for k in exempt)


def no_weight_decay_keys_of(model: nn.Module) -> tuple[str, ...]:
    """Name fragments the model exempts from weight decay beyond the default rule (class attribute
    ``no_weight_decay_keys``, e.g. AOT's ``relative_emb_v`` and ``conv_out``), else ()."""
    declared = getattr(model, "no_weight_decay_keys", ())
    if isinstance(declared, str) or not all(isinstance(k, str) for k in declared):
        raise ValueError(f"{type(model).__name__}.no_weight_decay_keys must be a sequence of strings, got {declared!r}")
    return tuple(declared)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    encoder_lr_mult: float = 0.1,
    encoder_prefixes: Sequence[str] | None = None,
    encoder_lr_mult_fresh: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into up to four groups (encoder or not x decay or not).

    A parameter belongs to the encoder if its name matches ``encoder_prefixes``; if None, the model's
    ``encoder_parameter_prefixes`` (attribute or method) are used; if the model declares none, parameters whose
    module path contains ``"encoder"`` or ``"backbone"``. No weight decay for 1-D parameters, parameters named
    ``*bias``, ``*norm*`` or ``*bn*``, and names containing one of the model's ``no_weight_decay_keys``. Frozen
    parameters (``requires_grad=False``) are left out. Each group has ``params``, ``lr`` (= ``lr * lr_mult``),
    ``lr_mult``, ``weight_decay`` and a ``name`` such as ``"encoder/no_decay"``.

    ``encoder_lr_mult_fresh``: the multiplier of encoder parameters that no pretrained weights filled
    (:func:`fresh_parameter_names`: a backbone built without weights, STM's mask-input convolution next to a loaded
    ResNet), in groups named ``"encoder_fresh/..."``. None: they get ``encoder_lr_mult`` like the rest. The small
    encoder rate protects pretrained features (AOT App. A.1.2); a fresh layer has none to protect.
    """
    if isinstance(encoder_prefixes, str):
        raise ValueError(f"encoder_prefixes must be a sequence of strings, not the string {encoder_prefixes!r}")
    prefixes = list(encoder_prefixes) if encoder_prefixes is not None else encoder_prefixes_of(model)
    is_encoder: Callable[[str], bool] = (
        _is_encoder_default if prefixes is None else (lambda name: matches_any(name, prefixes))
    )
    exempt = no_weight_decay_keys_of(model)
    fresh = fresh_parameter_names(model) if encoder_lr_mult_fresh is not None else set()
    mults = {"encoder": float(encoder_lr_mult), "encoder_fresh": float(encoder_lr_mult_fresh or 0.0), "other": 1.0}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            kind = ("encoder_fresh" if name in fresh else "encoder") if is_encoder(name) else "other"
            groups.setdefault((kind, _no_weight_decay(name, param, exempt)), []).append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all are frozen)")
    result = []
    order = {"other": 0, "encoder": 1, "encoder_fresh": 2}  # the order of earlier versions: checkpoints still resume
    for (kind, no_decay), params in sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1])):
        result.append(
            {
                "params": params,
                "lr": lr * mults[kind],
                "lr_mult": mults[kind],
                "weight_decay": 0.0 if no_decay else float(weight_decay),
                "name": f"{kind}/{'no_decay' if no_decay else 'decay'}",
            }
        )
    return result


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    encoder_lr_mult: float = 0.1,
    encoder_prefixes: Sequence[str] | None = None,
    encoder_lr_mult_fresh: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD (with ``momentum``) over :func:`param_groups` of ``model``.

    Build it after freezing (``freeze_batchnorm`` / ``freeze_parameters``) so that frozen parameters are left out;
    the optimizer skips parameters without gradients in any case.
    """
    if lr <= 0:
        raise ValueError(f"build_optimizer: lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"build_optimizer: weight_decay must be >= 0, got {weight_decay}")
    groups = param_groups(
        model,
        lr=lr,
        weight_decay=weight_decay,
        encoder_lr_mult=encoder_lr_mult,
        encoder_prefixes=encoder_prefixes,
        encoder_lr_mult_fresh=encoder_lr_mult_fresh,
    )
    key = name.lower()
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"build_optimizer: unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


class Schedule:
    """A learning rate per optimizer step. ``apply(optimizer)`` before ``optimizer.step()``, ``step()`` after.

    The state is the number of steps taken; :meth:`state_dict` / :meth:`load_state_dict` restore it exactly.
    """

    def __init__(self) -> None:
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        """Learning rate (for ``lr_mult = 1``) of optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    @property
    def current_lr(self) -> float:
        return self.lr_at(self.last_step)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set every group's ``lr`` to ``current_lr * group["lr_mult"]`` (1 if absent); returns ``current_lr``."""
        lr = self.current_lr
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def step(self) -> None:
        self.last_step += 1

    def _hyperparameters(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "last_step": self.last_step, **self._hyperparameters()}

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore the step; returns the hyperparameters that differ from the saved ones (for a warning)."""
        if "last_step" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: no 'last_step' in {sorted(state)}")
        self.last_step = int(state["last_step"])
        current = {"kind": type(self).__name__, **self._hyperparameters()}
        return [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in current.items() if state.get(k) != v]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({args})"


class PolyWarmupSchedule(Schedule):
    """Linear warm-up, then polynomial decay to ``min_lr`` at ``total_steps`` (constant after).

    For step s (0-based): ``base_lr * (s + 1) / warmup_steps`` while ``s < warmup_steps`` (the first step already
    learns; the last warm-up step reaches ``base_lr``), then with ``p = (s - warmup_steps) / (total_steps -
    warmup_steps)`` clamped to [0, 1]: ``min_lr + (base_lr - min_lr) * (1 - p) ** power``. AOT and STM decay with
    ``power = 0.9``.
    """

    def __init__(
        self, *, base_lr: float, total_steps: int, warmup_steps: int = 0, power: float = 0.9, min_lr: float = 0.0
    ) -> None:
        super().__init__()
        if base_lr <= 0:
            raise ValueError(f"PolyWarmupSchedule: base_lr must be > 0, got {base_lr}")
        if total_steps < 1:
            raise ValueError(f"PolyWarmupSchedule: total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"PolyWarmupSchedule: warmup_steps must lie in [0, total_steps], got {warmup_steps}")
        if not 0 <= min_lr <= base_lr:
            raise ValueError(f"PolyWarmupSchedule: min_lr must lie in [0, base_lr={base_lr}], got {min_lr}")
        if power <= 0:
            raise ValueError(f"PolyWarmupSchedule: power must be > 0, got {power}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.min_lr = float(min_lr)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = 1.0 if span == 0 else min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * math.pow(1.0 - progress, self.power)

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "min_lr": self.min_lr,
        }


class ConstantSchedule(Schedule):
    """``base_lr`` after an optional linear warm-up (``base_lr * (s + 1) / warmup_steps`` for s < warmup_steps)."""

    def __init__(self, *, base_lr: float, warmup_steps: int = 0) -> None:
        super().__init__()
        if base_lr <= 0:
            raise ValueError(f"ConstantSchedule: base_lr must be > 0, got {base_lr}")
        if warmup_steps < 0:
            raise ValueError(f"ConstantSchedule: warmup_steps must be >= 0, got {warmup_steps}")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr

    def _hyperparameters(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps}


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train`` of a frozen BatchNorm layer: it stays in eval mode."""
    return nn.Module.train(self, False)


def _frozen_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Replacement ``forward`` of a frozen BatchNorm layer: the eval-mode affine map written out.

    ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))`` per channel, equal to ``F.batch_norm`` in eval
    mode. It avoids a bug of torch's CPU batch-norm backward (seen in torch 2.14): with a batch of one and a
    channels-last gradient whose batch stride is not the canonical one, the input gradient comes out wrong.
    """
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = scale * self.weight
    shift = -self.running_mean * scale
    if self.bias is not None:
        shift = shift + self.bias
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Put every BatchNorm layer in eval mode for good and stop training its affine parameters.

    Running statistics are no longer updated and the layer stays in eval mode across later ``model.train()`` calls
    (its ``train`` method is replaced; deep copies such as EMA models keep the behaviour). Layers with running
    statistics compute the eval-mode affine map explicitly (:func:`_frozen_forward`); the state dict is unchanged.
    Returns the names of the frozen layers. (:func:`voszoo.backbones.frozen.convert_frozen_batchnorm` instead
    replaces the layers by ``FrozenBatchNorm2d``, changing the state dict as the official AOT encoders do.)
    """
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = types.MethodType(_frozen_train, module)
            if module.running_mean is not None and module.running_var is not None:
                module.forward = types.MethodType(_frozen_forward, module)
            module.eval()
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
            frozen.append(name)
    return frozen


def freeze_parameters(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters whose names match ``prefixes``; returns their names.

    Every pattern must match at least one parameter (a typo would otherwise silently train the whole model).
    """
    if isinstance(prefixes, str):
        raise ValueError(f"freeze_prefixes must be a sequence of strings, not the string {prefixes!r}")
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(matches_any(name, [p]) for name in names)]
    if unmatched:
        tops = sorted({name.split(".")[0] for name in names})
        raise ValueError(
            f"freeze_prefixes {unmatched} match no parameter of {type(model).__name__}; "
            f"top-level modules: {tops} (a leading '.' matches anywhere, e.g. '.layer1')"
        )
    frozen = []
    for name, param in model.named_parameters():
        if matches_any(name, prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def optimizer_from_config(model: nn.Module, optim: Mapping[str, Any], **overrides: Any) -> torch.optim.Optimizer:
    """:func:`build_optimizer` from an ``optim`` config node as a plain dict (conf/optim/*.yaml: name, lr,
    weight_decay, betas, encoder_lr_mult, optional encoder_lr_mult_fresh); ``overrides`` replace its values."""
    values = {**dict(optim), **overrides}
    return build_optimizer(
        model,
        name=values["name"],
        lr=values["lr"],
        weight_decay=values["weight_decay"],
        betas=tuple(values["betas"]),
        encoder_lr_mult=values.get("encoder_lr_mult", 0.1),
        encoder_lr_mult_fresh=values.get("encoder_lr_mult_fresh"),
    )
