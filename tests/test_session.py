"""InferenceSession: object ids, mid-video objects, groups for joint models, flip TTA, bounded memory, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import AffinityModel

from voszoo.inference.session import InferenceSession
from voszoo.memory import EveryN, FirstAndPrevious

COLOURS = {1: (230, 20, 20), 3: (20, 230, 20), 7: (20, 20, 230)}


def colour_model(**kwargs) -> AffinityModel:
    """An AffinityModel whose embedding is the identity on RGB, so that it tracks colours."""
    model = AffinityModel(channels=3, pool=1, **kwargs)
    with torch.no_grad():
        model.embed.weight.zero_()
        model.embed.bias.zero_()
        for c in range(3):
            model.embed.weight[c, c, 1, 1] = 1.0
        model.temperature.fill_(50.0)
    return model


def square_video(num_frames: int, appear: dict[int, int], size: int = 48) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Coloured 12x12 squares drifting right by one pixel per frame; object k is drawn from frame appear[k] on."""
    frames, labels = [], []
    for t in range(num_frames):
        frame = np.full((size, size, 3), 128, np.uint8)
        label = np.zeros((size, size), np.uint8)
        for row, (obj, start) in enumerate(sorted(appear.items())):
            if t < start:
                continue
            top, left = 4 + 14 * row, 2 + (t % 20)
            frame[top : top + 12, left : left + 12] = COLOURS[obj]
            label[top : top + 12, left : left + 12] = obj
        frames.append(frame)
        labels.append(label)
    return frames, labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def run(session: InferenceSession, frames, labels, appear) -> list[np.ndarray]:
    outputs = []
    for t, frame in enumerate(frames):
        given = labels[t] if t in appear.values() else None
        if given is not None:
            given = np.where(np.isin(labels[t], [k for k, s in appear.items() if s == t]), labels[t], 0)
        outputs.append(session.step(frame, given).labels)
    return outputs


def test_tracks_non_contiguous_ids_and_object_appearing_at_frame_10() -> None:
    appear = {1: 0, 3: 0, 7: 10}
    frames, labels = square_video(16, appear)
    session = InferenceSession(colour_model(), policy_factory=lambda: EveryN(n=5))
    outputs = run(session, frames, labels, appear)
    assert session.object_ids == [1, 3, 7]
    np.testing.assert_array_equal(outputs[0], labels[0])
    np.testing.assert_array_equal(outputs[10] == 7, labels[10] == 7)  # given mask is ground truth on its frame
    assert not (outputs[9] == 7).any()
    for t in range(11, 16):
        for obj in (1, 3, 7):
            assert iou(outputs[t] == obj, labels[t] == obj) > 0.7, (t, obj)
    assert len(session.groups) == 2  # objects 1 and 3 from frame 0, object 7 from frame 10


def test_joint_model_with_small_identity_bank_uses_groups() -> None:
    appear = {1: 0, 3: 0, 7: 0}
    frames, labels = square_video(6, appear)
    session = InferenceSession(colour_model(joint_capacity=2), policy_factory=FirstAndPrevious)
    outputs = run(session, frames, labels, appear)
    assert [g.object_ids for g in session.groups] == [[1, 3], [7]]
    for obj in (1, 3, 7):
        assert iou(outputs[-1] == obj, labels[-1] == obj) > 0.7


def test_flip_tta_encodes_each_frame_twice_and_keeps_results() -> None:
    appear = {1: 0, 3: 0}
    frames, labels = square_video(5, appear)
    model = colour_model()
    session = InferenceSession(model, policy_factory=FirstAndPrevious, flip=True)
    outputs = run(session, frames, labels, appear)
    assert model.encode_calls == 2 * len(frames)
    for obj in (1, 3):
        assert iou(outputs[-1] == obj, labels[-1] == obj) > 0.7


def test_resize_and_padding_round_trip_to_original_size() -> None:
    appear = {1: 0}
    frames, labels = square_video(4, appear, size=50)  # 50 is not a multiple of the stride
    session = InferenceSession(colour_model(), policy_factory=FirstAndPrevious, short_side=36)
    outputs = run(session, frames, labels, appear)
    assert all(o.shape == (50, 50) for o in outputs)
    np.testing.assert_array_equal(outputs[0], labels[0])  # the reference frame survives the resize exactly
    assert iou(outputs[-1] == 1, labels[-1] == 1) > 0.6


def test_max_frames_bounds_the_memory_of_a_long_video() -> None:
    appear = {1: 0}
    frames, labels = square_video(40, appear, size=32)
    session = InferenceSession(colour_model(), policy_factory=lambda: EveryN(n=1, max_frames=4))
    sizes = []
    for t, frame in enumerate(frames):
        session.step(frame, labels[0] if t == 0 else None)
        memory = session.groups[0].memories[0]
        sizes.append(sum(v.numel() for e in memory.entries() for v in e.tensors.values()))
    assert max(sizes[10:]) == sizes[10] == sizes[-1]  # flat after filling up
    assert session.groups[0].memories[0].frame_indices[0] == 0  # the reference frame is never evicted


def test_errors_name_the_problem() -> None:
    session = InferenceSession(colour_model(), policy_factory=FirstAndPrevious)
    with pytest.raises(ValueError, match="first frame"):
        session.step(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        session.step(np.zeros((3, 40, 3), np.uint8), np.zeros((3, 40), np.uint8))
    session = InferenceSession(colour_model(), policy_factory=FirstAndPrevious)
    session.step(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), np.uint8))
    with pytest.raises(ValueError, match="32"):
        session.step(np.zeros((40, 32, 3), np.uint8))


def test_argmax_labels_equals_argmax_with_first_index_on_ties():
    from voszoo.models.base import argmax_labels

    scores = torch.randn(2, 4, 5, 6)
    scores[0, :, 0, 0] = 1.0  # a four-way tie: the first class, as argmax
    scores[1, 2:, 1, 1] = 7.0  # a tie between classes 2 and 3
    for dim in (0, 1):
        assert torch.equal(argmax_labels(scores, dim), scores.argmax(dim=dim))
    assert int(argmax_labels(scores, 1)[0, 0, 0]) == 0 and int(argmax_labels(scores, 1)[1, 1, 1]) == 2
