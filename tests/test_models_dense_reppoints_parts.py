"""Dense RepPoints standalone parts (spec reppoints.md §3.3-§3.5): the 2-D Chamfer loss,
distance-transform sampling (DTS) of GT point sets, and the mask-from-points inference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.dense_reppoints import chamfer_loss as chamfer_mod
from models.dense_reppoints.chamfer_loss import ChamferLoss2D, chamfer_loss_2d
from models.dense_reppoints.distance_sampling import sample_boundary_points
from models.dense_reppoints.mask_from_points import (box_score_map, corner_anchors, integer_box,
                                                  points_to_mask)


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def _brute_chamfer(pred, target, eps=1e-12):
    d2 = ((pred[:, :, None, :] - target[:, None, :, :]) ** 2).sum(-1)
    d = d2.clamp(min=eps).sqrt()
    return (d.min(2).values.mean(1) + d.min(1).values.mean(1)) / 2


# ---------------------------------------------------------------- chamfer loss


def test_chamfer_by_hand_two_and_three_points():
    # instance 0: pred {(0,0), (2,0)}, target {(0,1), (0,1)} (duplicate target point)
    #   pred->target: 1, sqrt(5); target->pred: 1, 1  -> ((1 + sqrt5)/2 + 1) / 2
    # instance 1: pred {(0,0), (3,0), (0,4)}, target {(0,0), (3,4)}
    #   pred->target: 0, 3, 3 (mean 2); target->pred: 0, 3 (mean 1.5) -> 1.75
    pred0, tgt0 = _t([0, 0], [2, 0]), _t([0, 1], [0, 1])
    pred1, tgt1 = _t([0, 0], [3, 0], [0, 4]), _t([0, 0], [3, 4])
    l0 = chamfer_loss_2d(pred0[None], tgt0[None])
    l1 = chamfer_loss_2d(pred1[None], tgt1[None])
    assert l0.shape == (1,) and l0.dtype == torch.float32
    assert l0.item() == pytest.approx(((1 + math.sqrt(5)) / 2 + 1) / 2, abs=1e-6)
    assert l1.item() == pytest.approx(1.75, abs=1e-5)  # sqrt(eps) at the coincident pairs
    # batched (same N and M per batch): pad instance 0 to 3 pred / 2 target points by repeats
    pred = torch.stack([_t([0, 0], [2, 0], [2, 0]), pred1])
    tgt = torch.stack([tgt0, tgt1])
    out = chamfer_loss_2d(pred, tgt)
    assert out.shape == (2,)
    # repeating (2,0) changes d1 to (1 + 2 sqrt5)/3
    assert out[0].item() == pytest.approx(((1 + 2 * math.sqrt(5)) / 3 + 1) / 2, abs=1e-6)
    assert out[1].item() == pytest.approx(1.75, abs=1e-5)


def test_chamfer_zero_for_identical_sets_and_permutations():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 50, 2, generator=g) * 100
    perm = pts[:, torch.randperm(50, generator=g)]
    for other in (pts.clone(), perm):
        loss = chamfer_loss_2d(pts, other)
        assert torch.all(loss < 1e-5)  # exactly sqrt(eps) = 1e-6 per point


def test_chamfer_is_symmetric_and_matches_brute_force_with_gradients():
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(4, 30, 2, generator=g) * 10).requires_grad_()
    b = (torch.rand(4, 17, 2, generator=g) * 10).requires_grad_()
    ab = chamfer_loss_2d(a, b)
    ba = chamfer_loss_2d(b, a)
    torch.testing.assert_close(ab, ba)
    ref = _brute_chamfer(a, b)
    torch.testing.assert_close(ab, ref)
    ga, gb = torch.autograd.grad(ab.sum(), (a, b))
    ra, rb = torch.autograd.grad(ref.sum(), (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_chamfer_gradient_finite_at_coincident_points():
    tgt = _t([0, 0], [1, 1], [5, 2])[None]
    pred = tgt.clone().requires_grad_()
    loss = chamfer_loss_2d(pred, tgt)
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.all(pred.grad == 0)
    # one coincident point among moved ones: still finite, nonzero where points moved
    pred2 = _t([0, 0], [1.5, 1], [5, 3])[None].requires_grad_()
    chamfer_loss_2d(pred2, tgt).sum().backward()
    assert torch.isfinite(pred2.grad).all()
    assert pred2.grad[0, 0].abs().sum() == 0 and pred2.grad[0, 1:].abs().sum() > 0


def test_chamfer_valid_mask_and_module_reduction():
    g = torch.Generator().manual_seed(2)
    pred = (torch.rand(3, 9, 2, generator=g) * 4).requires_grad_()
    tgt = torch.rand(3, 11, 2, generator=g) * 4
    tgt[1] = 0.0  # DTS found no contour: the instance has all-zero target points
    valid = torch.tensor([True, False, True])
    out = chamfer_loss_2d(pred, tgt, valid=valid)
    full = chamfer_loss_2d(pred, tgt)
    assert out[1].item() == 0.0
    torch.testing.assert_close(out[[0, 2]], full[[0, 2]])
    out.sum().backward()
    assert torch.all(pred.grad[1] == 0) and pred.grad[0].abs().sum() > 0
    none_valid = chamfer_loss_2d(pred, tgt, valid=torch.zeros(3, dtype=torch.bool))
    assert torch.all(none_valid == 0) and none_valid.requires_grad
    empty = chamfer_loss_2d(pred[:0], tgt[:0])
    assert empty.shape == (0,) and empty.requires_grad
    mod = ChamferLoss2D(loss_weight=0.5)
    torch.testing.assert_close(mod(pred, tgt, valid=valid, avg_factor=4.0),
                               0.5 * full[[0, 2]].sum() / 4.0)
    torch.testing.assert_close(mod(pred, tgt, valid=valid), 0.5 * full[[0, 2]].sum() / 2)


def test_chamfer_729_points_chunked_equals_unchunked(monkeypatch):
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(6, 729, 2, generator=g) * 20
    tgt = torch.rand(6, 729, 2, generator=g) * 20
    ref = _brute_chamfer(pred, tgt)
    monkeypatch.setattr(chamfer_mod, "_CHUNK_ELEMS", 729 * 729 * 2)  # 2 instances per chunk
    torch.testing.assert_close(chamfer_loss_2d(pred, tgt), ref)
    monkeypatch.setattr(chamfer_mod, "_CHUNK_ELEMS", 1)  # 1 instance per chunk
    torch.testing.assert_close(chamfer_loss_2d(pred, tgt), ref)


# ---------------------------------------------------------------- DTS


def _circle(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) <= r * r


def _rect(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def _dist_to_rect_boundary(pts, x1, y1, x2, y2):
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    d_in = np.minimum.reduce([x - x1, x2 - x, y - y1, y2 - y])
    dx = np.maximum.reduce([x1 - x, np.zeros_like(x), x - x2])
    dy = np.maximum.reduce([y1 - y, np.zeros_like(y), y - y2])
    return np.where(inside, d_in, np.hypot(dx, dy))


# Band bound in 56-grid cells: dist_sample_thr (2) + half the drawn line (1) from the contour
# pixel centres, plus < 2 cells for the half-cell from a contour pixel centre to the true
# edge, the U[0,1) jitter inside the cell and the resampling of the edge onto the grid.
_BAND_CELLS = 2 + 1 + 2


@pytest.mark.parametrize("kind", ["circle", "rect"])
def test_dts_points_lie_in_a_band_around_the_boundary_and_inside_the_box(kind):
    h, w = 180, 260
    if kind == "circle":
        cx, cy, r = 120.3, 90.7, 61.4
        mask = _circle(h, w, cx, cy, r)
        box = (cx - r, cy - r, cx + r, cy + r)
    else:
        x1, y1, x2, y2 = 30, 50, 230, 110  # non-square
        mask = _rect(h, w, x1, y1, x2, y2)
        box = (x1, y1, x2, y2)
    pts = sample_boundary_points(mask, box, rng=np.random.default_rng(0))
    assert pts.shape == (729, 2) and pts.dtype == np.float32
    assert np.all(pts[:, 0] >= box[0]) and np.all(pts[:, 0] <= box[2])
    assert np.all(pts[:, 1] >= box[1]) and np.all(pts[:, 1] <= box[3])
    cell = np.array([(box[2] - box[0]) / 56, (box[3] - box[1]) / 56])
    if kind == "circle":
        dist = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        tol = _BAND_CELLS * cell.max()
        ang = np.arctan2(pts[:, 1] - cy, pts[:, 0] - cx)
        hist, _ = np.histogram(ang, bins=36, range=(-np.pi, np.pi))
        assert hist.min() > 0  # the whole boundary is covered
    else:
        dist = _dist_to_rect_boundary(pts, *box)
        tol = _BAND_CELLS * cell.max()
        # all four sides are covered
        assert (pts[:, 0] < box[0] + 3 * cell[0]).any() and (pts[:, 0] > box[2] - 3 * cell[0]).any()
        assert (pts[:, 1] < box[1] + 3 * cell[1]).any() and (pts[:, 1] > box[3] - 3 * cell[1]).any()
    assert dist.max() <= tol, (dist.max(), tol)
    assert dist.mean() <= 0.5 * tol


def test_dts_ring_samples_both_boundaries():
    h = w = 160
    cx = cy = 80.0
    mask = _circle(h, w, cx, cy, 60) & ~_circle(h, w, cx, cy, 30)  # RETR_TREE keeps the hole
    pts = sample_boundary_points(mask, (20, 20, 140, 140), rng=np.random.default_rng(5))
    rad = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    tol = _BAND_CELLS * 120 / 56
    near_outer = np.abs(rad - 60) <= tol
    near_inner = np.abs(rad - 30) <= tol
    assert np.all(near_outer | near_inner)
    assert near_inner.sum() > 100 and near_outer.sum() > 100


def test_dts_is_deterministic_for_a_seed_and_handles_empty_masks():
    mask = _circle(100, 100, 50, 50, 30)
    box = (20, 20, 80, 80)
    a = sample_boundary_points(mask, box, rng=np.random.default_rng(7))
    b = sample_boundary_points(mask, box, rng=np.random.default_rng(7))
    c = sample_boundary_points(mask, box, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sample_boundary_points(np.zeros((100, 100), bool), box,
                                  rng=np.random.default_rng(0)) is None
    # uint8 input works the same as bool
    np.testing.assert_array_equal(
        sample_boundary_points(mask.astype(np.uint8), box, rng=np.random.default_rng(7)), a)
    # fewer band pixels than points and more band pixels than points both give num_points
    small = sample_boundary_points(mask, box, num_points=50, rng=np.random.default_rng(0))
    assert small.shape == (50, 2)


# ---------------------------------------------------------------- mask from points


def test_corner_anchors_are_the_box_corners_in_xy():
    np.testing.assert_array_equal(corner_anchors(5, 3), [[0, 0], [4, 0], [0, 2], [4, 2]])
    assert integer_box((10.2, 5.7, 20.1, 9.0), (30, 40)) == (10, 5, 11, 4)
    assert integer_box((-5, -5, 50, 50), (30, 40)) == (0, 0, 40, 30)  # clipped to the image


def test_mask_from_dts_points_recovers_a_circle():
    h, w = 200, 240
    cx, cy, r = 118.0, 96.0, 52.0
    gt = _circle(h, w, cx, cy, r)
    pts = sample_boundary_points(gt, (cx - r, cy - r, cx + r, cy + r),
                                 rng=np.random.default_rng(0))
    # point scores = GT mask at the point's pixel (1 inside / 0 outside), as the score labels
    ix = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
    scores = gt[iy, ix].astype(np.float32)
    assert 0 < scores.mean() < 1
    box = (*pts.min(0), *pts.max(0))  # inference box: minmax of the points
    pred = points_to_mask(pts, scores, box, (h, w))
    assert pred.shape == (h, w) and pred.dtype == bool
    iou = (pred & gt).sum() / (pred | gt).sum()
    assert iou > 0.8, iou
    # strict threshold: scores exactly at pts_score_thr give nothing
    assert not points_to_mask(pts, np.full(len(pts), 0.5), box, (h, w)).any()


def test_corrected_corner_anchors_matter_for_a_non_square_box():
    # A box-filling object in a wide box (w=100, h=20): every DTS point is inside (score 1).
    h_img, w_img = 60, 120
    gt = _rect(h_img, w_img, 10, 20, 110, 40)
    pts = sample_boundary_points(gt, (10, 20, 110, 40), rng=np.random.default_rng(0))
    scores = np.ones(len(pts))
    box = (*pts.min(0), *pts.max(0))
    x1, y1, w, h = integer_box(box, (h_img, w_img))
    assert (w, h) == (100, 20)
    local = pts.astype(np.float64) - [x1, y1] - 0.5
    good = box_score_map(local, scores, w, h)
    # the RPv2 reference's anchors, with x and y mixed up (spec §3.5 [FLAG])
    swapped = np.array([[0, 0], [h - 1, 0], [0, w - 1], [w - 1, h - 1]], np.float64)
    bad = box_score_map(local, scores, w, h, anchors=swapped)
    corners = (np.array([0, 0, h - 1, h - 1]), np.array([0, w - 1, 0, w - 1]))
    # corrected: the score map is 0 (up to rounding) at all four box corners
    np.testing.assert_allclose(good[corners], 0.0, atol=1e-9)
    # swapped: top-right and bottom-left corners get no anchor and stay foreground, and the
    # misplaced anchor (h-1, 0) punches a hole into the top edge
    assert (bad[corners] > 0.5).tolist() == [False, True, True, False]
    assert good[0, h - 1] > 0.5 and abs(bad[0, h - 1]) < 1e-9
    full = points_to_mask(pts, scores, box, (h_img, w_img))
    assert not full[y1, x1] and not full[y1 + h - 1, x1] and full[y1, x1 + h - 1]
    assert (full & gt).sum() / (full | gt).sum() > 0.95
