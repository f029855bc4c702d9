"""Every paper recipe (conf/experiment/*_paper*.yaml) composes, builds and trains 2 steps on ToyVOS, and states the
numbers its paper gives.

The recipes are GPU schedules on DAVIS / YouTube-VOS / static images. Here each keeps its model preset, optimiser,
schedule, trainer switches and data pipeline (mixture, static warps, gap curriculum, clip length); only what cannot
run here is swapped: the datasets' folders become a generated ToyVOS (static images: its first frames), ImageNet
weights become random ones (no network), crops shrink to 64x64, clips to at most 4 frames, batches to 2 and runs
to 2 steps. A second stage (``init_required``) starts from its first stage's checkpoint (``<name>_static`` when that
recipe exists, else a 1-step run of its own config), through ``init_from`` as a user would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from voszoo._paths import conf_dir
from voszoo.data.davis import ToyVOS
from voszoo.data.io import write_labels
from voszoo.data.toy import generate_toyvos
from voszoo.hydra_compose import compose_config
from voszoo.instantiate import ConfigError
from voszoo.train import train

# first stages first: their checkpoints start the second stages
RECIPES = sorted(
    (p.stem for p in (conf_dir() / "experiment").glob("*_paper*.yaml")), key=lambda n: (not n.endswith("_static"), n)
)
CROP = [64, 64]
MAX_FRAMES = 4  # longer clips (AOT 5, MUNet 6, MGA 24 frames) shrink to this: the file stays under ~90 s

# The papers' numbers (facts from the papers, and from the official code where it is the papers' own release):
#   STM: Oh et al., ICCV 2019, Sec. 4 "Implementation details": 384x384 crops, batch 4, Adam, fixed lr 1e-5, BN off,
#        3-frame clips, skipped frames 0 -> 25 (curriculum).
#   AOT: Yang et al., NeurIPS 2021, App. A.1.2 (shared/papers/001): AdamW; pre-training lr 4e-4, wd 0.03, 100k steps;
#        main lr 2e-4, wd 0.07, 100k steps (YouTube-VOS); batch 16; 465x465 crops; sequence length 5; encoder lr x0.1;
#        poly decay to 2e-5; EMA. Official aot-benchmark: DATA_DAVIS_REPEAT 5, DATA_RANDOM_GAP_DAVIS 12 / _YTB 3,
#        power 0.9, EMA ratio 0.1, merge probability 1.0 (PRE) / 0.3.
#   MGA: Zhou et al. (shared/papers/004), Sec. 3: STM's settings; Sec. 2.2: back-propagate every predicted frame.
#   MUNet: Sun et al. (shared/papers/002), Sec. 3.5: AdamW (0.9, 0.999), lr 2e-5, wd 0.5, 6 consecutive frames as a
#        batch, 400x400 crops, DAVIS 2017 (protocol (1)).
STM_STATIC = {
    "optim.name": "adam",
    "optim.lr": 1e-5,
    "optim.encoder_lr_mult": 1.0,
    "trainer.batch_size": 4,
    "trainer.freeze_bn": True,
    "data.name": "static",
    "data.train.num_frames": 3,
    "data.train.transform.size": [384, 384],
    "schedule._target_": "voszoo.engine.optim.ConstantSchedule",
}
STM_MAIN = {
    **{k: v for k, v in STM_STATIC.items() if not k.startswith("data.")},
    "data.name": "davis_youtube",
    "data.clip.num_frames": 3,
    "data.clip.transform.size": [384, 384],
    "data.train.sources.davis.max_gap.start": 1,  # 0 skipped frames
    "data.train.sources.davis.max_gap.end": 26,  # 25 skipped frames
    "data.youtube_year": "2018",
}
AOT_COMMON = {
    "optim.name": "adamw",
    "optim.encoder_lr_mult": 0.1,
    "trainer.batch_size": 16,
    "trainer.max_steps": 100_000,
    "schedule.min_lr": 2e-5,
    "schedule.power": 0.9,
    "trainer.ema_decay": 0.9999,  # official 1 - 1 / (TRAIN_EMA_RATIO 0.1 x 100k steps)
}
PAPER: dict[str, dict[str, Any]] = {
    "stm_paper_static": STM_STATIC,
    "stm_paper": STM_MAIN,
    "aot_paper_static": {
        **AOT_COMMON,
        "optim.lr": 4e-4,
        "optim.weight_decay": 0.03,
        "data.name": "static",
        "data.train.num_frames": 5,
        "data.train.transform.size": [465, 465],
        "data.train.merge_prob": 1.0,  # official pre.py DATA_DYNAMIC_MERGE_PROB
    },
    "aot_paper": {
        **AOT_COMMON,
        "optim.lr": 2e-4,
        "optim.weight_decay": 0.07,
        "data.name": "davis_youtube",
        "data.clip.num_frames": 5,
        "data.clip.transform.size": [465, 465],
        "data.clip.merge_prob": 0.3,
        "data.train.repeats.davis": 5,
        "data.train.repeats.youtube": 1,
        "data.train.sources.davis.max_gap": 12,
        "data.train.sources.youtube.max_gap": 3,
        "init_from_ema": True,  # official pre_ytb_dav.py loads the PRE stage's ema_ckpt
    },
    "mga_paper_static": {**STM_STATIC, "model.name": "mga"},
    "mga_paper": {
        **{k: v for k, v in STM_STATIC.items() if not k.startswith(("data.", "trainer.batch_size"))},
        "model.name": "mga",
        "data.name": "youtube_vos2019",
        "trainer.truncate_frames": 1,
        "data.train.max_gap": 1,
    },
    "munet_paper": {
        "model.name": "munet",
        "optim.name": "adamw",
        "optim.lr": 2e-5,
        "optim.weight_decay": 0.5,
        "optim.betas": [0.9, 0.999],
        "trainer.batch_size": 1,
        "data.name": "davis2017",
        "data.train.num_frames": 6,
        "data.train.max_gap": 1,
        "data.train.transform.size": [400, 400],
    },
}


def compose_recipe(name: str, *overrides: str) -> DictConfig:
    return compose_config("train", [f"experiment={name}", *overrides])


def test_the_glob_finds_the_recipes_of_this_table() -> None:
    assert set(PAPER) <= set(RECIPES), sorted(set(PAPER) - set(RECIPES))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_states_the_papers_numbers(name: str) -> None:
    cfg = compose_recipe(name)
    got = {key: OmegaConf.select(cfg, key) for key in PAPER[name]}
    got = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in got.items()}
    assert got == PAPER[name]


def test_second_stages_start_from_the_first_and_say_so() -> None:
    for name in ("stm_paper", "aot_paper", "mga_paper"):
        cfg = compose_recipe(name)
        assert cfg.init_required is True
        with pytest.raises(ConfigError, match="init_from"):
            train(cfg, "unused")
        first = compose_recipe(f"{name}_static")
        assert first.model.name == cfg.model.name  # init_from checks the preset: the two stages must agree
    assert compose_recipe("munet") == compose_recipe("munet_paper")  # the old name is an alias


# -- 2 training steps of every recipe on ToyVOS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 5-video ToyVOS (4 train, 1 val) and a static-image folder made of its train videos' first frames."""
    base = tmp_path_factory.mktemp("recipes")
    toy = generate_toyvos(base / "toyvos", videos=5, frames=8, size=(80, 80), workers=1, progress=False)
    static = base / "static"
    collection = ToyVOS(root=toy, split="train")
    for name in collection.sequences:
        video = collection.video(name)
        (static / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(video.frame(0))).save(static / "images" / f"{name}.png")
        write_labels(static / "masks" / f"{name}.png", np.asarray(video.labels(0), dtype=np.uint8))
    return {"toy": toy, "static": static}


