"""A preset of one's own, in a folder outside the repo (docs/own_presets.md): the Python API finds it with
``config_dir=``, the command-line tools with ``--config-dir``, and voszoo-bench hands the folder to its child runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import voszoo

MY_STM = """\
# my_stm: stm_r18 with a narrower decoder (values only: the defaults list extends voszoo's preset)
defaults:
  - stm_r18
  - _self_

name: my_stm
decoder:
  hidden_channels: 32
"""


@pytest.fixture
def myconf(tmp_path: Path) -> Path:
    folder = tmp_path / "myconf"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "my_stm.yaml").write_text(MY_STM)
    return folder


def test_create_model_reads_a_preset_from_config_dir(myconf: Path) -> None:
    assert "my_stm" in voszoo.list_models(config_dir=myconf) and "my_stm" not in voszoo.list_models()
    mine = voszoo.create_model("my_stm", config_dir=myconf)
    base = voszoo.create_model("stm_r18")
    assert type(mine) is type(base)
    assert sum(p.numel() for p in mine.parameters()) < sum(p.numel() for p in base.parameters())
    tuned = voszoo.create_model("my_stm", config_dir=str(myconf), **{"decoder.hidden_channels": 16})
    assert sum(p.numel() for p in tuned.parameters()) < sum(p.numel() for p in mine.parameters())
    with torch.no_grad():
        assert mine.encode(torch.zeros(1, 3, 64, 64)) is not None
    with pytest.raises(ValueError, match=r"unknown model 'my_stm'; valid models: .* pass config_dir="):
        voszoo.create_model("my_stm")
    with pytest.raises(ValueError, match=r"config_dir '.*nowhere': no such folder"):
        voszoo.create_model("my_stm", config_dir=myconf.parent / "nowhere")


def test_a_method_of_ones_own_class_is_built_once_its_module_is_allowed(
    myconf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/own_presets.md, step 2: a package of one's own, a preset naming its class, VOSZOO_ALLOWED_TARGETS."""
    package = tmp_path / "code" / "mymethods"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from voszoo.models.stm import STM\n\n\nclass MySTM(STM):\n    pass\n")
    (myconf / "model" / "my_method.yaml").write_text(
        "defaults:\n  - stm_r18\n  - _self_\n\nname: my_method\n_target_: mymethods.MySTM\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    from voszoo.instantiate import ConfigError

    with pytest.raises(ConfigError, match="'mymethods.MySTM' is not an allowed _target_"):
        voszoo.create_model("my_method", config_dir=myconf)
    monkeypatch.setenv("VOSZOO_ALLOWED_TARGETS", "mymethods")
    assert type(voszoo.create_model("my_method", config_dir=myconf)).__name__ == "MySTM"


def test_profiling_finds_the_preset_through_config_dir(myconf: Path, tmp_path: Path) -> None:
    from voszoo.benchmark import _profile_source
    from voszoo.profiling import main as profile

    result = tmp_path / "profile.json"
    args = ["--size", "64", "64", "--frames", "2", "--device", "cpu", "--json", str(result)]
    assert profile(["my_stm", "--config-dir", str(myconf), *args]) == 0
    assert json.loads(result.read_text())["params"] > 0
    # the board passes its own config folders on to the profiling of a cost_only entry
    entry = OmegaConf.create({"name": "costs", "cost_only": "my_stm"})
    assert _profile_source(entry, tmp_path, [f"file://{myconf}", "pkg://elsewhere"]) == [
        "my_stm",
        "--config-dir",
        str(myconf),
    ]


@pytest.mark.slow
def test_bench_hands_its_config_dir_to_the_training_runs(myconf: Path, tmp_path: Path) -> None:
    """voszoo-bench --config-dir: a training entry may name one's own preset (the child run gets the folder)."""
    tiny = ["data.generate.videos=3", "data.generate.frames=4", "data.generate.size=[64,64]"]
    train = [
        "model=my_stm",
        "trainer=quick",
        "trainer.max_steps=1",
        "trainer.batch_size=1",
        "trainer.num_workers=0",
        "schedule.warmup_steps=1",
        "data.train.transform.size=[64,64]",
        "data.train.max_objects=2",
        "eval.max_videos=1",
    ]
    entries = "entries=[{name: mine, train: [" + ", ".join(f"'{o}'" for o in train) + "]}]"
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "voszoo.benchmark", "--config-dir", str(myconf), entries, "profile.enabled=false"]
        + [*tiny, "plot=false", f"data.root={tmp_path / 'toy'}", f"hydra.run.dir={out}"],
        cwd=tmp_path,  # outside the repo
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert row["status"] == "ok" and row["train steps"] == 1 and 0 <= row["J&F"] <= 1
    assert json.loads((out / "mine" / "metrics.json").read_text())["model"] == "my_stm"
