"""Two-process CPU data parallelism (gloo) through ``torchrun``: the same update as one process with twice the batch,
rank-0 checkpoints and metrics, every rank's RNG state in the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from trainer_toys import RandomClips, ToyVOS

from voszoo.engine import Trainer, read_checkpoint

WORKER = textwrap.dedent(
    """
    import sys

    import torch
    from trainer_toys import RandomClips, ToyVOS

    from voszoo.engine import Trainer, destroy_distributed

    output_dir, weights_dir = sys.argv[1], sys.argv[2]
    truncate_frames = None if sys.argv[3] == "none" else int(sys.argv[3])
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    trainer = Trainer(
        model=model,
        data=RandomClips(length=8, void=False),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        output_dir=output_dir,
        max_steps=3,
        batch_size=1,
        device="cpu",
        seed=0,
        freeze_bn=True,
        ema_decay=0.9,
        checkpoint_every=2,
        log_every=1,
        progress=False,
        truncate_frames=truncate_frames,
    )
    assert trainer.dist.world_size == 2 and trainer.dist.backend == "gloo"
    trainer.fit()
    torch.save(trainer.model.state_dict(), f"{weights_dir}/rank{trainer.dist.rank}.pt")
    destroy_distributed()
    """
)


def single_process_reference(
    output_dir: Path, truncate_frames: int | None = None
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """One process, batch 2: step k sees the samples ranks 0 and 1 see at step k (shard_indices deals round-robin)."""
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    trainer = Trainer(
        model=model,
        data=RandomClips(length=8, void=False),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        output_dir=output_dir,
        max_steps=3,
        batch_size=2,
        device="cpu",
        seed=0,
        freeze_bn=True,
        checkpoint_every=0,
        log_every=1,
        progress=False,
        truncate_frames=truncate_frames,
    )
    trainer.fit()
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer.model.state_dict(), records


@pytest.mark.parametrize("truncate_frames", [None, 1], ids=["whole_clip", "sequence_learning"])
def test_two_process_gloo_run_matches_one_process_with_double_batch(tmp_path: Path, truncate_frames) -> None:
    """Also with sequence learning (truncate_frames), whose chunks bypass DDP's reducer and average explicitly."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "weights").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(script), str(tmp_path / "run"), str(tmp_path / "weights"), str(truncate_frames).lower()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    rank0 = torch.load(tmp_path / "weights" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights" / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients were synchronised
    expected, expected_records = single_process_reference(tmp_path / "single", truncate_frames)
    for key, value in expected.items():
        torch.testing.assert_close(rank0[key], value, atol=1e-6, rtol=0, msg=key)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_00000003.pt", "last.pt", "metrics.jsonl"]
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint["step"] == 3 and len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])  # per-rank seeds
    assert checkpoint["position"]["world_size"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # rank 0 alone writes
    for record, reference in zip(records, expected_records, strict=True):  # losses averaged over the ranks
        assert abs(record["loss"] - reference["loss"]) < 1e-6


def test_resume_with_another_data_layout_warns(tmp_path: Path, caplog) -> None:
    """A checkpoint resumed with another batch size (or world size) cannot continue the same data order: say so."""
    torch.manual_seed(0)
    model = ToyVOS(dropout=0.0)
    arguments = dict(
        data=RandomClips(length=8),
        output_dir=tmp_path,
        device="cpu",
        checkpoint_every=0,
        progress=False,
        freeze_bn=True,
    )
    Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=1, **arguments).fit()
    model = ToyVOS(dropout=0.0)
    other = Trainer(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), max_steps=2, batch_size=2, **arguments
    )
    with caplog.at_level("WARNING"):
        other.fit()
    assert "saved with 1 processes x batch 1, this run has 1 x 2" in caplog.text
