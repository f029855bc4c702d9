"""Trainer(persistent_workers=True): one set of DataLoader workers across epochs, and the same batches as fresh
workers per epoch (each worker's dataset copy follows the sample's epoch)."""

from __future__ import annotations

import torch
from trainer_toys import RandomClips, ToyVOS

from voszoo.engine import Trainer, build_optimizer


class _Recording(ToyVOS):
    """ToyVOS that records a fingerprint of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def forward(self, batch):
        self.seen.append(round(float(batch.images.double().sum()), 6))
        return super().forward(batch)


def _train(tmp_path, *, persistent: bool) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    model = _Recording()
    trainer = Trainer(
        model=model,
        data=RandomClips(length=4),  # sample i of epoch e depends on (seed, e, i): a stale epoch shows
        optimizer=build_optimizer(model, lr=0.01),
        output_dir=tmp_path / ("persistent" if persistent else "fresh"),
        max_steps=5,  # 2 batches per epoch: epochs 0, 1 and half of 2
        batch_size=2,
        num_workers=1,
        persistent_workers=persistent,
        checkpoint_every=0,
        device="cpu",
        seed=3,
        progress=False,
    )
    trainer.fit(resume=False)
    return model.seen, trainer


def test_persistent_workers_give_the_batches_of_fresh_workers(tmp_path):
    fresh, _ = _train(tmp_path, persistent=False)
    kept, trainer = _train(tmp_path, persistent=True)
    assert len(kept) == 5 and kept == fresh
    assert len(set(kept)) == 5  # every batch differs, epochs included
    loader, _sampler = trainer._persistent
    assert loader.persistent_workers and loader.num_workers == 1
