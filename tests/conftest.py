"""Shared pytest set-up: tests import helpers from this folder.

Torch runs single-threaded in the test process: on the 2-core machines a second intra-op thread gains little on
tiny inputs and, whenever anything else runs (a DataLoader worker, a subprocess test), oneDNN's spinning threads
make convolutions 10-30x slower.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def wandb_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wandb stays off the network and out of the home folder: disabled unless a test's logger asks for a mode
    (tests/test_loggers.py runs it offline), with its settings, cache and artifact dirs in a tmp folder. Set in
    os.environ so that subprocesses inherit it."""
    root = tmp_path_factory.mktemp("wandb")
    values = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "WANDB_DIR": str(root / "runs")}
    values.update({f"WANDB_{name}_DIR": str(root / name.lower()) for name in ("CACHE", "CONFIG", "DATA", "ARTIFACT")})
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def toyvos_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights cache ($VOSZOO_CACHE, inherited by subprocesses) holding the default ToyVOS recipe's entry for
    resnet18, made of seeded random weights: recipes with ``weights: toyvos`` build in tests without the 30-minute
    pre-training, through the real cache lookup and checks (tests/test_pretraining.py runs real pre-trainings)."""
    from voszoo.backbones.resnet import ResNetBackbone
    from voszoo.pretrain import compose_pretrain_config, recipe_of
    from voszoo.pretraining.cache import entry_path, recipe_key, write_entry

    root = tmp_path_factory.mktemp("voszoo_cache")
    saved = os.environ.get("VOSZOO_CACHE")
    os.environ["VOSZOO_CACHE"] = str(root)
    key = recipe_key(recipe_of(compose_pretrain_config()))
    torch.manual_seed(0)
    state = ResNetBackbone(depth=18).state_dict()
    for value in state.values():  # distinct from a fresh init (bn weights are all ones there)
        if value.is_floating_point():
            value.add_(torch.rand_like(value) * 0.01)
    write_entry(
        entry_path("resnet18", key), state_dict=state, architecture="resnet18", key=key, recipe={}, steps=0, metrics={}
    )
    yield root
    if saved is None:
        os.environ.pop("VOSZOO_CACHE", None)
    else:
        os.environ["VOSZOO_CACHE"] = saved
