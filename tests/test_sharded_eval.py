"""voszoo-eval sharded over processes: a 2-process Gloo run through ``torchrun`` writes the same PNGs, scores and
CSVs as one process; a rank that fails or hangs stops every rank with an error naming it instead of a hang."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from voszoo.data.davis import ToyVOS
from voszoo.data.io import read_labels
from voszoo.data.toy import generate_toyvos
from voszoo.evaluation.sharding import balanced_shards
from voszoo.inference.predict import CopyFirstFrame

TOY = ["data.generate.videos=15", "data.generate.frames=5", "data.generate.size=[64,64]"]  # 3 val videos
EVAL = ["model=stm_r18", "device=cpu", "workers=1"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded") / "toy"
    generate_toyvos(root, videos=15, frames=5, size=(64, 64), seed=0, workers=1, progress=False)  # as TOY says
    return root


def test_balanced_shards_deal_longest_first_to_the_least_loaded_rank() -> None:
    # by hand: 8 -> r0, 5 -> r1, 3 (index 2) -> r1 (5 < 8), 3 (index 3) -> r0 (tie 8 = 8: lower rank),
    # 2 -> r1 (8 < 11), 1 -> r1 (10 < 11); totals 11 and 11
    assert balanced_shards([5, 1, 3, 3, 2, 8], world_size=2) == [[3, 5], [0, 1, 2, 4]]
    assert balanced_shards([1, 1, 1, 1, 1], world_size=2) == [[0, 2, 4], [1, 3]]  # equal costs: round robin
    assert balanced_shards([2, 7], world_size=3) == [[1], [0], []]
    assert balanced_shards([4, 2], world_size=1) == [[0, 1]]
    with pytest.raises(ValueError, match="world_size"):
        balanced_shards([1], world_size=0)


def _single_process_reference(toy_root: Path, out: Path) -> dict:
    from voszoo.evaluate import evaluate
    from voszoo.hydra_compose import compose_config

    return evaluate(compose_config("eval", [*EVAL, *TOY, f"data.root={toy_root}"]), out)


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob(pattern))}


def test_two_process_torchrun_eval_matches_one_process(toy_root: Path, tmp_path: Path) -> None:
    """Random stm_r18 weights (seeded: the same in every rank) at 64x64; Hydra run dirs that differ by rank, so that
    rank 0's dir must be shared."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    arguments = [*EVAL, *TOY, f"data.root={toy_root}", f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}"]
    done = subprocess.run(
        [*command, "-m", "voszoo.evaluate", *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sharded, other = tmp_path / "rank0", tmp_path / "rank1"
    assert not (other / "metrics.json").exists() and not (other / "predictions").exists()
    assert "J&F-Mean" in done.stdout

    single = tmp_path / "single"
    _single_process_reference(toy_root, single)
    pngs = _files(single / "predictions", "*.png")
    assert len(pngs) == 3 * 5
    assert len({png for png in pngs.values()}) > 3  # the predictions differ between frames: a meaningful comparison
    assert _files(sharded / "predictions", "*.png") == pngs  # byte for byte, no stray (temporary) files
    assert _files(sharded, "*.csv") == _files(single, "*.csv")
    assert json.loads((sharded / "results.json").read_text()) == json.loads((single / "results.json").read_text())
    expected = json.loads((single / "metrics.json").read_text())
    metrics = json.loads((sharded / "metrics.json").read_text())
    for key in ("J&F", "J", "F", "videos", "model", "data", "checkpoint", "predictor"):
        assert metrics[key] == expected[key], key
    assert metrics["world_size"] == 2 and "world_size" not in expected
    assert metrics["fps_aggregate"] >= metrics["fps"] > 0  # the slowest rank took at most the summed time


class _Faulty(CopyFirstFrame):
    """The baseline, except on video ``toy_val_001``: raises or sleeps there."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def predict(self, video):
        if video.name == "toy_val_001":
            if self.mode == "raise":
                raise ValueError("deliberate failure")
            time.sleep(60)
        yield from super().predict(video)


def _rank(rank: int, port: int, root: str, out: str, mode: str, timeout: float, errors: str) -> None:
    """One forked rank of a 2-process Gloo group (environment as torchrun sets it); writes its error to a file."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from voszoo.engine.distributed import destroy_distributed
    from voszoo.evaluation.pipeline import evaluate_predictor
    from voszoo.evaluation.sharding import join_eval_group

    group = join_eval_group(device_type="cpu", timeout=timeout)
    try:
        evaluate_predictor(_Faulty(mode), ToyVOS(root, split="val"), out, group=group, workers=1, progress=False)
    except Exception as error:  # noqa: BLE001 - reported to the test
        Path(errors, f"rank{rank}.txt").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        os._exit(1)
    destroy_distributed()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_two_ranks(toy_root: Path, tmp_path: Path, mode: str, timeout: float) -> tuple[list, float]:
    """Fork 2 ranks (torch is already imported here, so they start in milliseconds); returns their processes (rank
    1 terminated if still running once rank 0 ended: at once if it hangs, after 20 s else) and rank 0's wall time."""
    context = multiprocessing.get_context("fork")
    port = _free_port()
    start = time.perf_counter()
    ranks = [
        context.Process(target=_rank, args=(r, port, str(toy_root), str(tmp_path / "out"), mode, timeout, tmp_path))
        for r in range(2)
    ]
    for process in ranks:
        process.start()
    ranks[0].join(60)
    elapsed = time.perf_counter() - start
    ranks[1].join(0.1 if mode == "hang" else 20)
    for process in ranks:
        if process.is_alive():
            process.terminate()
            process.join()
    return ranks, elapsed


def test_a_failing_rank_stops_every_rank_with_its_error(toy_root: Path, tmp_path: Path) -> None:
    ranks, elapsed = _run_two_ranks(toy_root, tmp_path, "raise", timeout=60.0)
    assert [process.exitcode for process in ranks] == [1, 1]
    assert elapsed < 30  # no wait for the timeout: the error travelled with the exchange
    expected = "sharded evaluation failed on 1 rank(s): rank 1: video 'toy_val_001': ValueError: deliberate failure"
    for rank in range(2):
        assert expected in (tmp_path / f"rank{rank}.txt").read_text()
    assert "raise ValueError" in (tmp_path / "rank1.txt").read_text()  # the failing rank keeps its own traceback
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "results.json").exists()


def test_a_hanging_rank_times_out_with_a_clear_error(toy_root: Path, tmp_path: Path) -> None:
    ranks, elapsed = _run_two_ranks(toy_root, tmp_path, "hang", timeout=2.0)
    assert ranks[0].exitcode == 1 and ranks[1].exitcode != 0  # rank 1 was still asleep and got terminated
    assert elapsed < 20
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("ShardedEvaluationError: rank 0/2: waited in vain for the other ranks to finish")
    assert "timeout 2 s" in message and "dist_timeout" in message
    # rank 0's own videos were written before it waited: toy_val_000 and toy_val_002 (equal lengths: round robin)
    assert sorted(p.name for p in (tmp_path / "out" / "predictions").iterdir()) == ["toy_val_000", "toy_val_002"]
    given = read_labels(toy_root / "Annotations" / "480p" / "toy_val_000" / "00000.png")
    assert np.unique(given).size >= 2  # background and at least one object
    np.testing.assert_array_equal(read_labels(tmp_path / "out/predictions/toy_val_000/00004.png"), given)
