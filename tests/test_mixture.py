"""ClipMixture: DAVIS + YouTube-VOS style concatenation with per-source repeats (AOT's DATA_DAVIS_REPEAT = 5), and the
voszoo-train keys that chain training stages (init_from, init_required)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from voszoo.data.clips import BaseClipDataset
from voszoo.data.mixture import ClipMixture
from voszoo.data.transforms import ClipTransform
from voszoo.hydra_compose import compose_config
from voszoo.instantiate import ConfigError
from voszoo.train import train


class Numbered(BaseClipDataset):
    """``items`` fake videos named ``<tag><item>``: a textured frame with one square object, ``num_frames`` copies."""

    def __init__(self, tag: str, items: int, *, num_frames: int = 2, size: int = 16, seed: int = 0) -> None:
        super().__init__(
            num_items=items,
            num_frames=num_frames,
            transform=ClipTransform(size=(size, size), scale=(0.3, 1.0), color_jitter=None),
            max_objects=1,
            merge_prob=0.0,
            samples_per_epoch=None,
            seed=seed,
            max_tries=5,
        )
        self.tag = tag
        self.steps: list[int] = []

    def _item_name(self, item: int) -> str:
        return f"{self.tag}{item}"

    def _sample_raw(self, item: int, rng: np.random.Generator) -> tuple:
        image = np.random.default_rng(item).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        labels = np.zeros((32, 32), np.uint8)
        labels[4:28, 4:28] = 1
        frames, masks = self.transform([image] * self.num_frames, [labels] * self.num_frames, rng)
        return frames, masks, list(range(self.num_frames))


def mixture(**kwargs) -> ClipMixture:
    return ClipMixture(sources={"davis": Numbered("d", 3), "youtube": Numbered("y", 4)}, **kwargs)


def test_each_source_is_read_its_repeat_count_per_epoch_with_fresh_clips() -> None:
    data = mixture(repeats={"davis": 5})
    assert len(data) == 5 * 3 + 4
    for epoch in (0, 1):
        data.set_epoch(epoch)
        samples = [data[i] for i in range(len(data))]
        counts = Counter(s["name"] for s in samples)
        assert counts == {**{f"d{i}": 5 for i in range(3)}, **{f"y{i}": 1 for i in range(4)}}
    # the 5 reads of a DAVIS video are 5 different clips (fresh crops), not one clip 5 times
    d0 = [s["images"] for s in samples if s["name"] == "d0"]
    assert len({tuple(x.flatten()[:64].tolist()) for x in d0}) == 5


def test_a_sample_is_a_function_of_epoch_and_index() -> None:
    first, second = mixture(repeats={"davis": 2}), mixture(repeats={"davis": 2})
    second.set_epoch(3)
    second.set_epoch(1)
    first.set_epoch(1)
    for i in range(len(first)):
        a, b = first[i], second[i]
        assert (
            a["name"] == b["name"] and torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        )
    first.set_epoch(0)
    assert [first[i]["name"] for i in range(len(first))] != [second[i]["name"] for i in range(len(second))]


def test_locate_walks_the_sources_in_order() -> None:
    data = mixture(repeats={"davis": 2})
    data.set_epoch(1)
    # davis: indices 0..5 (2 repeats of 3), youtube: 6..9; virtual epoch = (epoch x repeats + repeat) x 2 + source
    assert data.locate(0) == ("davis", 0, (1 * 2 + 0) * 2 + 0)
    assert data.locate(4) == ("davis", 1, (1 * 2 + 1) * 2 + 0)
    assert data.locate(6) == ("youtube", 0, (1 * 1 + 0) * 2 + 1)
    with pytest.raises(IndexError, match="out of range for length 10"):
        data.locate(10)


def test_set_step_reaches_the_sources_with_a_curriculum() -> None:
    class Curriculum(Numbered):
        curriculum = "grow"

        def set_step(self, step: int) -> None:
            self.steps.append(step)

    plain, growing = Numbered("d", 3), Curriculum("y", 2)
    data = ClipMixture(sources={"davis": plain, "youtube": growing})
    assert data.curriculum == {"youtube": "grow"}
    data.set_step(7)
    assert growing.steps == [7] and plain.steps == []
    assert mixture().curriculum is None  # the trainer then never calls set_step


def test_bad_mixtures_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"repeats names \['davsi'\], which are not sources; sources: \['davis'"):
        mixture(repeats={"davsi": 5})
    with pytest.raises(ValueError, match=r"repeats\['davis'\] must be an integer >= 1, got 0"):
        mixture(repeats={"davis": 0})
    with pytest.raises(ValueError, match=r"source 'b' has num_frames=3 but 'a' has 2"):
        ClipMixture(sources={"a": Numbered("a", 2), "b": Numbered("b", 2, num_frames=3)})
    with pytest.raises(ValueError, match=r"source 'b' has transform.size=\(8, 8\) but 'a' has \(16, 16\)"):
        ClipMixture(sources={"a": Numbered("a", 2), "b": Numbered("b", 2, size=8)})
    with pytest.raises(ValueError, match="sources is empty"):
        ClipMixture(sources={})
    with pytest.raises(ValueError, match="source 'a' is a list, not a voszoo clip dataset"):
        ClipMixture(sources={"a": [1, 2]})


def test_davis_youtube_config_builds_the_mixture() -> None:
    cfg = compose_config("train", ["data=davis_youtube"])
    assert cfg.data.train._target_ == "voszoo.data.mixture.ClipMixture"
    assert dict(cfg.data.train.repeats) == {"davis": 5, "youtube": 1}
    # both sources read the shared clip settings
    cfg = compose_config("train", ["data=davis_youtube", "data.clip.num_frames=5", "data.clip.transform.size=[64,64]"])
    for source in ("davis", "youtube"):
        assert cfg.data.train.sources[source].num_frames == 5
        assert list(cfg.data.train.sources[source].transform.size) == [64, 64]


def test_init_from_fails_before_anything_is_built(tmp_path: Path) -> None:
    root = tmp_path / "toyvos"  # would be generated by prepare_data: the error must come first
    base = ["model=stm_r18", "trainer=quick", f"data.root={root}", "resume=false"]
    missing = tmp_path / "stage1" / "last.pt"
    cfg = compose_config("train", [*base, f"init_from={missing}"])
    with pytest.raises(ConfigError, match=f"init_from={missing}: checkpoint file not found") as error:
        train(cfg, tmp_path / "run")
    assert "run the first stage first" in error.value.hint
    cfg = compose_config("train", [*base, "init_required=true"])
    with pytest.raises(ConfigError, match="second stage of a two-stage schedule .* init_from is not set"):
        train(cfg, tmp_path / "run")
    cfg = compose_config("train", [*base, f"init_from={missing}", f"+trainer.init_from={missing}"])
    with pytest.raises(ConfigError, match="are both set; keep one"):
        train(cfg, tmp_path / "run")
    assert not root.exists() and not (tmp_path / "run").exists()
