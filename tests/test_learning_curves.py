"""benchmarks/learning_curves.py: the curve it reads from a run folder (periodic evaluations, then the final score)."""

import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "learning_curves", Path(__file__).parents[1] / "benchmarks" / "learning_curves.py"
)
learning_curves = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(learning_curves)


def test_curve_reads_periodic_scores_and_the_final_one_once(tmp_path: Path) -> None:
    records = [
        {"step": 10, "loss": 0.5},
        {"step": 100, "eval/J&F": 0.2, "eval/J": 0.1},
        {"step": 200, "eval/J&F": 0.3},
        {"step": 200, "loss": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert learning_curves.curve_of(tmp_path) == [(100, 0.2), (200, 0.3)]
    (tmp_path / "metrics.json").write_text(json.dumps({"steps": 200, "J&F": 0.31}))
    assert learning_curves.curve_of(tmp_path) == [(100, 0.2), (200, 0.31)]  # the final evaluation wins at its step
    assert learning_curves.curve_of(tmp_path / "missing") == []


def test_every_quick_experiment_names_the_preset_it_trains() -> None:
    conf = Path(__file__).parents[1] / "conf" / "experiment"
    for name, preset in learning_curves.PRESETS.items():
        assert f"override /model: {preset}" in (conf / f"{name}_quick.yaml").read_text()
    assert set(learning_curves.PRESETS) == set(learning_curves.EXPERIMENTS)


def test_table_lists_each_run_with_its_own_steps() -> None:
    results = {
        "baseline_jf": 0.225,
        "baseline_jf_other_seed": 0.2,
        "runs": {
            "stm": {"curve": [[100, 0.21], [400, 0.4]], "val": 0.4, "val_other_seed": 0.39, "wall_minutes": 20.3},
            "aot": {"curve": [[550, 0.3], [1100, 0.35]], "val": 0.35},
        },
    }
    lines = learning_curves.markdown_table(results).splitlines()
    assert lines[2] == "| copy first frame (no training) | | 0.225 | 0.200 | | |"
    assert lines[3] == "| `stm_quick` | 100: 0.210, 400: 0.400 | 0.400 | 0.390 |  | 20.3 |"
    assert lines[4] == "| `aot_quick` | 550: 0.300, 1100: 0.350 | 0.350 |  |  |  |"


def test_runs_are_rescored_with_their_recipes_inference_settings(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from voszoo.hydra_compose import compose_config

    config = compose_config("train", ["experiment=sitvos_quick"])
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    OmegaConf.save(config, hydra_dir / "config.yaml")
    choices = {"model": "sitvos_r18", "model/memory": "first_and_previous", "experiment": "sitvos_quick"}
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, hydra_dir / "hydra.yaml")
    expected = ["short_side=96", "protocol=voszoo", "model/memory=first_and_previous"]
    assert learning_curves.inference_overrides(tmp_path) == expected
    assert learning_curves.inference_overrides(tmp_path / "no_hydra_config") == []


def test_an_experiment_sets_the_train_configs_own_keys() -> None:
    from voszoo.hydra_compose import compose_config

    config = compose_config("train", ["experiment=sitvos_quick"])
    assert config.eval.short_side == 96
    assert config.model.memory._target_.endswith("FirstAndPrevious")
    assert compose_config("train", ["experiment=sitvos_quick", "eval.short_side=null"]).eval.short_side is None
    assert compose_config("train", ["experiment=stm_quick"]).eval.short_side is None
