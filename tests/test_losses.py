"""voszoo.losses against hand computations and naive per-frame / per-pixel loop references, forward and backward."""

import math

import pytest
import torch
import torch.nn.functional as F

from voszoo.losses import (
    SegmentationCriterion,
    bootstrapped_cross_entropy,
    flow_mse,
    mask_iou_loss,
    soft_jaccard_loss,
)


def random_case(*, m=4, c=3, h=6, w=7, ignore_fraction=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c, (m, h, w), generator=g)
    labels[torch.rand(m, h, w, generator=g) < ignore_fraction] = 255
    return logits, labels


def naive_bootstrapped_ce(logits, labels, ratio):
    """Per frame: valid pixels, their CE by -log_softmax, the ceil(ratio * V) largest picked by a Python sort, then
    F.cross_entropy on the selected pixels (summed); mean over all selected pixels."""
    total, count = 0.0, 0
    for m in range(logits.shape[0]):
        scores = logits[m].flatten(1).T  # (HW, C)
        target = labels[m].flatten()
        valid = [i for i in range(target.numel()) if target[i] != 255]
        if not valid:
            continue
        losses = [-(torch.log_softmax(scores[i], 0)[target[i]]).item() for i in valid]
        k = math.ceil(ratio * len(valid))
        order = sorted(range(len(valid)), key=lambda j: -losses[j])[:k]
        chosen = torch.tensor([valid[j] for j in order])
        total = total + F.cross_entropy(scores[chosen], target[chosen], reduction="sum")
        count += k
    return total / count


def naive_soft_jaccard(logits, labels):
    frames = []
    for m in range(logits.shape[0]):
        probs = logits[m].softmax(0)
        valid = labels[m] != 255
        if not valid.any():
            continue
        per_class = []
        for c in range(logits.shape[1]):
            g = ((labels[m] == c) & valid).double()
            if g.sum() == 0:
                continue
            p = probs[c] * valid
            inter = (p * g).sum()
            per_class.append(1 - inter / (p.sum() + g.sum() - inter))
        frames.append(torch.stack(per_class).mean())
    return torch.stack(frames).mean()


def naive_mask_iou(logits, labels, num_objects, eps):
    terms = []
    for m in range(logits.shape[0]):
        probs = logits[m].softmax(0)
        valid = labels[m] != 255
        for i in range(1, int(num_objects[m]) + 1):
            p = probs[i][valid]
            g = (labels[m][valid] == i).double()
            terms.append(1 - (torch.minimum(p, g).sum() + eps) / (torch.maximum(p, g).sum() + eps))
    return torch.stack(terms).mean()


def assert_same_value_and_grad(fast_fn, slow_fn, logits):
    fast = fast_fn(logits)
    slow = slow_fn(logits)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    (g_fast,) = torch.autograd.grad(fast, logits)
    (g_slow,) = torch.autograd.grad(slow, logits)
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-12)


# -- bootstrapped cross-entropy --------------------------------------------------------------------------------------
def test_bootstrapped_ce_hand_computed():
    # 2 classes, 4 pixels, label 0 everywhere, logits (0, x): CE = log(1 + e^x)
    xs = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), xs]).view(1, 2, 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    ce = [math.log1p(math.exp(x)) for x in (0.0, 1.0, -1.0, 2.0)]
    hardest_two = (ce[3] + ce[1]) / 2
    assert bootstrapped_cross_entropy(logits, labels, ratio=0.5).item() == pytest.approx(hardest_two, abs=1e-12)
    # ceil(0.3 * 4) = 2 as well; ceil(0.1 * 4) = 1
    assert bootstrapped_cross_entropy(logits, labels, ratio=0.3).item() == pytest.approx(hardest_two, abs=1e-12)
    assert bootstrapped_cross_entropy(logits, labels, ratio=0.1).item() == pytest.approx(ce[3], abs=1e-12)
    assert bootstrapped_cross_entropy(logits, labels, ratio=1.0).item() == pytest.approx(sum(ce) / 4, abs=1e-12)


@pytest.mark.parametrize("ratio", [0.15, 0.4, 0.77])
def test_bootstrapped_ce_matches_naive(ratio):
    logits, labels = random_case()
    assert_same_value_and_grad(
        lambda x: bootstrapped_cross_entropy(x, labels, ratio=ratio),
        lambda x: naive_bootstrapped_ce(x, labels, ratio),
        logits,
    )


def test_full_ratio_is_plain_cross_entropy_with_ignore():
    logits, labels = random_case(ignore_fraction=0.4)
    assert_same_value_and_grad(
        lambda x: bootstrapped_cross_entropy(x, labels, ratio=1.0),
        lambda x: F.cross_entropy(x, labels, ignore_index=255),
        logits,
    )


def test_ignored_pixels_have_no_influence():
    logits, labels = random_case(ignore_fraction=0.3)
    loss = bootstrapped_cross_entropy(logits, labels, ratio=0.15)
    (grad,) = torch.autograd.grad(loss, logits)
    ignored = (labels == 255)[:, None].expand_as(grad)
    assert grad[ignored].abs().max() == 0
    changed = logits.detach().clone()
    changed[ignored] = 100.0
    assert bootstrapped_cross_entropy(changed, labels, ratio=0.15).item() == pytest.approx(loss.item(), abs=1e-12)


def test_all_ignored_gives_zero_with_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), 255)
    loss = bootstrapped_cross_entropy(logits, labels, ratio=0.15)
    assert loss.item() == 0.0
    loss.backward()


