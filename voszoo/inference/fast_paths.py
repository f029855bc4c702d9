"""Inference fast paths: ``torch.compile`` of a model's hot submodules with an eager fallback, and channels-last.

**Compilation.** :func:`compile_hot_modules` compiles the submodules where inference spends its time: the image
encoder(s) (backbone), the matcher (STM's memory reader, SITVOS's interactive transformer, AOT's LSTT, BATMAN's
bilateral transformer) and the decoder, as each model declares them (``hot_modules``, ``encoder_modules``:
:class:`voszoo.models.base.VOSModel`); this module knows no model class. Each one's ``forward`` is
replaced, on that module instance, by a :class:`GuardedCompile`: the module is not wrapped or re-registered, so the
model's ``state_dict`` keys, hooks and ``isinstance`` checks are unchanged, and :func:`restore_eager` undoes it.
Compilation happens lazily at a module's first call (``torch.compile`` semantics). If ``torch.compile`` is missing or
refuses to wrap (unsupported Python), one warning is logged and the model stays eager. If a compiled call raises
(e.g. inductor finds no C++ compiler, a backend fails), the call is repeated eagerly: when the eager call succeeds the
failure was the compiler's, so one warning is logged and that module runs eagerly from then on; when the eager call
fails too, the input is at fault and the eager error is raised, as without compilation. A failed compiled call is
assumed to have no side effects (true of these modules at inference: they are pure functions of their inputs).
``copy.deepcopy`` of a compiled model compiles the copy's modules anew; pickling a whole compiled model
(``torch.save(model)``) is not supported: save its ``state_dict`` or call :func:`restore_eager` first.

Recompilation: the matcher's memory grows every memorised frame, so its input shapes change; with ``dynamic=None``
(torch's default) the second shape marks the changing dimensions dynamic and later frames reuse that graph. Past
torch's recompile limit a module runs eagerly (torch logs a warning; ``compiled_calls`` still counts those calls).

**Channels-last.** :func:`use_channels_last` converts a whole model's 4-D weights to ``torch.channels_last`` on CUDA,
where cuDNN's NHWC convolutions (tensor cores under bf16/fp16) are the fast ones. On the CPU only the image encoders
(:func:`encoder_module_names`) go channels-last (:func:`channels_last_encoders`): oneDNN runs a ResNet-50 to layer3
at 480p 1.6x faster in NHWC on this 2-core Xeon (1.92 s -> 1.18 s for two frames), while the 256-channel 3x3
convolutions of the STM decoder ran 10 % slower in NHWC, so the encoders' outputs are handed back in the default
layout (a forward hook) and nothing downstream sees a channels-last tensor. Same numbers up to float rounding (a
different summation order inside the convolution).

**Autocast.** bf16/fp16 autocast on CUDA is the inference session's ``amp`` argument (``"bf16"``, ``"fp16"``, or
``None``/``"none"``, the trainer's spelling); it is ignored on CPU.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "GuardedCompile",
    "channels_last_encoders",
    "compile_hot_modules",
    "encoder_module_names",
    "hot_module_names",
    "restore_eager",
    "use_channels_last",
]

logger = logging.getLogger(__name__)


def hot_module_names(model: nn.Module) -> tuple[str, ...]:
    """Names of ``model``'s hot submodules, as the model declares them (``hot_modules``, see
    :class:`voszoo.models.base.VOSModel`), leaving out those set to None on this instance (optional parts).

    STM, MGA and MUNet declare ``query_encoder``, ``memory_encoder``, ``reader``, ``decoder``; SITVOS ``encoder``,
    ``mask_encoder``, ``transformer``, ``decoder``; AOT and BATMAN ``encoder`` (BATMAN also ``flow_encoder``), the
    transformer under its official name and ``decoder``. Raises ValueError if the model declares none (pass
    ``names`` to :func:`compile_hot_modules` then) or names an attribute it does not have.
    """
    return _declared_modules(model, "hot_modules", required=True)


def encoder_module_names(model: nn.Module) -> tuple[str, ...]:
    """The image encoders the model declares (``encoder_modules``), without those set to None; empty if none."""
    return _declared_modules(model, "encoder_modules", required=False)


def _declared_modules(model: nn.Module, attribute: str, *, required: bool) -> tuple[str, ...]:
    """The submodule names of ``model.<attribute>`` whose attribute is a module (None: an optional part left out)."""
    name = type(model).__name__
    declared = getattr(model, attribute, None)
    if declared is None:
        if not required:
            return ()
        raise ValueError(
            f"{name} declares no {attribute} (a tuple of submodule attribute names on the class, see "
            f"voszoo.models.base.VOSModel); declare them, or pass names=[...] to compile_hot_modules"
        )
    if isinstance(declared, str) or not all(isinstance(item, str) for item in declared):
        raise ValueError(f"{name}.{attribute} must be a tuple of submodule names, got {declared!r}")
    found = []
    for item in declared:
        if not hasattr(model, item):
            children = [child for child, _ in model.named_children()]
            raise ValueError(f"{name}.{attribute} names {item!r}, which {name} does not have; its children: {children}")
        module = getattr(model, item)
        if module is not None and not isinstance(module, nn.Module):
            raise ValueError(f"{name}.{attribute} names {item!r}, a {type(module).__name__}, not a module")
        if module is not None:
            found.append(item)
    return tuple(found)


def _with_format(value: Any, memory_format: torch.memory_format) -> Any:
    """``value`` with every 4-D tensor inside (tensors, lists, tuples, dicts) made contiguous in ``memory_format``."""
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=memory_format) if value.ndim == 4 else value
    if isinstance(value, dict):
        return {k: _with_format(v, memory_format) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_with_format(v, memory_format) for v in value)
    return value


def channels_last_encoders(model: nn.Module) -> list[str]:
    """Run ``model``'s image encoders in channels-last (the CPU fast path, see the module docstring).

    Converts each encoder's 4-D weights and installs a forward pre-hook (4-D inputs to channels-last) and a forward
    hook (4-D outputs back to the default layout), so callers and state dicts are unchanged. Idempotent. Returns the
    converted submodule names (empty for a model that declares no encoders; one that does not declare them at all is
    named in an info log line, so a new model's missing declaration is visible).
    """
    if getattr(model, "encoder_modules", None) is None:
        logger.info("channels-last: %s declares no encoder_modules, its encoders stay NCHW", type(model).__name__)
    converted = []
    for name in encoder_module_names(model):
        module = getattr(model, name)
        if not getattr(module, "_voszoo_channels_last", False):
            module.to(memory_format=torch.channels_last)
            module.register_forward_pre_hook(lambda m, args: _with_format(args, torch.channels_last))
            module.register_forward_hook(lambda m, args, out: _with_format(out, torch.contiguous_format))
            module._voszoo_channels_last = True
        converted.append(name)
    return converted


class GuardedCompile:
    """A module's compiled ``forward`` that falls back to the eager one if the compiled call fails.

    Installed as the ``forward`` attribute of one module instance by :func:`compile_hot_modules`. Attributes:
    ``name`` (the submodule's name), ``options`` (``mode``, ``backend``, ``dynamic`` as given), ``eager`` (the
    original bound ``forward``), ``failed`` (True once the module fell back to eager), ``compiled_calls`` (calls served
    by the compiled function; a recompile-limit fallback inside torch still counts).
    """

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any], *, name: str, options: dict) -> None:
        self.eager = eager
        self.compiled = compiled
        self.name = name
        self.options = dict(options)
        self.failed = False
        self.compiled_calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - told apart from an input error by the eager retry below
            out = self.eager(*args, **kwargs)  # raises (the caller's problem) if the input is at fault
            self.failed = True
            logger.warning(
                "torch.compile of %s failed (%s); running %s eagerly from now on",
                self.name,
                _describe(error),
                self.name,
            )
            return out
        self.compiled_calls += 1
        return out

    def __deepcopy__(self, memo: dict) -> GuardedCompile:
        """A copied model (e.g. an EMA copy) gets its own compiled forward, bound to the copied module."""
        eager = copy.deepcopy(self.eager, memo)  # a bound method: its module comes from the memo, i.e. the copy
        twin = GuardedCompile(eager, torch.compile(eager, **self.options), name=self.name, options=self.options)
        twin.failed = self.failed
        return twin

    def __repr__(self) -> str:
        state = "eager fallback" if self.failed else f"{self.compiled_calls} compiled calls"
        return f"GuardedCompile({self.name}, {self.options}, {state})"


def _describe(error: BaseException) -> str:
    """``"Outer: Root: first line of the root cause"`` of a chained error (dynamo wraps the backend's error)."""
    root = error
    for _ in range(10):  # bounded: a cause chain could loop
        inner = root.__cause__ or getattr(root, "inner_exception", None)
        if not isinstance(inner, BaseException):
            break
        root = inner
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0][:300] if lines else ''}"
    return text if root is error else f"{type(error).__name__}: {text}"


