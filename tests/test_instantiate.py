"""voszoo.instantiate: only allowed ``_target_`` callables are built, and the whole config tree is checked before
anything is called (issue 20, item 5: ``+model.pwn._target_=builtins.open`` truncated a file before the build
failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voszoo.cli_common import guarded_task
from voszoo.hydra_compose import compose_config
from voszoo.instantiate import ALLOWED_TARGETS_ENV, ConfigError, build, check_targets


def eval_config(*overrides: str) -> OmegaConf:
    return compose_config("eval", ["model=stm_r18", *overrides])


def test_a_builtin_target_is_refused_before_anything_is_called(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cfg = eval_config("+model.pwn._target_=builtins.open", f"+model.pwn.file={victim}", "+model.pwn.mode=w")
    with pytest.raises(ConfigError, match=r"model\.pwn\._target_='builtins\.open' is not an allowed _target_"):
        check_targets(cfg)
    from voszoo.models.registry import build_model

    with pytest.raises(ConfigError, match=r"pwn\._target_='builtins\.open'"):
        build_model(cfg.model)
    assert victim.read_text() == "precious"


def test_the_entry_points_check_the_whole_tree_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    called = []
    cfg = eval_config("+data.eval.pwn._target_=os.system", "+data.eval.pwn.command=true")
    with pytest.raises(SystemExit) as exited:
        guarded_task(called.append, prog="voszoo-eval")(cfg)
    assert exited.value.code == 1 and not called
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("voszoo-eval: error: data.eval.pwn._target_='os.system' is not an allowed")
    assert ALLOWED_TARGETS_ENV in lines[1]


def test_functions_of_allowed_modules_need_their_exact_name(tmp_path: Path) -> None:
    target = tmp_path / "written.bin"
    with pytest.raises(ConfigError, match="atomic_write_bytes"):
        build({"_target_": "voszoo.data.io.atomic_write_bytes", "path": str(target), "data": b"x"})
    assert not target.exists()
    interpolated = OmegaConf.create({"bad": "builtins.eval", "node": {"inner": [{"_target_": "${bad}"}]}})
    with pytest.raises(ConfigError, match=r"node\.inner\[0\]\._target_='builtins\.eval'"):
        check_targets(interpolated)


def test_the_environment_setting_allows_users_own_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="collections.OrderedDict"):
        build({"_target_": "collections.OrderedDict"})
    monkeypatch.setenv(ALLOWED_TARGETS_ENV, "json, collections")
    assert type(build({"_target_": "collections.OrderedDict"})).__name__ == "OrderedDict"
    with pytest.raises(ConfigError, match="json.dumps"):  # a function: only by its exact name
        build({"_target_": "json.dumps", "obj": [1]})
    monkeypatch.setenv(ALLOWED_TARGETS_ENV, "json.dumps")
    assert build({"_target_": "json.dumps", "obj": [1]}) == "[1]"


@pytest.mark.parametrize("name", ["train", "eval", "bench", "pretrain"])
def test_every_shipped_config_is_allowed(name: str) -> None:
    from voszoo.models.registry import compose_model_config, list_models

    check_targets(compose_config(name))
    if name == "train":
        for model in list_models():
            check_targets(compose_model_config(model))
