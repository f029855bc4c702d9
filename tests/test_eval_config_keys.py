"""voszoo-eval reads its settings from conf/eval.yaml, where each has its one default: the sharding timeout too."""

import pytest

from voszoo.evaluation import sharding
from voszoo.hydra_compose import compose_config


class Joined(Exception):
    pass


def _timeout_passed(monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> float:
    from voszoo.evaluate import evaluate

    def join(*, device_type: str, timeout: float) -> None:
        raise Joined(timeout)

    monkeypatch.setattr(sharding, "join_eval_group", join)
    with pytest.raises(Joined) as joined:
        evaluate(compose_config("eval", ["device=cpu", *overrides]), "unused")
    return joined.value.args[0]


def test_dist_timeout_is_a_plain_eval_key_with_the_sharding_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compose_config("eval").dist_timeout == sharding.DEFAULT_TIMEOUT
    assert _timeout_passed(monkeypatch, []) == sharding.DEFAULT_TIMEOUT
    assert _timeout_passed(monkeypatch, ["dist_timeout=600"]) == 600.0  # no `++`: the key exists
