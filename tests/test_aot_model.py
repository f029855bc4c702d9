"""AOT's contract semantics on a narrow model: memorize with or without a preceding segment, one-hot memory masks,
identity assignment (fixed at inference, shuffled in training, equivariant), the training memory gap, constructor
checks, and a 12-object video through the inference session in identity groups of at most 10."""

import numpy as np
import pytest
import torch
from clips_util import tiny_clip

from voszoo.backbones.mobilenet import MobileNetV2Backbone
from voszoo.decoders.fpn import FPNHead
from voszoo.inference.session import InferenceSession
from voszoo.layers.identity import IdentityBank
from voszoo.layers.lstt import LSTT
from voszoo.losses import SegmentationCriterion
from voszoo.memory import EveryN
from voszoo.models.aot import AOT
from voszoo.models.base import labels_to_probs
from voszoo.types import Clip


# -- contract semantics on a narrow AOT ------------------------------------------------------------------------------
def narrow_aot(*, layers=2, train_long_term_gap=9999, **schedule):
    torch.manual_seed(0)
    return AOT(
        encoder=MobileNetV2Backbone(frozen_bn=True),
        lstt=LSTT(num_layers=layers, d_model=64, dim_feedforward=128, window_size=5),
        decoder=FPNHead(in_channels=64 * (layers + 1), out_channels=11, hidden_channels=32, skip_channels=(96, 32, 24)),
        identity=IdentityBank(num_identities=10, embed_dim=64),
        criterion=SegmentationCriterion(bootstrap_ratio=0.15, ce_weight=0.5, jaccard_weight=0.5),
        train_long_term_gap=train_long_term_gap,
        **schedule,
    )