def test_bad_inputs_raise():
    logits, labels = random_case()
    with pytest.raises(ValueError, match="ratio"):
        bootstrapped_cross_entropy(logits, labels, ratio=0.0)
    with pytest.raises(ValueError, match="3 channels"):
        bootstrapped_cross_entropy(logits, labels.clamp(max=3).masked_fill(labels == 0, 3))
    with pytest.raises(ValueError, match=r"\(M, C, H, W\)"):
        bootstrapped_cross_entropy(logits, labels[:, :5])


# -- soft Jaccard ----------------------------------------------------------------------------------------------------
def test_soft_jaccard_hand_computed():
    # uniform probabilities 0.5 over 2 classes, labels [0, 1]: per class I = 0.5, union = 1 + 1 - 0.5 -> 1 - 1/3
    logits = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    labels = torch.tensor([[[0, 1]]])
    assert soft_jaccard_loss(logits, labels).item() == pytest.approx(2 / 3, abs=1e-12)
    # an ignored pixel drops out: only class 0 present, I = 0.5, union = 0.5 + 1 - 0.5 -> 0.5
    labels = torch.tensor([[[0, 255]]])
    assert soft_jaccard_loss(logits, labels).item() == pytest.approx(0.5, abs=1e-12)


def test_soft_jaccard_matches_naive():
    logits, labels = random_case(c=4)
    labels[0][labels[0] == 2] = 1  # class 2 absent from frame 0: skipped there
    labels[1] = 255  # a frame without valid pixels is skipped
    assert_same_value_and_grad(lambda x: soft_jaccard_loss(x, labels), lambda x: naive_soft_jaccard(x, labels), logits)


# -- mask IoU (MUNet Eq. 4) ------------------------------------------------------------------------------------------
def test_mask_iou_hand_computed():
    logits = torch.zeros(1, 3, 1, 4, dtype=torch.float64)  # p = 1/3 everywhere
    labels = torch.tensor([[[1, 1, 0, 2]]])
    object1 = 1 - (2 / 3) / (1 + 1 + 1 / 3 + 1 / 3)  # min: 1/3 + 1/3; max: 1, 1, 1/3, 1/3
    object2 = 1 - (1 / 3) / (1 / 3 * 3 + 1)
    both = mask_iou_loss(logits, labels, num_objects=torch.tensor([2]), eps=0.0).item()
    assert both == pytest.approx((object1 + object2) / 2, abs=1e-12)
    first = mask_iou_loss(logits, labels, num_objects=torch.tensor([1]), eps=0.0).item()
    assert first == pytest.approx(object1, abs=1e-12)


def test_mask_iou_perfect_prediction_is_zero():
    labels = torch.tensor([[[1, 0], [2, 2]]])
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).double() * 60.0
    assert mask_iou_loss(logits, labels, num_objects=torch.tensor([2])).item() == pytest.approx(0.0, abs=1e-9)


def test_mask_iou_matches_naive():
    logits, labels = random_case(c=4)
    num_objects = torch.tensor([3, 1, 2, 0])
    labels = torch.where((labels != 255) & (labels > num_objects[:, None, None]), torch.zeros_like(labels), labels)
    assert_same_value_and_grad(
        lambda x: mask_iou_loss(x, labels, num_objects=num_objects),
        lambda x: naive_mask_iou(x, labels, num_objects, 1e-6),
        logits,
    )


