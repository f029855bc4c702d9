"""Flush-to-zero scoped to an inference step: on in every intra-op thread inside, restored outside, same numbers."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from tiny_models import AffinityModel

from voszoo.inference.denormals import (
    denormals_flushed,
    flush_denormals,
    flush_denormals_available,
    resolve_flush_denormal,
)
from voszoo.inference.session import InferenceSession
from voszoo.layers.memory_read import memory_affinity, space_time_memory_read
from voszoo.memory import KeepAll
from voszoo.models.registry import build_memory_policy, build_model, random_weights_config

TINY = torch.finfo(torch.float32).tiny
needs_flush = pytest.mark.skipif(not flush_denormals_available(), reason="no flush-to-zero on this CPU / runtime")


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def intra_op_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's intra-op thread count for the test (the test process runs one, tests/conftest.py), restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        if not flush_denormals_available():
            pytest.skip(f"no flush-to-zero on every thread with {request.param} threads here")
        yield request.param
    finally:
        torch.set_num_threads(saved)


def subnormal_survives() -> bool:
    """The observable of the flag in the calling thread: 1e-40 * 1.0 is a subnormal, or 0 when flushed."""
    return bool(torch.tensor(1e-40) * 1.0 != 0)


def tiny_video(size: int = 64, frames: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    labels = np.zeros((size, size), np.uint8)
    labels[4 : size // 2, 4 : size // 2] = 1
    labels[size // 2 + 4 : size - 4, size // 3 : size - 4] = 2
    return images, labels


@needs_flush
def test_a_step_flushes_on_every_thread_and_restores_even_when_it_raises(intra_op_threads: int) -> None:
    torch.manual_seed(0)
    model = AffinityModel(channels=8, pool=2).eval()
    seen: list[float] = []
    segment = model.segment

    def spying_segment(memory, feats):
        seen.append(denormals_flushed())
        if len(seen) == 2:
            raise RuntimeError("boom")
        return segment(memory, feats)

    model.segment = spying_segment
    session = InferenceSession(model, policy_factory=KeepAll)
    assert session.flush_denormal is True  # auto on a CPU device
    images, labels = tiny_video(32)
    session.step(images[0], labels)
    session.step(images[1])
    assert subnormal_survives() and denormals_flushed() == 0.0
    with pytest.raises(RuntimeError, match="boom"):
        session.step(images[2])
    assert seen == [1.0, 1.0]  # every thread flushed inside the step
    assert subnormal_survives() and denormals_flushed() == 0.0  # and none outside, after an exception too


@needs_flush
def test_the_previous_state_of_each_thread_comes_back_and_nesting_is_a_no_op(intra_op_threads: int) -> None:
    try:
        torch.set_flush_denormal(True)  # the user's own call: the calling thread only
        mixed = denormals_flushed()
        assert mixed == (1.0 if intra_op_threads == 1 else 0.5)  # the other thread does not flush
        with flush_denormals() as active:
            assert active and denormals_flushed() == 1.0
            with flush_denormals() as nested:
                assert nested
            assert denormals_flushed() == 1.0  # the inner block did not restore
        assert denormals_flushed() == mixed and not subnormal_survives()
    finally:
        torch.set_flush_denormal(False)
    with flush_denormals(False) as active:
        assert not active and subnormal_survives()


@needs_flush
def test_another_thread_is_not_affected(intra_op_threads: int) -> None:
    requests: queue.Queue[bool] = queue.Queue()
    answers: queue.Queue[bool] = queue.Queue()

    def other() -> None:
        while requests.get():
            answers.put(subnormal_survives())

    thread = threading.Thread(target=other)
    thread.start()
    try:
        with flush_denormals():
            requests.put(True)
            assert answers.get(timeout=10) is True
    finally:
        requests.put(False)
        thread.join()


def test_the_setting_resolves_auto_to_the_cpu_and_rejects_typos() -> None:
    assert resolve_flush_denormal("auto", device="cpu") and not resolve_flush_denormal("auto", device="cuda")
    assert resolve_flush_denormal("on", device="cuda") and not resolve_flush_denormal(False, device="cpu")
    with pytest.raises(ValueError, match="auto, on/true or off/false"):
        resolve_flush_denormal("sometimes", device="cpu")


def test_a_sharp_memory_read_has_subnormals_and_flushing_keeps_it_within_1e_6() -> None:
    generator = torch.Generator().manual_seed(0)
    memory_key = 5.0 * torch.randn(1, 16, 2, 8, 8, generator=generator)  # sharp affinities, as trained keys give
    memory_value = torch.randn(1, 8, 2, 8, 8, generator=generator)
    query_key = 5.0 * torch.randn(1, 16, 8, 8, generator=generator)
    affinity = memory_affinity(memory_key, query_key)
    assert ((affinity > 0) & (affinity < TINY)).any()  # the case being tested
    reference = space_time_memory_read(memory_key, memory_value, query_key)
    with flush_denormals():
        flushed = space_time_memory_read(memory_key, memory_value, query_key)
    torch.testing.assert_close(flushed, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", ["stm_r18", "aot_t"])
def test_preset_logits_agree_within_1e_6_with_and_without_flushing(preset: str) -> None:
    cfg = random_weights_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images, labels = tiny_video()

    def logits(flush: bool) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        segment = type(model).segment
        model.segment = lambda memory, feats: outputs.append(segment(model, memory, feats)) or outputs[-1]
        session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg), flush_denormal=flush)
        for index, image in enumerate(images):
            session.step(image, labels if index == 0 else None)
        del model.segment
        return outputs

    reference, flushed = logits(False), logits(True)
    assert len(reference) == len(flushed) == len(images) - 1
    for got, want in zip(flushed, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _enter_and_report(results: multiprocessing.queues.Queue) -> None:
    with flush_denormals() as active:
        results.put((active, torch.get_num_threads()))


@needs_flush
@pytest.mark.parametrize("intra_op_threads", [2], indirect=True)
def test_a_forked_child_does_not_call_the_openmp_runtime_its_parent_used(intra_op_threads: int) -> None:
    with flush_denormals() as active:  # the parent reaches libgomp's thread pool, which a fork does not carry over
        assert active
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_enter_and_report, args=(results,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung inside flush_denormals")
    assert child.exitcode == 0
    assert results.get(timeout=5) == (False, torch.get_num_threads())  # nothing done, one log line
