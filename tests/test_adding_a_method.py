"""Adding a method (docs/architecture.md, "Adding a method"): one model file in a package of one's own and one preset
YAML in a config folder, both outside voszoo and written here into a temporary folder. Nothing in voszoo is edited:
the registry lists and builds it, an inference session and a training step run it, and the fast paths (compile,
channels-last) and the stage timer take its parts from what the class declares."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from clips_util import tiny_clip
from torch import nn

import voszoo
from voszoo.inference.fast_paths import (
    GuardedCompile,
    channels_last_encoders,
    compile_hot_modules,
    hot_module_names,
    restore_eager,
)
from voszoo.inference.session import InferenceSession
from voszoo.models.registry import build_memory_policy, compose_model_config
from voszoo.stage_timing import StageTimer

MODEL_FILE = '''\
"""ToyMatch: a per-object method of one's own (a test's toy: affinity read of the memorised masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voszoo.memory import MemoryBank
from voszoo.models.base import FrameFeatures, VOSModel
from voszoo.models.per_object import aggregate_objects, memory_num_objects, update_presence


class ToyMatch(VOSModel):
    """encoder: image (B, 3, H/4, W/4) -> key (B, C, H/4, W/4); head: read mask (B*N, 1, h, w) -> (B*N, 2, h, w)."""

    multi_object = "per_object"
    stride = 4
    hot_modules = ("encoder", "head")   # what torch.compile compiles
    encoder_modules = ("encoder",)      # channels-last on the CPU
    decoder_module = "head"             # where the stage timer's "decoder" stage starts

    def __init__(self, *, encoder: nn.Module, head: nn.Module, criterion: nn.Module | None = None) -> None:
        super().__init__(criterion=criterion)
        self.encoder = encoder
        self.head = head

    def encode(self, image: Tensor) -> FrameFeatures:
        return FrameFeatures(image=image, maps={"s4": F.normalize(self.encoder(F.avg_pool2d(image, 4)), dim=1)})

    def memorize(self, memory: MemoryBank, feats: FrameFeatures, probs: Tensor, frame_index: int) -> None:
        memory_num_objects(memory, probs, where="ToyMatch.memorize")
        small = F.interpolate(probs, size=feats.maps["s4"].shape[-2:], mode="bilinear", align_corners=False)
        update_presence(memory, small[:, 1:], threshold=0.5)
        memory.write(frame_index, {"key": feats.maps["s4"], "mask": small[:, 1:]})

    def segment(self, memory: MemoryBank, feats: FrameFeatures) -> Tensor:
        num_objects = int(memory.state["num_objects"])
        keys = memory.stack("key", dim=2).flatten(2)  # (B, C, T*h*w)
        masks = memory.stack("mask", dim=2).flatten(2)  # (B, N, T*h*w)
        query = feats.maps["s4"]
        affinity = torch.softmax(8.0 * keys.transpose(1, 2) @ query.flatten(2), dim=1)  # (B, T*h*w, h*w)
        read = (masks @ affinity).unflatten(-1, query.shape[-2:])  # (B, N, h, w)
        logits = self.head(read.flatten(0, 1)[:, None])  # (B*N, 2, h, w)
        logits = F.interpolate(logits, size=feats.size, mode="bilinear", align_corners=False)
        return aggregate_objects(logits, memory, num_objects=num_objects, eps=1e-7)
