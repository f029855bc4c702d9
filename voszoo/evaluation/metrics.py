"""Region similarity J and boundary accuracy F of the DAVIS benchmark, exact and fast.

Definitions: Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation", CVPR 2016,
Sec. 3.1; the numbers reproduce the official DAVIS 2017 evaluation (github davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py`` and ``utils.py``) bit for bit. The formulas are written out in ``docs/evaluation.md``.

- J = |P and G| / |P or G| on boolean masks, 1 when both are empty.
- F is the F-measure of boundary precision and recall: boundaries by :func:`seg2bmap`, a boundary pixel counts as
  matched when a boundary pixel of the other mask lies within ``r = ceil(0.008 * sqrt(H^2 + W^2))`` pixels
  (Euclidean, ``dx^2 + dy^2 <= r^2``, i.e. dilation by a disk; nothing outside the image).

Speed: every frame is cropped to the bounding box of the two masks, and the disk dilation is never materialised:
a boundary pixel is matched when one of the ``2r + 1`` row segments of the disk around it holds a boundary pixel of
the other mask, which a binary search in the other mask's sorted boundary pixels answers. The result is identical to
dilating (the tests compare it with a pixel-loop dilation).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["jaccard", "seg2bmap", "boundary_radius", "f_measure", "mean_recall_decay", "BOUNDARY_THRESHOLD"]

BOUNDARY_THRESHOLD: float = 0.008
"""Boundary tolerance as a fraction of the image diagonal (the official ``bound_th``)."""
_SENTINEL = np.iinfo(np.int64).max


def _masks(pred: np.ndarray, gt: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    if pred.ndim < 2:
        raise ValueError(f"{name}: masks must be (..., H, W), got shape {pred.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float | np.ndarray:
    """Region similarity (intersection over union) of boolean masks.

    ``pred`` and ``gt``: (..., H, W), any dtype (non-zero = inside). Returns a float for (H, W) inputs, else a float64
    array of the leading shape. Both masks empty gives 1.
    """
    pred, gt = _masks(pred, gt, "jaccard")
    inter = np.count_nonzero(pred & gt, axis=(-2, -1))
    union = np.count_nonzero(pred | gt, axis=(-2, -1))
    values = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(values) if values.ndim == 0 else values


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a mask, as the official ``_seg2bmap`` (D. Martin's BSDS code).

    A pixel is boundary when it differs from its right, bottom or bottom-right neighbour; neighbours outside the image
    are not compared, so the last row compares only to the right, the last column only downwards, the bottom-right
    pixel is never boundary and a mask touching the image border has no boundary along it.
    ``mask``: (..., H, W), non-zero = inside. Returns bool (..., H, W).
    """
    seg = np.asarray(mask)
    if seg.ndim < 2:
        raise ValueError(f"seg2bmap: mask must be (..., H, W), got shape {seg.shape}")
    seg = seg.astype(bool, copy=False)
    # Inside the image, "differs from bottom-right" = "differs from bottom" XOR "bottom differs from its right", so a
    # pixel is boundary iff it differs from its right, or its bottom neighbour does, or it differs from its bottom.
    right = seg[..., :, :-1] != seg[..., :, 1:]
    bmap = np.zeros(seg.shape, dtype=bool)
    bmap[..., :, :-1] = right
    bmap[..., :-1, :-1] |= right[..., 1:, :]
    bmap[..., :-1, :] |= seg[..., :-1, :] != seg[..., 1:, :]
    return bmap


def boundary_radius(height: int, width: int, *, threshold: float = BOUNDARY_THRESHOLD) -> int:
    """Boundary tolerance in pixels: ``ceil(threshold * sqrt(height^2 + width^2))`` (8 at 854x480)."""
    if not 0 < threshold < 1:
        raise ValueError(f"boundary_radius: threshold is a fraction of the image diagonal in (0, 1), got {threshold}")
    return int(math.ceil(threshold * math.sqrt(height * height + width * width)))


def _disk_half_widths(radius: int) -> np.ndarray:
    """Half-width of the disk ``x^2 + y^2 <= r^2`` at each row offset -r..r, shape (2r + 1,) int64."""
    offsets = np.arange(-radius, radius + 1)
    return np.array([math.isqrt(radius * radius - dy * dy) for dy in offsets.tolist()], dtype=np.int64)


