"""ToyVOS pre-training: the propagation objective against a naive reference (forward and backward), voszoo-pretrain's
determinism and exact resume, and the weights cache (strict loads into every backbone that claims it; missing,
stale and corrupt entries named or rebuilt, never used)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from voszoo.backbones.resnet import ResNetBackbone
from voszoo.hydra_compose import compose_config
from voszoo.models.registry import build_model
from voszoo.pretrain import (
    compose_pretrain_config,
    ensure_pretrained,
    pretrain,
    recipe_of,
    toyvos_architectures,
)
from voszoo.pretraining import cache
from voszoo.pretraining.cache import PretrainedCacheError, entry_path, read_entry, recipe_key, run_dir, write_entry
from voszoo.pretraining.propagation import PropagationPretrainer, class_fractions, propagation_loss

QUICK_EXPERIMENTS = ("stm", "aot", "sitvos", "munet", "mga", "batman")


# ------------------------------------------------------------------------------------------- objective vs reference
def naive_fractions(labels: torch.Tensor, num_classes: int, cell: int) -> torch.Tensor:
    """Class shares of each cell x cell block, by counting pixels one by one."""
    height, width = labels.shape
    out = torch.zeros(num_classes, height // cell, width // cell)
    for y in range(height):
        for x in range(width):
            value = int(labels[y, x])
            if value != 255:
                out[value, y // cell, x // cell] += 1.0 / (cell * cell)
    return out


def naive_propagation_loss(query, memory, query_labels, memory_labels, temperature):
    """The module docstring's formula with explicit loops over samples, query cells and classes."""
    batch, dim = query.shape[:2]
    classes = query_labels.shape[1]
    terms = []
    for b in range(batch):
        q = query[b].reshape(dim, -1)
        m = memory[b].permute(1, 0, 2, 3).reshape(dim, -1)
        yq = query_labels[b].reshape(classes, -1)
        ym = memory_labels[b].permute(1, 0, 2, 3).reshape(classes, -1)
        for c in range(classes):
            mass = yq[c].sum()
            if mass <= 1e-3:
                continue
            total = 0.0
            for i in range(q.shape[1]):
                weights = torch.softmax((q[:, i : i + 1] * m).sum(0) / temperature, dim=0)
                p = (weights * ym[c]).sum()
                total = total + yq[c, i] * -torch.log(p.clamp_min(1e-6))
            terms.append(total / mass)
    return torch.stack(terms).mean()