'''

PRESET = """\
# toy_match: the preset of ToyMatch; its slots come from voszoo's groups (model/memory, model/criterion)
defaults:
  - memory: keep_all
  - criterion: cross_entropy
  - _self_

_target_: toymethods.toy_match.ToyMatch
name: toy_match
encoder: {_target_: torch.nn.Conv2d, in_channels: 3, out_channels: 8, kernel_size: 3, padding: 1}
head: {_target_: torch.nn.Conv2d, in_channels: 1, out_channels: 2, kernel_size: 1}
"""


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``<tmp>/code/toymethods/toy_match.py`` importable and allowed as a ``_target_``; returns ``<tmp>/conf``,
    which holds ``model/toy_match.yaml``."""
    package = tmp_path / "code" / "toymethods"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "toy_match.py").write_text(MODEL_FILE)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "toy_match.yaml").write_text(PRESET)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.setenv("VOSZOO_ALLOWED_TARGETS", "toymethods")
    yield tmp_path / "conf"
    for name in [name for name in sys.modules if name.split(".")[0] == "toymethods"]:
        del sys.modules[name]


def build(config_dir: Path) -> nn.Module:
    torch.manual_seed(0)
    return voszoo.create_model("toy_match", config_dir=config_dir)


def video(size: int = 32, frames: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    labels = np.zeros((size, size), np.uint8)
    labels[2:14, 2:14], labels[18:30, 10:30] = 1, 2
    return images, labels


def test_the_registry_builds_it_and_a_session_and_a_training_step_run_it(config_dir: Path) -> None:
    assert "toy_match" in voszoo.list_models(config_dir=config_dir) and "toy_match" not in voszoo.list_models()
    model = build(config_dir)
    assert type(model).__module__ == "toymethods.toy_match" and model.multi_object == "per_object"
    cfg = compose_model_config("toy_match", config_dir=config_dir)
    session = InferenceSession(model.eval(), policy_factory=lambda: build_memory_policy(cfg))
    images, labels = video()
    first = session.step(images[0], labels)
    assert np.array_equal(first.labels, labels)  # the given masks come back on the reference frame
    second = session.step(images[1])
    assert second.probs.shape == (3, 32, 32) and torch.allclose(second.probs.sum(0), torch.ones(32, 32), atol=1e-5)
    assert set(np.unique(second.labels)) <= {0, 1, 2}

    out = model.train()(tiny_clip())
    out["loss"].backward()
    assert out["logits"].shape == (2, 2, 3, 64, 64) and model.encoder.weight.grad.abs().sum() > 0


def test_compile_channels_last_and_the_stage_timer_use_what_it_declares(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(config_dir).eval()
    cfg = compose_model_config("toy_match", config_dir=config_dir)
    images, labels = video()
    eager = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg))
    reference = [eager.step(image, labels if t == 0 else None).probs for t, image in enumerate(images)]
    assert hot_module_names(model) == ("encoder", "head")
    assert channels_last_encoders(model) == ["encoder"]
    # torch.compile of exactly the declared parts (the eager backend: traced by dynamo, no code generated)
    torch._dynamo.reset()
    compiled = compile_hot_modules(model, backend="eager")
    assert sorted(compiled) == ["encoder", "head"]
    with StageTimer(model) as timer:  # its "decoder" stage starts at the declared decoder_module, `head`
        session = InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg))
        for t, image in enumerate(images):
            with timer.frame():
                probs = session.step(image, labels if t == 0 else None).probs
            assert torch.allclose(probs, reference[t], atol=1e-5)
    assert all(wrapper.compiled_calls > 0 and not wrapper.failed for wrapper in compiled.values())
    assert timer.frames[-1]["decoder"] > 0
    restore_eager(model)
    torch._dynamo.reset()
    # the session's compile_modules flag compiles the same declared parts
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: calls.append(options) or fn)
    InferenceSession(model, policy_factory=lambda: build_memory_policy(cfg), compile_modules=True)
    assert len(calls) == 2
    assert all(isinstance(getattr(model, name).__dict__["forward"], GuardedCompile) for name in ("encoder", "head"))


def test_a_declared_part_the_model_lacks_is_an_error_naming_it(config_dir: Path) -> None:
    toy_match = type(build(config_dir))

    class Misdeclared(toy_match):
        hot_modules = ("encoder", "decoder")

    model = Misdeclared(encoder=nn.Conv2d(3, 8, 3, padding=1), head=nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError, match=r"Misdeclared\.hot_modules names 'decoder', which Misdeclared does not have"):
        compile_hot_modules(model)