def _boundary_keys(boundary: np.ndarray, stride: int) -> np.ndarray:
    """Sorted keys ``y * stride + x`` (int64) of the True pixels of a (H, W) boundary map, then one sentinel
    (the largest int64), so that a binary search past the last key reads a key that matches nothing."""
    flat = np.flatnonzero(boundary)
    keys = np.empty(flat.size + 1, dtype=np.int64)
    width = boundary.shape[1]
    np.add((flat // width) * stride, flat % width, out=keys[:-1])
    keys[-1] = _SENTINEL
    return keys


def _count_matched(queries: np.ndarray, others: np.ndarray, stride: int, radius: int) -> int:
    """How many query pixels have an ``others`` pixel within the disk ``dx^2 + dy^2 <= radius^2``.

    Both are keys from :func:`_boundary_keys` (sorted, sentinel last), with ``stride > width + 2 * radius`` so that a
    row segment ``[x - w, x + w]`` never reaches into the next row. Equal to counting the query pixels inside
    ``binary_dilation(others, disk(radius))``; the disk is taken row by row (half-width ``isqrt(r^2 - dy^2)`` at
    offset dy) and each segment is one binary search. The centre row goes first and only the queries it leaves
    unmatched try the other 2r rows.
    """
    queries, keys = queries[:-1], others[:-1]
    hit = others[np.searchsorted(keys, queries - radius)] <= queries + radius
    matched = int(np.count_nonzero(hit))
    rest = queries[~hit]
    if rest.size and radius > 0:
        offsets = np.arange(-radius, radius + 1)
        half = _disk_half_widths(radius)
        offsets, half = np.delete(offsets, radius), np.delete(half, radius)  # the centre row is done
        low = rest[None, :] + (offsets * stride - half)[:, None]
        found = others[np.searchsorted(keys, low)] <= low + 2 * half[:, None]
        matched += int(np.count_nonzero(found.any(axis=0)))
    return matched


def _scores_2d(pred: np.ndarray, gt: np.ndarray, radius: int) -> tuple[float, float]:
    """(J, F) of two boolean (H, W) masks; the boundary tolerance ``radius`` is in pixels.

    (H, W) may be a crop of the frame as long as every edge of the crop is either an image edge or has an empty
    row/column of both masks next to it: seg2bmap and the disk test then see exactly what they see on the frame.
    """
    union = pred | gt
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return 1.0, 1.0
    cols = np.flatnonzero(union.any(axis=0))
    height, width = pred.shape
    # One empty row/column around the masks (where the image has one) keeps seg2bmap on the crop equal to the full
    # frame's boundary map there; outside the crop both boundary maps are empty.
    top, bottom = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)
    left, right = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)
    pred, gt = pred[top:bottom, left:right], gt[top:bottom, left:right]

    j = np.count_nonzero(pred & gt) / np.count_nonzero(union[top:bottom, left:right])

    stride = (right - left) + 2 * radius + 1
    pred_keys = _boundary_keys(seg2bmap(pred), stride)
    gt_keys = _boundary_keys(seg2bmap(gt), stride)
    n_pred, n_gt = pred_keys.size - 1, gt_keys.size - 1
    if n_pred == 0 or n_gt == 0:
        return j, 1.0 if n_pred == n_gt else 0.0
    precision = _count_matched(pred_keys, gt_keys, stride, radius) / n_pred
    recall = _count_matched(gt_keys, pred_keys, stride, radius) / n_gt
    if precision + recall == 0:
        return j, 0.0
    return j, 2 * precision * recall / (precision + recall)


def f_measure(pred: np.ndarray, gt: np.ndarray, *, threshold: float = BOUNDARY_THRESHOLD) -> float | np.ndarray:
    """Boundary F-measure of boolean masks, as the official ``f_measure`` (no void pixels).

    ``pred`` and ``gt``: (..., H, W), non-zero = inside. The tolerance is ``boundary_radius(H, W, threshold=...)``.
    Precision = matched predicted boundary pixels / predicted boundary pixels, recall likewise for the ground truth,
    F = 2PR / (P + R) (0 when P + R = 0). Both boundaries empty gives 1, exactly one empty gives 0.
    Returns a float for (H, W) inputs, else a float64 array of the leading shape.
    """
    pred, gt = _masks(pred, gt, "f_measure")
    radius = boundary_radius(*pred.shape[-2:], threshold=threshold)
    lead = pred.shape[:-2]
    flat_pred = pred.reshape(-1, *pred.shape[-2:])
    flat_gt = gt.reshape(-1, *gt.shape[-2:])
    values = np.array([_scores_2d(p, g, radius)[1] for p, g in zip(flat_pred, flat_gt, strict=True)], dtype=np.float64)
    return float(values[0]) if not lead else values.reshape(lead)


def mean_recall_decay(values: np.ndarray) -> tuple[float, float, float]:
    """Per-object statistics of per-frame scores, as the official ``db_statistics``.

    ``values``: (N,) per-frame J or F of one object, N >= 1. Returns (mean, recall, decay): recall = fraction of
    frames with a value > 0.5; decay = mean of the first quarter - mean of the last quarter, with the official bins
    ``ids = round(linspace(1, N, 5) + 1e-10) - 1`` (halves round up), bin i = ``values[ids[i] : ids[i + 1] + 1]``.
    Unlike the official code (uint8 ``ids``), the bins stay correct for N >= 257.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_recall_decay: values must be a non-empty (N,) array, got shape {values.shape}")
    ids = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64)
    first, last = values[ids[0] : ids[1] + 1], values[ids[3] : ids[4] + 1]
    return float(np.mean(values)), float(np.mean(values > 0.5)), float(np.mean(first) - np.mean(last))
