"""J and F against hand-computed cases and a naive pixel-loop reference (boundaries, disk dilation, F)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voszoo.evaluation.metrics import boundary_radius, f_measure, jaccard, mean_recall_decay, seg2bmap

# ---------------------------------------------------------------------------------------------------------------------
# Naive reference, written for clarity: pixel loops straight from the definitions in docs/evaluation.md.


def naive_seg2bmap(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    out = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            neighbours = []
            if x + 1 < width:
                neighbours.append(mask[y, x + 1])
            if y + 1 < height:
                neighbours.append(mask[y + 1, x])
            if x + 1 < width and y + 1 < height:
                neighbours.append(mask[y + 1, x + 1])
            out[y, x] = any(bool(n) != bool(mask[y, x]) for n in neighbours)
    return out


def naive_dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    height, width = boundary.shape
    out = np.zeros_like(boundary)
    for y in range(height):
        for x in range(width):
            if boundary[y, x]:
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        if dx * dx + dy * dy <= radius * radius and 0 <= y + dy < height and 0 <= x + dx < width:
                            out[y + dy, x + dx] = True
    return out


def naive_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    bp, bg = naive_seg2bmap(pred), naive_seg2bmap(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = int((bp & naive_dilate(bg, radius)).sum()) / n_p
    recall = int((bg & naive_dilate(bp, radius)).sum()) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Noise of random density, or a few random rectangles, or empty/full: every kind of boundary."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.random(shape) < rng.random()
    if kind == 1:
        mask = np.zeros(shape, dtype=bool)
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            mask[y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = True
        return mask
    if kind == 2:
        return np.zeros(shape, dtype=bool)
    mask = np.ones(shape, dtype=bool)
    mask[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = rng.random() < 0.5
    return mask


SIZES = [(1, 1), (1, 9), (9, 1), (2, 2), (5, 7), (17, 31), (30, 24)]


@pytest.mark.parametrize("shape", SIZES)
def test_seg2bmap_matches_naive_loops(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        mask = random_mask(rng, shape)
        assert np.array_equal(seg2bmap(mask), naive_seg2bmap(mask))


@pytest.mark.parametrize("shape", SIZES)
def test_f_measure_matches_naive_dilation(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(100 + sum(shape))
    diagonal = math.hypot(*shape)
    for _ in range(15):
        pred, gt = random_mask(rng, shape), random_mask(rng, shape)
        if rng.random() < 0.5:  # a prediction close to the ground truth: many boundary pixels at distance ~ r
            gt = np.roll(pred, rng.integers(-3, 4, size=2), axis=(0, 1)) ^ (rng.random(shape) < 0.05)
        threshold = float(rng.choice([0.008, 0.05, 0.12, 0.2]))
        radius = math.ceil(threshold * diagonal)
        assert f_measure(pred, gt, threshold=threshold) == naive_f(pred, gt, radius)


def test_vectorised_over_a_stack_equals_frame_by_frame() -> None:
    rng = np.random.default_rng(7)
    pred = np.stack([random_mask(rng, (17, 31)) for _ in range(6)]).reshape(2, 3, 17, 31)
    gt = np.stack([random_mask(rng, (17, 31)) for _ in range(6)]).reshape(2, 3, 17, 31)
    f, j = f_measure(pred, gt), jaccard(pred, gt)
    assert f.shape == j.shape == (2, 3)
    for index in np.ndindex(2, 3):
        assert f[index] == naive_f(pred[index], gt[index], 1)
        p, g = pred[index], gt[index]
        union = (p | g).sum()
        assert j[index] == (1.0 if union == 0 else (p & g).sum() / union)
    assert np.array_equal(
        seg2bmap(pred), np.stack([naive_seg2bmap(m) for m in pred.reshape(-1, 17, 31)]).reshape(pred.shape)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_boundary_radius_by_hand() -> None:
    assert boundary_radius(480, 854) == 8  # 0.008 * sqrt(480^2 + 854^2) = 0.008 * 979.65 = 7.84
    assert boundary_radius(17, 31) == 1  # 0.008 * 35.36 = 0.28
    assert boundary_radius(1080, 1920) == 18  # 0.008 * 2202.9 = 17.6
    with pytest.raises(ValueError, match="threshold"):
        boundary_radius(10, 10, threshold=2.0)


def test_full_image_mask_has_no_boundary() -> None:
    full = np.ones((17, 31), dtype=bool)
    assert not seg2bmap(full).any()
    assert f_measure(full, full) == 1.0
    assert jaccard(full, full) == 1.0
    # A full ground truth and an empty prediction: J = 0, but neither has a boundary, so F = 1 (official behaviour).
    empty = np.zeros_like(full)
    assert jaccard(empty, full) == 0.0
    assert f_measure(empty, full) == 1.0


def test_both_empty_and_one_empty() -> None:
    empty = np.zeros((17, 31), dtype=bool)
    blob = empty.copy()
    blob[5:9, 10:20] = True
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert jaccard(empty, blob) == 0.0 and f_measure(empty, blob) == 0.0
    assert jaccard(blob, empty) == 0.0 and f_measure(blob, empty) == 0.0


def test_boundary_of_small_shapes_by_hand() -> None:
    # A single pixel at (3, 4) of a 7x9 image: it differs from its right and bottom neighbours, and the pixels up,
    # left and up-left of it differ from it (as bottom, right and bottom-right neighbour): a 2x2 block.
    mask = np.zeros((7, 9), dtype=bool)
    mask[3, 4] = True
    expected = np.zeros_like(mask)
    expected[2:4, 3:5] = True
    assert np.array_equal(seg2bmap(mask), expected)
    # A 2x3 rectangle at rows 2-3, cols 3-5: the row above it (cols 2-5, via the bottom or bottom-right neighbour),
    # the column left of it, its own bottom row and right column; (2, 3) and (2, 4) see only inside pixels.
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:4, 3:6] = True
    expected = np.zeros_like(mask)
    expected[1, 2:6] = True  # above: down or down-right neighbour inside
    expected[2:4, 2] = True  # left: right neighbour inside
    expected[3, 3:6] = True  # own bottom row: bottom neighbour outside
    expected[2:4, 5] = True  # own right column: right neighbour outside
    assert np.array_equal(seg2bmap(mask), expected)
    assert seg2bmap(mask).sum() == 4 + 2 + 3 + 1


def test_thin_lines_at_17x31() -> None:
    line = np.zeros((17, 31), dtype=bool)
    line[8, :] = True  # full-width horizontal line: rows 7 and 8 are boundary over the whole width (62 pixels)
    expected = np.zeros_like(line)
    expected[7:9, :] = True
    assert np.array_equal(seg2bmap(line), expected)
    bottom = np.zeros((17, 31), dtype=bool)
    bottom[16, :] = True  # on the last row: only row 15 (the last row compares to the right only)
    expected = np.zeros_like(bottom)
    expected[15, :] = True
    assert np.array_equal(seg2bmap(bottom), expected)
    # Lines at rows 8 and 10, r = 1: boundaries are rows {7, 8} and {9, 10}; only rows 8 and 9 are 1 apart, so half
    # of each boundary is matched: P = R = 31/62, F = 0.5, and the lines do not overlap: J = 0.
    other = np.zeros_like(line)
    other[10, :] = True
    assert jaccard(other, line) == 0.0
    assert f_measure(other, line) == 0.5


def test_one_pixel_shift_of_a_thin_line_gives_j0_f1() -> None:
    # A vertical 1-px line at column 10, rows 3..12, and the same line at column 11, in a 17x31 image (r = 1).
    # They do not overlap: J = 0. The boundary of a line at column c is columns c-1 and c, rows 2..12 (the left
    # neighbour column sees it to its right, the line itself sees background to its right, row 2 sees it below);
    # so the boundaries are columns {9, 10} and {10, 11}: every boundary pixel is 0 or 1 pixel away from the other's.
    gt = np.zeros((17, 31), dtype=bool)
    gt[3:13, 10] = True
    pred = np.roll(gt, 1, axis=1)
    expected = np.zeros_like(gt)
    expected[2:13, 9:11] = True
    assert np.array_equal(seg2bmap(gt), expected)
    assert jaccard(pred, gt) == 0.0
    assert f_measure(pred, gt) == 1.0


def test_diagonal_neighbours_are_outside_radius_one() -> None:
    # Single pixels at (8, 15) and (9, 16), r = 1: boundaries {7,8}x{14,15} and {8,9}x{15,16}. Matched predicted
    # pixels: (8,15) at 0, (8,16) and (9,15) at 1; (9,16) is sqrt(2) from (8,15): 3/4. Same for recall: F = 0.75.
    gt, pred = np.zeros((17, 31), dtype=bool), np.zeros((17, 31), dtype=bool)
    gt[8, 15] = True
    pred[9, 16] = True
    assert f_measure(pred, gt) == 0.75


@pytest.mark.parametrize(("pred_pixel", "expected"), [((109, 101), 0.25), ((108, 105), 0.0), ((100, 108), 1.0)])
def test_disk_is_exact_at_radius_eight(pred_pixel: tuple[int, int], expected: float) -> None:
    # 480x854, r = 8. Ground-truth pixel (100, 100): boundary {99,100}x{99,100}. Prediction (109, 101): boundary
    # {108,109}x{100,101}; the only pair within the disk is (108,100)-(100,100) at dy^2+dx^2 = 64 = r^2, so one of
    # four pixels each way: P = R = 1/4, F = 1/4. Prediction (108, 105): the closest pair (107,104)-(100,100) is at
    # 49 + 16 = 65 > 64: F = 0. Prediction (100, 108): every boundary pixel is within 8 columns of the other's: F = 1.
    gt, pred = np.zeros((480, 854), dtype=bool), np.zeros((480, 854), dtype=bool)
    gt[100, 100] = True
    pred[pred_pixel] = True
    assert jaccard(pred, gt) == 0.0
    assert f_measure(pred, gt) == expected


def test_jaccard_by_hand() -> None:
    gt, pred = np.zeros((10, 10), dtype=bool), np.zeros((10, 10), dtype=bool)
    gt[0:4, 0:5] = True  # 20 pixels
    pred[2:6, 0:5] = True  # 20 pixels, 10 shared
    assert jaccard(pred, gt) == 10 / 30
    assert jaccard(pred.astype(np.uint8) * 7, gt.astype(np.float32)) == 10 / 30  # any non-zero is inside
    with pytest.raises(ValueError, match="same shape"):
        jaccard(pred, gt[:5])


# ---------------------------------------------------------------------------------------------------------------------
# Per-object statistics.


def test_mean_recall_decay_three_frames_rounds_halves_up() -> None:
    # ids = round(linspace(1, 3, 5)) - 1 with halves up: [1, 1.5, 2, 2.5, 3] -> [1, 2, 2, 3, 3] -> [0, 1, 1, 2, 2];
    # first bin v[0:2], last bin v[2:3]. (Round-half-to-even would give a last bin v[1:3].)
    mean, recall, decay = mean_recall_decay(np.array([0.2, 0.6, 1.0]))
    assert mean == pytest.approx(0.6, abs=1e-15)
    assert recall == pytest.approx(2 / 3, abs=1e-15)
    assert decay == pytest.approx(0.4 - 1.0, abs=1e-15)


def test_mean_recall_decay_single_frame_and_threshold() -> None:
    assert mean_recall_decay(np.array([0.7])) == (0.7, 1.0, 0.0)
    assert mean_recall_decay(np.array([0.5, 0.5]))[1] == 0.0  # recall counts values strictly above 0.5


@pytest.mark.parametrize(("count", "first_mean", "last_mean"), [(300, 37.5, 261.5), (257, 32.0, 224.0)])
def test_decay_beyond_255_frames(count: int, first_mean: float, last_mean: float) -> None:
    # v[i] = i. N = 300: linspace(1, 300, 5) = [1, 75.75, 150.5, 225.25, 300] -> ids [0, 75, 150, 224, 299]:
    # first bin v[0:76] (mean 37.5), last bin v[224:300] (mean 261.5). N = 257: ids [0, 64, 128, 192, 256]:
    # v[0:65] (mean 32) and v[192:257] (mean 224). The official code stores ids as uint8, so 299 and 256 wrap and
    # its last bin is empty (NaN decay).
    values = np.arange(count, dtype=np.float64)
    mean, recall, decay = mean_recall_decay(values)
    assert mean == (count - 1) / 2
    assert recall == (count - 1) / count
    assert decay == first_mean - last_mean


def test_mean_recall_decay_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        mean_recall_decay(np.array([]))
