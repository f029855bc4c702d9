"""What voszoo-eval and voszoo-train check before they predict or train (issue 20): counts and numbers named by
their config key (item 9), ``max_videos`` never a silent slice (item 4), a used output folder (item 8) and a dataset
that cannot be scored (item 11) refused before the first forward."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets_util import make_toyvos

from voszoo.data.davis import ToyVOS
from voszoo.evaluation.pipeline import evaluate_predictor
from voszoo.hydra_compose import compose_config
from voszoo.inference.predict import CopyFirstFrame
from voszoo.instantiate import ConfigError


def config(name: str, *overrides: str):
    return compose_config(name, overrides)


@pytest.fixture
def toy(tmp_path: Path) -> ToyVOS:
    return ToyVOS(make_toyvos(tmp_path / "toy", sequences={"a": (4, 2), "b": (3, 1)}), split="val")


def score(toy: ToyVOS, out: Path, **kwargs) -> dict:
    return evaluate_predictor(CopyFirstFrame(), toy, out, workers=1, progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------- item 4: max_videos
@pytest.mark.parametrize("bad", [-1, 0])
def test_max_videos_below_one_is_an_error_not_a_slice(toy: ToyVOS, tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match=f"max_videos must be an integer >= 1 or None.*{bad}"):
        score(toy, tmp_path / "out", max_videos=bad)
    assert not (tmp_path / "out").exists()
    assert score(toy, tmp_path / "all", max_videos=None)["videos"] == 2
    with pytest.raises(ConfigError, match=r"^max_videos=-1: expected an integer >= 1 or null") as raised:
        from voszoo.evaluate import check_eval_config

        check_eval_config(config("eval", "max_videos=-1"))
    assert raised.value.hint == "max_videos=null scores every video"


# ------------------------------------------------------------------------------------ item 9: values name their key
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=abc", r"^trainer\.max_steps='abc': expected an integer >= 1$"),
        ("trainer.max_steps=-1", r"^trainer\.max_steps=-1: expected an integer >= 1$"),  # not blamed on `schedule`
        ("optim.lr=abc", r"^optim\.lr='abc': expected a number > 0\.0$"),
        ("eval.max_videos=-1", r"^eval\.max_videos=-1: expected an integer >= 1 or null$"),
    ],
)
def test_train_values_name_their_key(override: str, message: str) -> None:
    from voszoo.train import build_run, check_train_config

    cfg = config("train", "model=stm_r18", override)
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)
    with pytest.raises(ConfigError, match=message):
        build_run(cfg)  # checked before the model is built


def test_train_config_accepts_the_shipped_values() -> None:
    from voszoo.train import check_train_config

    check_train_config(config("train", "model=stm_r18", "trainer.max_steps=1e3", "experiment=aot_quick"))


# ------------------------------------------------------------------------------------ item 8: a used output folder
def test_a_used_output_folder_is_refused_unless_overwrite_and_then_cleared(toy: ToyVOS, tmp_path: Path) -> None:
    from voszoo.evaluation.pipeline import OutputFolderError, write_metrics

    out = tmp_path / "out"
    score(toy, out)
    write_metrics(out, {"J&F": 0.5})
    stale = out / "predictions" / "gone" / "00000.png"  # a sequence the new run does not predict
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    (out / ".hydra").mkdir()
    used = r"already holds .*global_results-val\.csv.*metrics\.json.*predictions/"
    with pytest.raises(OutputFolderError, match=used):
        score(toy, out)
    assert stale.exists() and (out / "metrics.json").exists()
    score(toy, out, overwrite=True, sequences=["a"])
    assert not stale.exists() and not (out / "metrics.json").exists() and (out / ".hydra").is_dir()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["a"]


def test_voszoo_eval_refuses_before_hydra_writes_into_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from omegaconf import OmegaConf

    from voszoo.cli_common import ClaimOutputDir

    out = tmp_path / "used"
    (out / "predictions" / "a").mkdir(parents=True)
    composed = compose_config("eval", [f"hydra.run.dir={out}"], return_hydra_config=True)
    callback = composed.hydra.callbacks.claim_output_dir
    assert callback._target_ == "voszoo.cli_common.ClaimOutputDir"  # wired into conf/eval.yaml
    with pytest.raises(SystemExit) as exited:
        ClaimOutputDir().on_run_start(config=composed)
    assert exited.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"voszoo-eval: error: {out} already holds the results of an earlier evaluation (predictions/); "
        "new ones would mix with them"
    )
    assert lines[1].startswith("hint: pass overwrite=true")
    OmegaConf.update(composed, "overwrite", True)
    ClaimOutputDir().on_run_start(config=composed)
    assert not (out / "predictions").exists()


# ------------------------------------------------------------------- item 11: an unscorable dataset, before predicting
class _Counting(CopyFirstFrame):
    """The baseline, counting the videos it is asked to predict."""

    def __init__(self) -> None:
        self.videos: list[str] = []

    def predict(self, video):
        self.videos.append(video.name)
        yield from super().predict(video)


def _refused_before_predicting(root: Path, out: Path, match: str) -> None:
    from voszoo.data.io import VOSDataError

    predictor = _Counting()
    with pytest.raises(VOSDataError, match=match):
        evaluate_predictor(predictor, ToyVOS(root, split="val"), out, workers=1, progress=False)
    assert predictor.videos == [] and not (out / "predictions").exists()


def test_a_one_frame_video_is_refused_before_predicting(tmp_path: Path) -> None:
    root = make_toyvos(tmp_path / "toy", sequences={"a": (4, 2), "short": (1, 1)})
    _refused_before_predicting(root, tmp_path / "out", r"sequence 'short' has 1 frame\(s\); .* at least 3")


def test_an_annotation_of_another_size_is_refused_before_predicting(tmp_path: Path) -> None:
    from PIL import Image

    root = make_toyvos(tmp_path / "toy", sequences={"a": (4, 2), "b": (3, 1)})
    label = root / "Annotations/480p/b/00002.png"
    with Image.open(label) as image:
        image.resize((16, 16), Image.NEAREST).save(label)
    _refused_before_predicting(root, tmp_path / "out", rf"{label}: annotation is 16x16 \(HxW\), .*'b' is 24x32")


def test_a_missing_annotation_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = make_toyvos(tmp_path / "toy", sequences={"a": (4, 2), "b": (3, 1)})
    gone = root / "Annotations/480p/a/00002.png"
    gone.unlink()
    _refused_before_predicting(root, tmp_path / "out", rf"{gone}: annotation missing \(1 of 4 frames of 'a'")


# ----------------------------------------------------------------------- item 9: errors that name the file at fault
def test_a_frame_smaller_than_the_stride_names_its_file_before_predicting(tmp_path: Path) -> None:
    from tiny_models import AffinityModel

    from voszoo.data.io import VOSDataError
    from voszoo.inference.predict import SessionPredictor
    from voszoo.memory import FirstAndPrevious

    class Coarse(AffinityModel):
        stride = 8  # the check happens before any forward: the model's layers do not matter

    root = make_toyvos(tmp_path / "toy", sequences={"a": (3, 1), "b": (3, 1)}, size=(6, 32))
    predictor = SessionPredictor(Coarse(), name="tiny", policy_factory=FirstAndPrevious)
    frame = root / "JPEGImages/480p/a/00000.jpg"
    with pytest.raises(VOSDataError, match=rf"^{frame}: a frame of 6x32 .* too small for a model of stride 8") as e:
        evaluate_predictor(predictor, ToyVOS(root, split="val"), tmp_path / "out", workers=1, progress=False)
    assert e.value.hint.startswith("resize the frames with short_side=16") and not (tmp_path / "out").exists()


def test_a_full_disk_names_the_file_being_written(toy: ToyVOS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import voszoo.data.io
    from voszoo.errors import describe_user_error

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() to a descriptor raises it: no file

    monkeypatch.setattr(voszoo.data.io, "atomic_write_bytes", full)
    with pytest.raises(OSError) as raised:
        score(toy, tmp_path / "out")
    message, hint = describe_user_error(raised.value)
    assert message == f"no space left on device: {tmp_path / 'out' / 'predictions' / 'a' / '00000.png'}"


def test_another_methods_checkpoint_names_its_preset(tmp_path: Path) -> None:
    import torch
    from omegaconf import OmegaConf
    from tiny_models import AffinityModel

    from voszoo.engine.checkpoint import CHECKPOINT_KEYS, FORMAT_VERSION, CheckpointError
    from voszoo.evaluate import load_weights

    saved = dict.fromkeys(CHECKPOINT_KEYS)
    saved.update(format_version=FORMAT_VERSION, model_name="stm_r18", model_class="voszoo.models.stm.STM")
    saved.update(state_dict={}, step=2, config={"model": {"name": "stm_r18", "decoder": {"hidden_channels": 128}}})
    voszoo_file, official_file = tmp_path / "last.pt", tmp_path / "STM_weights.pth"
    torch.save(saved, voszoo_file)
    torch.save({"KV_M_r4.Key.weight": torch.zeros(1)}, official_file)

    def load(path: Path) -> None:
        cfg = OmegaConf.create({"checkpoint": str(path), "use_ema": False, "model": {"name": "aot_t"}})
        load_weights(AffinityModel(), cfg)

    with pytest.raises(CheckpointError, match=r"last\.pt: this is an STM checkpoint: model=stm_r18 \(this run") as e:
        load(voszoo_file)
    assert e.value.hint == "rerun with model=stm_r18" and "rerun with:" not in str(e.value)  # no list of overrides
    with pytest.raises(CheckpointError, match=r"STM_weights\.pth: this is an official STM checkpoint: model=stm") as e:
        load(official_file)
    assert e.value.hint == "rerun with model=stm"