def compile_hot_modules(
    model: nn.Module,
    *,
    names: Sequence[str] | None = None,
    mode: str | None = None,
    backend: str | Callable[..., Any] = "inductor",
    dynamic: bool | None = None,
) -> dict[str, GuardedCompile]:
    """Compile ``model``'s hot submodules in place, each with an eager fallback (see the module docstring).

    Args:
        model: any module; its submodules ``names`` (dotted paths allowed) get a :class:`GuardedCompile` forward.
        names: submodules to compile; None: the model's declared ones (:func:`hot_module_names`).
        mode: ``torch.compile`` mode (None: default; ``"reduce-overhead"``, ``"max-autotune"`` on GPU).
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"``/``"eager"`` trace without generating
            code; or a backend callable).
        dynamic: ``torch.compile``'s ``dynamic`` (None: automatic dynamic shapes after the first recompile).

    Returns {name: GuardedCompile} of the compiled submodules; {} if ``torch.compile`` is unavailable (one warning).
    Idempotent: a submodule already compiled with the same options keeps its wrapper (and torch's compiled graphs),
    one compiled with other options is recompiled.
    """
    if names is None:
        names = hot_module_names(model)
    if isinstance(names, str):
        raise ValueError(f"compile_hot_modules: names must be a sequence of submodule names, got the string {names!r}")
    modules = {}
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            children = [child for child, _ in model.named_children()]
            raise ValueError(
                f"compile_hot_modules: {type(model).__name__} has no submodule {name!r}; its children: {children}"
            ) from None
        modules[name] = module
    options = {"mode": mode, "backend": backend, "dynamic": dynamic}
    compile_fn = getattr(torch, "compile", None)
    wrappers: dict[str, GuardedCompile] = {}
    installed: list[nn.Module] = []
    for name, module in modules.items():
        current = module.__dict__.get("forward")
        if isinstance(current, GuardedCompile):
            if current.options == options:
                wrappers[name] = current
                continue
            del module.forward
        eager = module.forward
        try:
            if compile_fn is None:
                raise RuntimeError(f"torch {torch.__version__} has no torch.compile")
            compiled = compile_fn(eager, **options)
        except Exception as error:  # noqa: BLE001 - unavailable compiler: stay eager, say so once
            logger.warning("torch.compile is unavailable (%s: %s); the model runs eagerly", type(error).__name__, error)
            for done in installed:
                del done.forward
            return {}
        wrapper = GuardedCompile(eager, compiled, name=name, options=options)
        module.forward = wrapper  # an instance attribute: nn.Module.__call__ calls it, the class is untouched
        installed.append(module)
        wrappers[name] = wrapper
    return wrappers


def restore_eager(model: nn.Module) -> list[str]:
    """Remove every :class:`GuardedCompile` forward from ``model``'s submodules; returns their names."""
    restored = []
    for name, module in model.named_modules():
        if isinstance(module.__dict__.get("forward"), GuardedCompile):
            del module.forward
            restored.append(name)
    return restored


def use_channels_last(model: nn.Module, *, device: torch.device | str) -> bool:
    """Convert ``model``'s 4-D parameters and buffers to ``torch.channels_last`` if ``device`` is CUDA.

    Returns True if converted, False on any other device (no-op; the CPU path is :func:`channels_last_encoders`).
    Inputs should then be made channels-last too (``x.contiguous(memory_format=torch.channels_last)``), which the
    inference session does.
    """
    if torch.device(device).type != "cuda":
        return False
    model.to(memory_format=torch.channels_last)
    return True