def test_mask_iou_rejects_too_many_objects():
    logits, labels = random_case(c=3)
    with pytest.raises(ValueError, match="num_objects"):
        mask_iou_loss(logits, labels, num_objects=torch.tensor([3, 1, 1, 1]))


# -- flow MSE --------------------------------------------------------------------------------------------------------
def test_flow_mse_hand_computed():
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    assert flow_mse(pred, target).item() == pytest.approx((1 + 4 + 9 + 0) / 4)
    valid = torch.tensor([[[True, False]]])
    assert flow_mse(pred, target, valid=valid).item() == pytest.approx((1 + 9) / 2)
    with pytest.raises(ValueError, match="flow_mse"):
        flow_mse(pred, target[:, :1])


# -- criterion -------------------------------------------------------------------------------------------------------
def test_criterion_is_the_weighted_sum_over_pooled_frames():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)  # (B, T, N+1, H, W)
    labels = torch.randint(0, 3, (2, 3, 5, 6), generator=g)
    labels[1][labels[1] == 2] = 0  # sample 1 has one object
    labels[0, 0, 0, :3] = 255
    num_objects = torch.tensor([2, 1])
    criterion = SegmentationCriterion(bootstrap_ratio=0.4, ce_weight=0.5, jaccard_weight=0.25, iou_weight=2.0)
    out = criterion(logits, labels, num_objects=num_objects)
    assert set(out) == {"loss", "loss_ce", "loss_jaccard", "loss_iou"}

    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten(0, 1)
    ce = naive_bootstrapped_ce(flat_logits, flat_labels, 0.4)
    jac = naive_soft_jaccard(flat_logits, flat_labels)
    iou = naive_mask_iou(flat_logits, flat_labels, torch.tensor([2, 2, 2, 1, 1, 1]), 1e-6)
    expected = 0.5 * ce + 0.25 * jac + 2.0 * iou
    for key, value in (("loss_ce", ce), ("loss_jaccard", jac), ("loss_iou", iou), ("loss", expected)):
        torch.testing.assert_close(out[key], value, rtol=0, atol=1e-12)
    (g_fast,) = torch.autograd.grad(out["loss"], logits)
    (g_slow,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-12)


def test_criterion_reports_only_weighted_terms_and_validates():
    logits = torch.randn(1, 2, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 2, 4, 4))
    out = SegmentationCriterion(bootstrap_ratio=1.0)(logits, labels, num_objects=torch.tensor([2]))
    assert set(out) == {"loss", "loss_ce"}
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits.flatten(0, 1), labels.flatten(0, 1)))
    with pytest.raises(ValueError, match="at least one loss weight"):
        SegmentationCriterion(ce_weight=0.0)
    with pytest.raises(ValueError, match="bootstrap_ratio"):
        SegmentationCriterion(bootstrap_ratio=1.5)
    with pytest.raises(ValueError, match=r"\(B, T, N\+1, H, W\)"):
        SegmentationCriterion()(logits[0], labels, num_objects=torch.tensor([2]))


def test_bootstrap_warmup_falls_linearly_from_plain_ce_to_the_ratio():
    """AOT's official hard-pixel warm-up: the kept share is 1 at step 0, ratio from ``warmup`` of the run on."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 3, 6, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 2, 6, 7), generator=g)
    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten(0, 1)
    criterion = SegmentationCriterion(bootstrap_ratio=0.2, bootstrap_warmup=0.5)
    for step, expected_ratio in ((0, 1.0), (25, 0.6), (50, 0.2), (90, 0.2)):
        criterion.set_training_progress(step, 100)
        assert criterion.current_bootstrap_ratio == pytest.approx(expected_ratio)
        out = criterion(logits, labels, num_objects=torch.tensor([2]))
        torch.testing.assert_close(out["loss_ce"], naive_bootstrapped_ce(flat_logits, flat_labels, expected_ratio))
    assert SegmentationCriterion(bootstrap_ratio=0.2).current_bootstrap_ratio == 0.2  # no warm-up: fixed
    with pytest.raises(ValueError, match="bootstrap_warmup"):
        SegmentationCriterion(bootstrap_warmup=1.5)
