"""Inference fast paths: torch.compile of the hot modules (with its eager fallback), channels-last, amp spelling."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from tiny_models import AffinityModel

import voszoo
from voszoo.inference.fast_paths import (
    GuardedCompile,
    channels_last_encoders,
    compile_hot_modules,
    encoder_module_names,
    hot_module_names,
    restore_eager,
    use_channels_last,
)
from voszoo.inference.session import InferenceSession
from voszoo.memory import KeepAll

LOGGER = "voszoo.inference.fast_paths"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with empty dynamo caches, so that no test runs into the recompile limit of another's."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def failing_backend(graph_module, example_inputs):
    """A torch.compile backend that always fails, like inductor on a machine without a C++ compiler."""
    raise RuntimeError("forced failure: no C++ compiler")


def tiny_video(size: int = 32, frames: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    labels = np.zeros((size, size), np.uint8)
    labels[2 : size // 2, 2 : size // 2] = 1
    labels[size // 2 + 2 : size - 2, size // 3 : size - 2] = 2
    return images, labels


def session_probs(model, images, labels, **kwargs) -> list[torch.Tensor]:
    session = InferenceSession(model, policy_factory=KeepAll, **kwargs)
    return [session.step(image, labels if t == 0 else None).probs for t, image in enumerate(images)]


def tiny_model() -> AffinityModel:
    torch.manual_seed(0)
    return AffinityModel(channels=8, pool=2).eval()


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("stm_r18", ("query_encoder", "memory_encoder", "reader", "decoder")),
        ("mga_r18", ("query_encoder", "memory_encoder", "reader", "decoder")),
        ("munet_r18", ("query_encoder", "memory_encoder", "reader", "decoder")),
        ("sitvos_r18", ("encoder", "mask_encoder", "transformer", "decoder")),
        ("aot_t", ("encoder", "LSTT", "decoder")),
        ("batman_light", ("encoder", "flow_encoder", "transformer", "decoder")),
    ],
)
def test_hot_modules_of_every_method(preset: str, expected: tuple[str, ...]) -> None:
    assert hot_module_names(voszoo.create_model(preset)) == expected


def test_unknown_model_class_and_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="AffinityModel.*names="):
        hot_module_names(tiny_model())
    with pytest.raises(ValueError, match="no submodule 'backbone'.*embed"):
        compile_hot_modules(tiny_model(), names=["backbone"])
    with pytest.raises(ValueError, match="sequence of submodule names"):
        compile_hot_modules(tiny_model(), names="embed")


@pytest.mark.slow
def test_compiled_model_matches_eager_logits(caplog: pytest.LogCaptureFixture) -> None:
    """Default backend (inductor, C++ code generation on CPU); if it cannot compile here, the fallback must give
    exactly the eager outputs."""
    images, labels = tiny_video()
    model = tiny_model()
    reference = session_probs(model, images, labels)  # eager: the naive reference
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        wrappers = compile_hot_modules(model, names=["embed"])
        compiled = session_probs(model, images, labels)
    wrapper = wrappers["embed"]
    assert model.embed.forward is wrapper
    if wrapper.failed:  # no working compiler on this machine: the fallback path
        assert len([r for r in caplog.records if "embed" in r.getMessage()]) == 1
        for got, want in zip(compiled, reference, strict=True):
            assert torch.equal(got, want)
    else:
        assert wrapper.compiled_calls == len(images)
        for got, want in zip(compiled, reference, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_preset_through_the_session_matches_eager() -> None:
    """A real preset: every hot module is traced by dynamo (the ``eager`` backend, no code generation, to keep the
    test fast) and gives the eager logits; the reader sees a growing memory, i.e. a recompile."""
    torch.manual_seed(0)
    model = voszoo.create_model("stm_r18").eval()
    images, labels = tiny_video(size=32, frames=3)
    reference = session_probs(model, images, labels)
    keys = list(model.state_dict())
    wrappers = compile_hot_modules(model, backend="eager")
    assert sorted(wrappers) == sorted(["query_encoder", "memory_encoder", "reader", "decoder"])
    compiled = session_probs(model, images, labels)
    for got, want in zip(compiled, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert all(not w.failed and w.compiled_calls > 0 for w in wrappers.values()), wrappers
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefixes: checkpoints stay loadable
    assert sorted(restore_eager(model)) == sorted(wrappers)
    assert "forward" not in model.reader.__dict__


def test_failing_backend_falls_back_to_eager_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    images, labels = tiny_video()
    model = tiny_model()
    reference = session_probs(model, images, labels)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        wrappers = compile_hot_modules(model, names=["embed"], backend=failing_backend)
        first = session_probs(model, images, labels)
        second = session_probs(model, images, labels)  # a second video: no second warning, no second attempt
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "embed" in warnings[0] and "forced failure" in warnings[0], warnings
    assert wrappers["embed"].failed and wrappers["embed"].compiled_calls == 0
    for outputs in (first, second):
        for got, want in zip(outputs, reference, strict=True):
            assert torch.equal(got, want)


def test_input_errors_are_raised_not_taken_for_compiler_failures() -> None:
    model = tiny_model()
    wrapper = compile_hot_modules(model, names=["embed"], backend="eager")["embed"]
    with pytest.raises(RuntimeError, match="channels"):
        model.embed(torch.zeros(1, 5, 8, 8))  # 5 channels into a 3-channel convolution
    assert not wrapper.failed
    out = model.embed(torch.zeros(1, 3, 8, 8))
    assert out.shape == (1, 8, 8, 8) and wrapper.compiled_calls == 1


def test_torch_compile_unavailable_leaves_the_model_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = voszoo.create_model("stm_r18")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert compile_hot_modules(model) == {}
    assert len(caplog.records) == 1 and "unavailable" in caplog.records[0].getMessage()
    assert not any(isinstance(m.__dict__.get("forward"), GuardedCompile) for m in model.modules())


def test_compiling_again_keeps_the_wrapper_unless_the_options_change() -> None:
    model = tiny_model()
    first = compile_hot_modules(model, names=["embed"], backend="eager")["embed"]
    assert compile_hot_modules(model, names=["embed"], backend="eager")["embed"] is first
    other = compile_hot_modules(model, names=["embed"], backend="aot_eager")["embed"]
    assert other is not first and model.embed.forward is other
    assert other.eager.__func__ is torch.nn.Conv2d.forward  # not a wrapper of the previous wrapper


def test_a_deep_copy_of_a_compiled_model_computes_with_its_own_weights() -> None:
    model = tiny_model()
    original = compile_hot_modules(model, names=["embed"], backend="eager")["embed"]
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.embed.weight.mul_(2.0)
    x = torch.randn(1, 3, 8, 8)
    expected = torch.nn.functional.conv2d(x, twin.embed.weight, twin.embed.bias, padding=1)
    torch.testing.assert_close(twin.embed(x), expected, atol=1e-6, rtol=0)
    copied = twin.embed.__dict__["forward"]
    assert isinstance(copied, GuardedCompile) and copied is not original and copied.compiled_calls == 1


def test_session_compile_modules_flag_compiles_the_presets_hot_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: calls.append(options) or fn)
    model = voszoo.create_model("aot_t")
    InferenceSession(model, policy_factory=KeepAll, compile_modules=True)
    assert len(calls) == 3 and isinstance(model.LSTT.__dict__["forward"], GuardedCompile)
    with pytest.raises(ValueError, match="AffinityModel"):
        InferenceSession(tiny_model(), policy_factory=KeepAll, compile_modules=True)


def test_channels_last_is_a_no_op_on_cpu_and_amp_none_means_float32(caplog: pytest.LogCaptureFixture) -> None:
    images, labels = tiny_video()
    model = tiny_model()
    reference = session_probs(model, images, labels, channels_last=False)
    assert use_channels_last(model, device="cpu") is False
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert encoder_module_names(model) == () and channels_last_encoders(model) == []
    assert "AffinityModel declares no encoder_modules, its encoders stay NCHW" in caplog.text  # not silently
    assert model.embed.weight.is_contiguous()  # still NCHW
    for got, want in zip(session_probs(model, images, labels, channels_last=True, amp="none"), reference, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="amp must be"):
        InferenceSession(model, policy_factory=KeepAll, amp="fp32")


def test_channels_last_converts_4d_weights_for_a_cuda_device() -> None:
    """The conversion needs no GPU to check: the device argument alone decides (the model is not moved)."""
    model = tiny_model()
    assert use_channels_last(model, device="cuda") is True
    assert model.embed.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.embed.weight.is_contiguous()


@pytest.mark.parametrize(
    ("preset", "encoders"),
    [
        ("stm_r18", ["query_encoder", "memory_encoder"]),
        ("sitvos_r18", ["encoder", "mask_encoder"]),
        ("aot_t", ["encoder"]),
        ("batman_light", ["encoder", "flow_encoder"]),
    ],
)
def test_channels_last_encoders_on_cpu_keep_the_numbers_and_the_interface(preset: str, encoders: list[str]) -> None:
    """The CPU fast path: encoder weights in NHWC, their outputs handed back in NCHW, the state dict unchanged, and
    the session's probabilities equal to the plain NCHW run up to float rounding."""
    images, labels = tiny_video(size=64)
    torch.manual_seed(0)
    model = voszoo.create_model(preset).eval()
    keys = list(model.state_dict())
    reference = session_probs(model, images, labels, channels_last=False)
    assert channels_last_encoders(model) == encoders
    assert channels_last_encoders(model) == encoders  # idempotent: no second set of hooks
    assert all(len(getattr(model, name)._forward_hooks) == 1 for name in encoders)
    first_conv = next(m for m in getattr(model, encoders[0]).modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last) and not first_conv.weight.is_contiguous()
    feats = model.encode(torch.randn(1, 3, 64, 64))
    assert all(t.is_contiguous() for t in feats.maps.values())
    assert list(model.state_dict()) == keys
    for got, want in zip(session_probs(model, images, labels), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