_COLLECTIONS = ("voszoo.data.davis.DAVIS", "voszoo.data.youtube_vos.YouTubeVOS")


def _swap(node: Any, data: dict[str, Path]) -> Any:
    """The data node with every dataset folder replaced by ToyVOS / the static folder and crops shrunk."""
    if isinstance(node, list):
        return [_swap(v, data) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _swap(v, data) for k, v in node.items()}
    target = node.get("_target_")
    if target in _COLLECTIONS:
        split = "val" if node.get("split") in ("val", "valid") else "train"
        return {"_target_": "voszoo.data.davis.ToyVOS", "root": str(data["toy"]), "split": split}
    if target == "voszoo.data.static.StaticImages":
        node["root"] = str(data["static"])
    if target == "voszoo.data.transforms.ClipTransform":
        node["size"] = CROP
    if target in ("voszoo.data.clips.ClipDataset", "voszoo.data.static.StaticClipDataset"):
        node["num_frames"] = min(int(node["num_frames"]), MAX_FRAMES)
    return node


def _no_downloads(node: Any) -> Any:
    """The model node with ImageNet weight names (downloads) replaced by random initialisation."""
    if isinstance(node, dict):
        return {k: (None if k == "weights" and isinstance(v, str) else _no_downloads(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_no_downloads(v) for v in node]
    return node


def on_toyvos(cfg: DictConfig, data: dict[str, Path], **top: Any) -> DictConfig:
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["data"] = {**_swap(plain["data"], data), "root": str(data["toy"]), "generate": None}
    plain["model"] = _no_downloads(plain["model"])
    plain["trainer"].update(max_steps=2, batch_size=2, num_workers=0, device="cpu", checkpoint_every=0, log_every=1)
    plain.update(evaluate=False, resume=False, logger={"console": {}}, **top)
    plain.pop("hydra", None)
    return OmegaConf.create(plain)


@pytest.fixture(scope="module")
def first_stages() -> dict[str, Path]:
    """Checkpoints of the stage-1 runs done so far, by recipe name (stage-2 tests reuse them)."""
    return {}


def _checkpoint_of_first_stage(name: str, data: dict[str, Path], out: Path, done: dict[str, Path]) -> Path:
    first = f"{name}_static"
    if first in done:
        return done[first]
    if first in RECIPES:
        cfg = on_toyvos(compose_recipe(first), data)
    else:  # no stage-1 recipe: a 1-step run of this config stands in for it
        cfg = on_toyvos(compose_recipe(name, "init_required=false", "init_from_ema=false"), data)
        cfg.trainer.max_steps = 1
    train(cfg, out / first)
    done[first] = out / first / "last.pt"
    return done[first]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_on_toyvos(
    name: str, toy_data: dict[str, Path], first_stages: dict[str, Path], tmp_path: Path
) -> None:
    composed = compose_recipe(name)
    top: dict[str, Any] = {}
    if composed.get("init_required"):
        top["init_from"] = str(_checkpoint_of_first_stage(name, toy_data, tmp_path, first_stages))
    cfg = on_toyvos(composed, toy_data, **top)
    metrics = train(cfg, tmp_path / name)
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / name / "last.pt").is_file()
    if name.endswith("_static"):
        first_stages.setdefault(name, tmp_path / name / "last.pt")