def test_class_fractions_count_pixels_and_leave_void_out() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 12), generator=generator)
    labels[0, :3, :5] = 255
    fractions = class_fractions(labels, num_classes=3, size=(2, 3))
    for b in range(2):
        assert torch.allclose(fractions[b], naive_fractions(labels[b], 3, 4), atol=1e-6)
    assert fractions[0].sum(0).min() < 1.0 and torch.allclose(fractions[1].sum(0), torch.ones(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        class_fractions(labels, num_classes=2, size=(2, 3))


def test_propagation_loss_matches_the_naive_reference_forward_and_backward() -> None:
    generator = torch.Generator().manual_seed(1)
    query = torch.nn.functional.normalize(torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64), dim=1)
    memory = torch.nn.functional.normalize(torch.randn(2, 2, 5, 3, 4, generator=generator, dtype=torch.float64), dim=2)
    labels = torch.randint(0, 3, (2, 3, 6, 8), generator=generator)
    labels[1, 0, :, :4] = 255
    fractions = class_fractions(labels, num_classes=3, size=(3, 4)).double()
    inputs = [query.clone().requires_grad_(), memory.clone().requires_grad_()]
    reference = [query.clone().requires_grad_(), memory.clone().requires_grad_()]
    fast = propagation_loss(*inputs, fractions[:, 2], fractions[:, :2], temperature=0.2)
    slow = naive_propagation_loss(*reference, fractions[:, 2], fractions[:, :2], 0.2)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    fast.backward()
    slow.backward()
    for a, b in zip(inputs, reference, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_matching_features_score_lower_than_shuffled_ones() -> None:
    """The loss rewards exactly what a memory read needs: same object, similar features."""
    labels = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    labels[:, :, :2] = 1
    fractions = class_fractions(labels, num_classes=2, size=(4, 4)).double()
    matching = torch.nn.functional.one_hot(labels, 2).permute(0, 1, 4, 2, 3).double()  # (1, 2, D=2, 4, 4)
    swapped = matching.flip(2)
    good = propagation_loss(matching[:, 1], matching[:, :1], fractions[:, 1], fractions[:, :1], temperature=0.1)
    bad = propagation_loss(swapped[:, 1], matching[:, :1], fractions[:, 1], fractions[:, :1], temperature=0.1)
    assert good.item() < 1e-3 < 5.0 < bad.item()


def test_pretrainer_names_its_bad_arguments() -> None:
    with pytest.raises(ValueError, match="s32"):
        PropagationPretrainer(encoder=ResNetBackbone(depth=18), scales=("s32",))
    with pytest.raises(ValueError, match="temperature"):
        PropagationPretrainer(encoder=ResNetBackbone(depth=18), temperature=0.0)


# ------------------------------------------------------------------------------------------------ voszoo-pretrain runs
def tiny_overrides(root: Path) -> list[str]:
    return [
        "trainer.max_steps=4",
        "trainer.batch_size=2",
        "trainer.num_workers=0",
        "trainer.checkpoint_every=2",
        "trainer.keep_checkpoints=2",
        "trainer.device=cpu",
        "schedule.warmup_steps=1",
        "probe_every=null",
        "probe_videos=1",
        "pairs.train.collection.size=[64,64]",
        "pairs.train.collection.frames=6",
        "pairs.train.transform.size=[32,32]",
        f"data.root={root}",
        "data.generate.videos=3",
        "data.generate.frames=4",
        "data.generate.size=[32,32]",
    ]


def test_pretraining_is_deterministic_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_pretrain_config(tiny_overrides(tmp_path / "toy"))
    key = recipe_key(recipe_of(cfg))
    digests = []
    for name in ("a", "b"):
        monkeypatch.setenv("VOSZOO_CACHE", str(tmp_path / name))
        metrics = pretrain(cfg, tmp_path / f"out_{name}", progress=False)
        assert metrics["steps"] == 4 and metrics["key"] == key
        digests.append(read_entry(entry_path("resnet18", key), architecture="resnet18", key=key)["digest"])
    assert digests[0] == digests[1]
    assert json.loads((tmp_path / "out_a" / "metrics.json").read_text())["cache_entry"].endswith(f"{key}.pt")
    # a crash after step 2: the run keeps checkpoint 2 only, the entry was never written; the rerun resumes from it
    runs = run_dir("resnet18", key)
    (runs / "checkpoint_00000004.pt").unlink()
    (runs / "last.pt").unlink()
    os.link(runs / "checkpoint_00000002.pt", runs / "last.pt")
    entry_path("resnet18", key).unlink()
    with caplog.at_level(logging.INFO, logger="voszoo.engine.hooks"):
        resumed = pretrain(cfg, tmp_path / "out_resumed", progress=False)
    assert "from step 2 to 4" in caplog.text
    assert resumed["steps"] == 4
    assert read_entry(entry_path("resnet18", key), architecture="resnet18", key=key)["digest"] == digests[0]


def test_a_recipe_change_is_a_new_key_and_run_only_settings_are_not() -> None:
    base = recipe_key(recipe_of(compose_pretrain_config()))
    assert recipe_key(recipe_of(compose_pretrain_config(["trainer.num_workers=0", "trainer.log_every=1"]))) == base
    assert recipe_key(recipe_of(compose_pretrain_config(["objective.temperature=0.2"]))) != base
    assert recipe_key(recipe_of(compose_pretrain_config(["pretrain_pairs@pairs=static"]))) != base


# ---------------------------------------------------------------------------------------------------- weights cache
def quick_model_config(experiment: str):
    return compose_config("train", [f"experiment={experiment}_quick"]).model


def test_every_quick_recipe_loads_the_cached_encoder_strictly(toyvos_cache: Path) -> None:
    """conftest's session cache holds a seeded entry of the default recipe; every backbone that says weights: toyvos
    gets exactly its tensors (conv1_extra of STM's memory encoder keeps its own init, as with ImageNet weights)."""
    key = recipe_key(recipe_of(compose_pretrain_config()))
    state = read_entry(entry_path("resnet18", key), architecture="resnet18", key=key)["state_dict"]
    for experiment in QUICK_EXPERIMENTS:
        cfg = quick_model_config(experiment)
        assert toyvos_architectures(cfg) == ["resnet18"], experiment
        model = build_model(cfg)
        claimed = [m for m in model.modules() if isinstance(m, ResNetBackbone) and m.image_channels == 3]
        claimed = [
            m for m in claimed if m.conv1.weight.shape[1] == 3 and torch.equal(m.bn1.weight, state["bn1.weight"])
        ]
        assert claimed, f"{experiment}: no encoder holds the cached weights"
        for backbone in claimed:
            loaded = backbone.state_dict()
            assert all(torch.equal(loaded[name], value) for name, value in state.items()), experiment


def test_missing_stale_and_corrupt_entries_are_named_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOSZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "bundled_dir", lambda: tmp_path / "nothing_bundled")
    key = recipe_key(recipe_of(compose_pretrain_config()))
    path = entry_path("resnet18", key)
    with pytest.raises(PretrainedCacheError, match="voszoo-pretrain"):
        ResNetBackbone(depth=18, weights="toyvos")
    state = ResNetBackbone(depth=18).state_dict()
    write_entry(path, state_dict=state, architecture="resnet18", key="0" * 16, recipe={}, steps=1, metrics={})
    with pytest.raises(PretrainedCacheError, match="stale cache entry") as stale:
        ResNetBackbone(depth=18, weights="toyvos")
    assert str(path) in str(stale.value)
    write_entry(path, state_dict=state, architecture="resnet18", key=key, recipe={}, steps=1, metrics={})
    entry = torch.load(path, weights_only=True)
    entry["state_dict"]["bn1.bias"] += 1.0  # a changed tensor, e.g. a bit flip on disk
    torch.save(entry, path)
    with pytest.raises(PretrainedCacheError, match="corrupt cache entry"):
        ResNetBackbone(depth=18, weights="toyvos")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PretrainedCacheError, match="unreadable cache entry"):
        ResNetBackbone(depth=18, weights="toyvos")
    with pytest.raises(ValueError, match="mobilenet"):
        ensure_pretrained("mobilenet_v2")


