"""Sequence learning (Zhou et al., shared/papers/004, Sec. 2.2): whole videos unrolled frame by frame with truncated
back-propagation, through ``VOSModel.training_chunks`` and the trainer's ``truncate_frames``."""

from __future__ import annotations

import weakref

import pytest
import torch
from tiny_models import AffinityModel

from voszoo.data.clips import ClipDataset
from voszoo.data.davis import ToyVOS
from voszoo.data.toy import generate_toyvos
from voszoo.data.transforms import ClipTransform
from voszoo.engine import Trainer
from voszoo.losses import SegmentationCriterion
from voszoo.types import Clip, collate_clips


def _model(seed: int = 0) -> AffinityModel:
    torch.manual_seed(seed)
    return AffinityModel(channels=8, pool=4, criterion=SegmentationCriterion(bootstrap_ratio=1.0))


@pytest.fixture(scope="module")
def toyvos_video(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """One 20-frame ToyVOS training video at 48x48, as a clip of all its frames in order."""
    root = generate_toyvos(
        tmp_path_factory.mktemp("toy") / "toyvos", videos=5, frames=20, size=(48, 48), workers=1, progress=False
    )
    dataset = ClipDataset(
        collection=ToyVOS(root=root, split="train"),
        transform=ClipTransform(size=(48, 48), scale=(1.0, 1.0), hflip_prob=0.0, color_jitter=None),
        num_frames=20,
        max_gap=1,
        max_objects=2,
        seed=0,
    )
    return collate_clips([dataset[0]])


def _first(clip: Clip, frames: int) -> Clip:
    return Clip(
        images=clip.images[:, :frames],
        labels=clip.labels[:, :frames],
        num_objects=clip.num_objects,
        names=clip.names,
        frame_indices=clip.frame_indices[:, :frames],
    )


class SavedTensorMeter:
    """Peak bytes of tensors held by live autograd graphs (saved for backward), tracked with saved-tensor hooks."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def pack(self, tensor: torch.Tensor) -> object:
        # a detached alias: holding the tensor itself would tie a saved output to its own grad_fn in a cycle
        holder = _Holder(tensor.detach())
        nbytes = tensor.numel() * tensor.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, nbytes)
        return holder

    @staticmethod
    def unpack(holder: object) -> torch.Tensor:
        return holder.tensor  # type: ignore[attr-defined]


class _Holder:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _peak_saved_bytes(clip: Clip, *, chunk_frames: int | None, memory_frames: int | None) -> int:
    model = _model()
    meter = SavedTensorMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        for out in model.training_chunks(clip, chunk_frames=chunk_frames, memory_frames=memory_frames):
            out["loss"].backward()
            del out
    return meter.peak


def test_whole_video_training_keeps_peak_memory_flat(toyvos_video: Clip) -> None:
    assert toyvos_video.num_frames == 20
    ten, twenty = _first(toyvos_video, 10), toyvos_video
    truncated_10 = _peak_saved_bytes(ten, chunk_frames=1, memory_frames=3)
    truncated_20 = _peak_saved_bytes(twenty, chunk_frames=1, memory_frames=3)
    assert truncated_20 == truncated_10  # one frame's graph over a capped memory, whatever the video length
    full_10 = _peak_saved_bytes(ten, chunk_frames=None, memory_frames=None)
    full_20 = _peak_saved_bytes(twenty, chunk_frames=None, memory_frames=None)
    assert full_20 > 2 * full_10  # the meter does see growth: untruncated graphs over a growing memory
    assert truncated_20 < full_10


def test_chunk_losses_sum_to_the_clip_loss(toyvos_video: Clip) -> None:
    clip = _first(toyvos_video, 9)
    model = _model()
    whole = model(clip)["loss"]
    for chunk in (1, 3, 5):
        parts = [out["loss"].detach() for out in model.training_chunks(clip, chunk_frames=chunk)]
        assert len(parts) == -(-8 // chunk)
        torch.testing.assert_close(torch.stack(parts).sum(), whole.detach(), rtol=1e-5, atol=1e-6)


def test_truncated_gradient_matches_per_frame_reference(toyvos_video: Clip) -> None:
    """chunk_frames=1 equals a hand-unrolled reference where each frame reads a detached memory."""
    clip = _first(toyvos_video, 5)
    model = _model()
    for out in model.training_chunks(clip, chunk_frames=1):
        out["loss"].backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    reference = _model()
    images, labels, n = clip.images, clip.labels, int(clip.num_objects.max())
    memory_keys, memory_masks = [], []
    first = reference.encode(images[:, 0])
    probs = torch.nn.functional.one_hot(labels[:, 0].clamp(max=n), n + 1).permute(0, 3, 1, 2).float()
    small = torch.nn.functional.interpolate(probs, size=first.maps["s4"].shape[-2:], mode="bilinear")
    memory_keys.append(first.maps["s4"])
    memory_masks.append(small)
    for t in range(1, 5):
        if t > 1:  # frames before t were back-propagated already: their tensors are constants now
            memory_keys = [k.detach() for k in memory_keys]
            memory_masks = [m.detach() for m in memory_masks]
        feats = reference.encode(images[:, t])
        keys = torch.stack(memory_keys, dim=2).flatten(2)
        masks = torch.stack(memory_masks, dim=2).flatten(2)
        query = feats.maps["s4"].flatten(2)
        affinity = torch.softmax(reference.temperature * keys.transpose(1, 2) @ query, dim=1)
        read = (masks @ affinity).clamp(1e-6, 1.0)
        logits = read.log().view(1, n + 1, *feats.maps["s4"].shape[-2:])
        logits = torch.nn.functional.interpolate(logits, size=feats.size, mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, labels[:, t], ignore_index=255) / 4
        loss.backward()
        memory_keys.append(feats.maps["s4"])
        memory_masks.append(
            torch.nn.functional.interpolate(logits.softmax(1), size=feats.maps["s4"].shape[-2:], mode="bilinear")
        )
    for name, p in reference.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


class _Videos(torch.utils.data.Dataset):
    def __init__(self, clip: Clip) -> None:
        self.clip = clip

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "images": self.clip.images[0],
            "labels": self.clip.labels[0],
            "num_objects": int(self.clip.num_objects[0]),
            "name": self.clip.names[0],
            "frame_indices": self.clip.frame_indices[0],
        }


def test_trainer_sequence_learning_trains(toyvos_video: Clip, tmp_path) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model=model,
        data=_Videos(_first(toyvos_video, 8)),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        output_dir=tmp_path,
        max_steps=2,
        batch_size=1,
        checkpoint_every=0,
        progress=False,
        truncate_frames=2,
        memory_frames=3,
    )
    metrics = trainer.fit(resume=False)
    assert trainer.step == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_trainer_rejects_bad_truncation(tmp_path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="truncate_frames"):
        Trainer(
            model=model,
            data=[],
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            output_dir=tmp_path,
            max_steps=1,
            truncate_frames=0,
        )
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="training_chunks"):
        Trainer(
            model=plain,
            data=[],
            optimizer=torch.optim.SGD(plain.parameters(), lr=0.1),
            output_dir=tmp_path,
            max_steps=1,
            truncate_frames=1,
        )