def blocks(num_objects, size=64, seed=0):
    """A (size, size) label map with objects 1..num_objects as 8x8 squares at random grid cells."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.uint8)
    cells = rng.choice((size // 8) ** 2, num_objects, replace=False)
    for obj, cell in enumerate(cells, start=1):
        y, x = divmod(int(cell), size // 8)
        labels[8 * y : 8 * y + 8, 8 * x : 8 * x + 8] = obj
    return labels


def test_memorize_without_segment_propagates_itself_and_hard_masks_are_one_hot():
    model = narrow_aot().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 1, 3, 64, 64, generator=g)
    probs0 = labels_to_probs(torch.from_numpy(blocks(3)).long()[None], 3)
    soft1 = torch.rand(1, 4, 64, 64, generator=g).softmax(1)
    with torch.no_grad():
        feats = [model.encode(images[t]) for t in range(3)]
        a, b = model.new_memory(EveryN(n=5), num_objects=3), model.new_memory(EveryN(n=5), num_objects=3)
        for memory in (a, b):
            model.memorize(memory, feats[0], probs0, 0)
        model.segment(a, feats[1])  # a: segment, then memorize; b: memorize directly
        model.memorize(a, feats[1], soft1, 1)
        hard1 = labels_to_probs(soft1.argmax(1), 3)
        model.memorize(b, feats[1], hard1, 1)
        assert a.state["id_assignment"].tolist() == [[0, 1, 2, 3]]  # inference: object i -> identity i
        for name, tensor in a.short_term.tensors.items():
            torch.testing.assert_close(tensor, b.short_term.tensors[name], msg=name)
        assert set(a.short_term.tensors) == {"key0", "value0", "key1", "value1"}
        assert a.short_term.tensors["key1"].shape == (1, 16, 64)
        torch.testing.assert_close(model.segment(a, feats[2]), model.segment(b, feats[2]))


def test_identities_are_shuffled_in_training_and_equivariant():
    model = narrow_aot().eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 1, 3, 64, 64, generator=g)
    labels = torch.from_numpy(blocks(2, seed=3)).long()[None]

    def run(order, assignment):
        memory = model.new_memory(EveryN(n=5), num_objects=2)
        memory.state["id_assignment"] = torch.tensor([assignment])  # fixed by the caller: kept
        with torch.no_grad():
            model.memorize(memory, model.encode(images[0]), labels_to_probs(labels, 2)[:, [0, *order]], 0)
            return model.segment(memory, model.encode(images[1]))

    # identity assignment is a relabelling: swapping the objects and their identities swaps the outputs (Eq. 3, 5)
    base = run((1, 2), [0, 4, 7])
    swapped = run((2, 1), [0, 7, 4])
    torch.testing.assert_close(swapped, base[:, [0, 2, 1]], atol=1e-5, rtol=1e-5)
    model.train()
    memory = model.new_memory(EveryN(n=5), num_objects=2)
    torch.manual_seed(5)
    model.memorize(memory, model.encode(images[0].repeat(8, 1, 1, 1)), labels_to_probs(labels.repeat(8, 1, 1), 2), 0)
    assignment = memory.state["id_assignment"]
    assert (assignment[:, 0] == 0).all() and len({tuple(r) for r in assignment.tolist()}) > 1


def test_training_memory_follows_the_long_term_gap(monkeypatch):
    recorded = []
    for gap, expected in ((9999, [0]), (2, [0, 2])):
        model = narrow_aot(layers=1, train_long_term_gap=gap).train()
        new_memory = model.new_memory

        def spy(policy, *, num_objects, _new=new_memory):
            memory = _new(policy, num_objects=num_objects)
            recorded.append(memory)
            return memory

        monkeypatch.setattr(model, "new_memory", spy)
        clip = tiny_clip()
        five = Clip(
            images=torch.cat([clip.images, clip.images[:, :2]], 1),
            labels=torch.cat([clip.labels, clip.labels[:, :2]], 1),
            num_objects=clip.num_objects,
            names=clip.names,
            frame_indices=torch.arange(5).repeat(2, 1),
        )
        out = model(five)
        assert out["logits"].shape == (2, 4, 3, 64, 64)
        memory = recorded[-1]
        assert [e.frame_index for e in memory.long_term] == expected and memory.short_term.frame_index == 3
        assert memory.state["objects_per_sample"].tolist() == [2, 1]


def test_a_twelve_object_video_runs_in_identity_groups():
    model = narrow_aot(layers=1)
    session = InferenceSession(model, policy_factory=lambda: EveryN(n=9999))
    rng = np.random.default_rng(0)
    labels = blocks(12, seed=4)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    first = session.step(frames[0], labels)
    assert np.array_equal(first.labels, labels)
    assert [g.object_ids for g in session.groups] == [list(range(1, 11)), [11, 12]]
    for frame in frames[1:]:
        result = session.step(frame)
        assert result.probs.shape == (13, 64, 64) and result.object_ids == list(range(1, 13))
        torch.testing.assert_close(result.probs.sum(0), torch.ones(64, 64))
        assert set(np.unique(result.labels)) <= set(range(13))
    for group, n in zip(session.groups, (10, 2), strict=True):
        memory = group.memories[0]
        assert memory.state["num_objects"] == n and memory.state["id_assignment"].tolist() == [list(range(n + 1))]
        assert [e.frame_index for e in memory.long_term] == [0] and memory.short_term.frame_index == 2
    with pytest.raises(ValueError, match="at most 10"):
        model.new_memory(EveryN(n=5), num_objects=11)


def test_constructor_checks_name_the_inconsistent_parts():
    with pytest.raises(ValueError, match="in_channels=512 must be d_model x"):
        AOT(
            encoder=MobileNetV2Backbone(),
            lstt=LSTT(num_layers=2, d_model=256),
            decoder=FPNHead(in_channels=512),
            identity=IdentityBank(),
        )
    with pytest.raises(ValueError, match="skip_channels"):
        AOT(
            encoder=MobileNetV2Backbone(),
            lstt=LSTT(num_layers=1, d_model=256),
            decoder=FPNHead(in_channels=512, skip_channels=(1024, 512, 256)),
            identity=IdentityBank(),
        )


def test_encoder_learns_at_the_encoder_rate_and_frozen_parts_are_left_out():
    from voszoo.engine.optim import param_groups

    model = narrow_aot(layers=1)
    model.encoder.features[0][0].weight.requires_grad_(False)  # as freeze_at would
    groups = {g["name"]: g for g in param_groups(model, lr=2e-4, weight_decay=0.07, encoder_lr_mult=0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    encoder = [
        names[id(p)] for key in ("encoder/decay", "encoder/no_decay") for p in groups.get(key, {"params": []})["params"]
    ]
    others = [
        names[id(p)] for key in ("other/decay", "other/no_decay") for p in groups.get(key, {"params": []})["params"]
    ]
    assert encoder and all(n.startswith("encoder.") for n in encoder)
    assert "encoder_projector.weight" in others  # a new layer, not the pretrained encoder (official "encoder." rule)
    assert groups["encoder/decay"]["lr"] == pytest.approx(2e-5) and groups["other/decay"]["lr"] == pytest.approx(2e-4)
    assert "encoder.features.0.0.weight" not in encoder and "LSTT.mask_token" not in others


# -- the official training schedule -------------------------------------------------------------------------------
def test_reference_loss_is_added_with_a_weight_falling_over_the_run():
    """Official TRAIN_AUX_LOSS_*: loss = (1 - progress) x w x reference loss + the predicted frames' loss."""
    model = narrow_aot(layers=1, reference_loss_weight=2.0).train()
    clip = tiny_clip()
    for progress, weight in ((None, 2.0), ((25, 100), 1.5), ((100, 100), 0.0)):
        if progress is not None:
            model.set_training_progress(*progress)
        torch.manual_seed(3)
        out = model(clip)
        frames = model.criterion(out["logits"], clip.labels[:, 1:], num_objects=clip.num_objects)["loss"]
        assert out["loss_reference"] > 0
        torch.testing.assert_close(out["loss"], frames + weight * out["loss_reference"])
    plain = narrow_aot(layers=1).train()
    torch.manual_seed(3)
    assert "loss_reference" not in plain(clip)


def test_teacher_forcing_memorises_the_ground_truth_then_the_prediction_with_frozen_identities(monkeypatch):
    """Official TRAIN_SEQ_TRAINING_*: before the share, frame 1 is memorised with its labels; after it, with the
    prediction, and the identity bank gets no gradient."""
    model = narrow_aot(layers=1, teacher_forcing=0.5).train()
    clip = tiny_clip(void_corner=False)
    memorised = {}
    real = model.memorize

    def spy(memory, feats, probs, frame_index):
        memorised[frame_index] = probs.detach().clone()
        return real(memory, feats, probs, frame_index)

    monkeypatch.setattr(model, "memorize", spy)
    for step, forced in ((10, True), (60, False)):
        model.zero_grad(set_to_none=True)
        model.set_training_progress(step, 100)
        out = model(clip)
        out["loss"].backward()
        expected = labels_to_probs(clip.labels[:, 1], 2) if forced else out["logits"][:, 0].detach().softmax(1)
        torch.testing.assert_close(memorised[1], expected)
        bank_grad = model.patch_wise_id_bank.weight.grad
        assert (bank_grad is not None and bank_grad.abs().sum() > 0) == forced