def test_the_bundled_entry_is_the_default_recipes_and_installs_into_an_empty_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package ships the default recipe's result; a recipe change without a new bundled entry fails here (run
    voszoo-pretrain and copy its cache entry into voszoo/pretraining/bundled/)."""
    key = recipe_key(recipe_of(compose_pretrain_config()))
    bundled = cache.bundled_entry_path("resnet18", key)
    shipped = sorted(p.name for p in cache.bundled_dir().glob("*.pt"))
    assert shipped == [bundled.name], f"the bundled entries {shipped} are not the default recipe's ({key})"
    entry = read_entry(bundled, architecture="resnet18", key=key)
    assert entry["steps"] == compose_pretrain_config().trainer.max_steps
    monkeypatch.setenv("VOSZOO_CACHE", str(tmp_path / "empty"))
    backbone = ResNetBackbone(depth=18, weights="toyvos")  # installs it into the cache, checked
    assert read_entry(entry_path("resnet18", key), architecture="resnet18", key=key)["digest"] == entry["digest"]
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in entry["state_dict"].items())


def test_a_corrupt_entry_is_rebuilt_when_building_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOSZOO_CACHE", str(tmp_path / "cache"))
    overrides = tiny_overrides(tmp_path / "toy")
    cfg = compose_pretrain_config(overrides)
    key = recipe_key(recipe_of(cfg))
    path = entry_path("resnet18", key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedCacheError, match="unreadable"):
        ensure_pretrained("resnet18", overrides=overrides)
    assert ensure_pretrained("resnet18", overrides=overrides, build_missing=True, progress=False) == path
    assert read_entry(path, architecture="resnet18", key=key)["steps"] == 4
