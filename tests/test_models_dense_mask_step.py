"""Dense RepPoints mask step (spec reppoints.md §3.5): the batched interpolation of scored
points onto the M x M box cells (``points_to_box_score_maps``) against the per-detection
``griddata`` loop on the same grid, shapes rebuilt through ``paste_masks``, and degenerate input;
the full-resolution masks (``points_to_full_masks``) against the reference's per-detection
``points_to_mask``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import griddata
from scipy.spatial import QhullError

from models.dense_reppoints import mask_from_points as mfp
from models.dense_reppoints.distance_sampling import sample_boundary_points
from models.dense_reppoints.mask_from_points import (box_cell_anchors, box_score_maps_loop,
                                                  points_to_box_score_maps, points_to_full_masks,
                                                  points_to_mask)
from pipeline.evaluation import paste_masks


def _band_points(rng: np.random.Generator, num: int, n_pts: int = 729):
    """``num`` realistic point sets: a band around a random ellipse or square in an
    800 x 1333 image, scores ~1 inside / ~0 outside with noise, box = minmax of the points;
    some points moved exactly onto the box edges and corners; a few non-finite entries."""
    pts = np.zeros((num, n_pts, 2), np.float32)
    scores = np.zeros((num, n_pts), np.float32)
    for k in range(num):
        cx, cy = rng.uniform(150, 1180), rng.uniform(150, 650)
        a, b = rng.uniform(8, 140, size=2)
        t = rng.uniform(0, 2 * np.pi, n_pts)
        r = 1 + rng.uniform(-0.12, 0.12, n_pts)
        if k % 2:  # ellipse
            x, y = np.cos(t), np.sin(t)
        else:  # square (sup-norm circle)
            x, y = np.cos(t), np.sin(t)
            n = np.maximum(np.abs(x), np.abs(y))
            x, y = x / n, y / n
        pts[k, :, 0] = cx + a * r * x
        pts[k, :, 1] = cy + b * r * y
        scores[k] = np.clip((r < 1) + rng.normal(0, 0.1, n_pts), 0, 1)
        lo, hi = pts[k].min(0), pts[k].max(0)
        idx = rng.choice(n_pts, 12, replace=False)
        pts[k, idx[:3], 0] = lo[0]  # exactly on the left / right / top / bottom box edge
        pts[k, idx[3:6], 0] = hi[0]
        pts[k, idx[6:9], 1] = lo[1]
        pts[k, idx[9:11], 1] = hi[1]
        pts[k, idx[11]] = lo  # exactly on the top-left corner (coincides with an anchor)
    pts[1 % num, 5] = np.nan
    pts[2 % num, 7, 1] = np.inf
    scores[3 % num, 11] = np.nan
    pts_t = torch.from_numpy(pts)
    finite = torch.isfinite(pts_t).all(-1, keepdim=True)
    big = torch.where(finite, pts_t, torch.full_like(pts_t, 1e9))
    small = torch.where(finite, pts_t, torch.full_like(pts_t, -1e9))
    boxes = torch.cat([big.amin(1), small.amax(1)], 1)
    return pts_t, torch.from_numpy(scores), boxes


def _gt_scores(gt: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h, w = gt.shape
    ix = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
    return gt[iy, ix].astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("mask_size", [28, 56, 13])
def test_vectorised_maps_equal_the_griddata_loop(mask_size):
    pts, scores, boxes = _band_points(np.random.default_rng(mask_size), 20)
    fast = points_to_box_score_maps(pts, scores, boxes, mask_size)
    slow = box_score_maps_loop(pts, scores, boxes, mask_size)
    assert fast.shape == slow.shape == (20, mask_size, mask_size)
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert (fast - slow).abs().max().item() < 1e-4
    assert 0.05 < (fast > 0.5).float().mean().item() < 0.95  # a real shape, not all 0 or 1
    # a caller's box smaller than the point cloud: points outside the box, hull beyond it
    shrunk = boxes + torch.tensor([5.0, 3.0, -4.0, -6.0])
    fast = points_to_box_score_maps(pts, scores, shrunk, mask_size)
    slow = box_score_maps_loop(pts, scores, shrunk, mask_size)
    assert (fast - slow).abs().max().item() < 1e-4


def test_thread_count_does_not_change_the_result():
    pts, scores, boxes = _band_points(np.random.default_rng(5), 6)
    one = points_to_box_score_maps(pts, scores, boxes, num_threads=1)
    two = points_to_box_score_maps(pts, scores, boxes, num_threads=2)
    assert torch.equal(one, two)


def test_hand_computed_pyramid():
    # One point of score 1 at the centre of a 3 x 3 cell box: the interpolant is a pyramid
    # over the 4 box-corner anchors (frame coordinates -0.5 and 2.5), 1 at the centre cell and
    # 1/3 at the 8 border cells (a third of the way from the corner/edge to the centre).
    pts = torch.tensor([[[11.5, 21.5]]])
    out = points_to_box_score_maps(pts, torch.ones(1, 1), torch.tensor([[10.0, 20.0, 13.0, 23.0]]),
                                   mask_size=3)
    want = torch.full((3, 3), 1 / 3)
    want[1, 1] = 1
    torch.testing.assert_close(out[0], want, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(box_cell_anchors(3), [[-0.5, -0.5], [2.5, -0.5],
                                                        [-0.5, 2.5], [2.5, 2.5]])


@pytest.mark.parametrize("shape", ["square", "disc"])
def test_shape_rebuilt_from_dts_points_after_paste(shape):
    h, w = 200, 240
    yy, xx = np.mgrid[:h, :w]
    if shape == "square":
        gt = (xx >= 70) & (xx < 160) & (yy >= 50) & (yy < 140)
    else:
        cx, cy, r = 118.0, 96.0, 52.0
        gt = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    ys, xs = np.nonzero(gt)
    # points straddling the boundary, as predicted ones do: DTS on a box with a 10 px margin
    margin_box = (xs.min() - 10, ys.min() - 10, xs.max() + 11, ys.max() + 11)
    pts = sample_boundary_points(gt.astype(np.uint8), margin_box, rng=np.random.default_rng(0))
    scores = _gt_scores(gt, pts)  # 1 inside / 0 outside, as the point-score labels
    assert 0 < scores.mean() < 1
    box = torch.tensor([[*pts.min(0), *pts.max(0)]])  # inference box: minmax of the points
    for mask_size in (28, 56):
        maps = points_to_box_score_maps(torch.from_numpy(pts)[None],
                                        torch.from_numpy(scores)[None], box, mask_size)
        pasted = paste_masks(maps[:, None], box, (h, w))
        assert pasted.shape == (1, h, w)
        iou = _iou(pasted[0].astype(bool), gt)
        assert iou > 0.9, (shape, mask_size, iou)


def test_no_detections():
    pts, scores, boxes = torch.zeros(0, 729, 2), torch.zeros(0, 729), torch.zeros(0, 4)
    for fn in (points_to_box_score_maps, box_score_maps_loop):
        out = fn(pts, scores, boxes, 28)
        assert out.shape == (0, 28, 28) and out.dtype == torch.float32
    assert paste_masks(out[:, None], boxes, (50, 60)).shape == (0, 50, 60)


def test_degenerate_point_sets():
    n = 50
    t = torch.linspace(0, 1, n)
    line = torch.stack([10 + 80 * t, 20 + 40 * t], 1)  # collinear, diagonal
    vertical = torch.stack([torch.full((n,), 33.0), 20 + 40 * t], 1)  # zero-width box
    same = torch.full((n, 2), 47.0)  # one point repeated: zero-size box
    nan = torch.full((n, 2), float("nan"))  # no finite point
    pts = torch.stack([line, vertical, same, nan])
    scores = torch.stack([(t < 0.5).float(), torch.ones(n), torch.ones(n), torch.ones(n)])
    finite = torch.nan_to_num(pts, nan=0.0)
    boxes = torch.cat([finite.amin(1), finite.amax(1)], 1)
    fast = points_to_box_score_maps(pts, scores, boxes, 28)
    slow = box_score_maps_loop(pts, scores, boxes, 28)
    assert torch.isfinite(fast).all() and (fast >= 0).all() and (fast <= 1).all()
    assert (fast - slow).abs().max().item() < 1e-4
    assert fast[0].max() > 0.5  # the diagonal's score-1 half survives along the diagonal
    assert fast[3].abs().max() == 0  # nothing finite: only the score-0 anchors
    # no points at all
    out = points_to_box_score_maps(torch.zeros(2, 0, 2), torch.zeros(2, 0), boxes[:2], 28)
    assert out.shape == (2, 28, 28) and out.abs().max() == 0
    # the masks of zero-size boxes paste to (nearly) nothing and do not crash
    pasted = paste_masks(fast[:, None], boxes, (100, 120))
    assert pasted.shape == (4, 100, 120)


def test_qhull_failure_falls_back_to_nearest_vertex(monkeypatch):
    pts, scores, boxes = _band_points(np.random.default_rng(3), 3, n_pts=60)
    real = mfp.Delaunay
    calls = []

    def flaky(points, *args, **kwargs):
        calls.append(len(points))
        if len(calls) == 2:  # detection 1 (num_threads=1: called in order)
            raise QhullError("forced")
        return real(points, *args, **kwargs)

    monkeypatch.setattr(mfp, "Delaunay", flaky)
    out = points_to_box_score_maps(pts, scores, boxes, 16, num_threads=1)
    monkeypatch.undo()
    ref = points_to_box_score_maps(pts, scores, boxes, 16)
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]])
    # detection 1: nearest-vertex interpolation of its points + anchors on the cell centres
    x1, y1, x2, y2 = boxes[1].double().numpy()
    p = pts[1].double().numpy()
    keep = np.isfinite(p).all(1)
    local = (p[keep] - [x1, y1]) / [x2 - x1, y2 - y1] * 16 - 0.5
    verts = np.concatenate([local, box_cell_anchors(16)])
    vals = np.concatenate([scores[1].double().numpy()[keep], np.zeros(4)])
    gx, gy = np.meshgrid(np.arange(16.0), np.arange(16.0))
    near = griddata(verts, vals, (gx, gy), method="nearest")
    np.testing.assert_allclose(out[1].numpy(), near, atol=1e-6)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        points_to_box_score_maps(torch.zeros(2, 5, 2), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        points_to_box_score_maps(torch.zeros(2, 5, 2), torch.zeros(2, 5), torch.zeros(3, 4))


def _full_masks_loop(pts: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor, size) -> np.ndarray:
    out = [points_to_mask(p.numpy(), s.numpy(), b.tolist(), size) for p, s, b in zip(pts, scores, boxes)]
    return np.stack(out) if out else np.zeros((0, *size), bool)


def test_full_resolution_masks_equal_the_reference_loop(monkeypatch):
    pts, scores, boxes = _band_points(np.random.default_rng(21), 12, n_pts=300)
    size = (800, 1333)
    fast = points_to_full_masks(pts, scores, boxes, size)
    slow = _full_masks_loop(pts, scores, boxes, size)
    assert fast.shape == slow.shape == (12, *size) and fast.dtype == bool
    # the same triangulation and interpolant; a node may only differ where the value is within
    # rounding of the threshold (none here)
    assert (fast != slow).sum() == 0 and 0.05 < fast.sum() / (boxes[:, 2:] - boxes[:, :2]).prod(1).sum() < 0.95
    # in chunks of a few detections (and one detection larger than a chunk): the same masks
    monkeypatch.setattr(mfp, "MAX_FULL_NODES", 20000)
    assert (points_to_full_masks(pts, scores, boxes, size) == fast).all()
    # boxes partly outside the image are clipped, as the reference's integer box
    shifted = boxes + torch.tensor([700.0, 400.0, 700.0, 400.0])
    fast = points_to_full_masks(pts + torch.tensor([700.0, 400.0]), scores, shifted, size)
    slow = _full_masks_loop(pts + torch.tensor([700.0, 400.0]), scores, shifted, size)
    assert (fast != slow).sum() == 0


def test_full_resolution_degenerate_input():
    n = 40
    t = torch.linspace(0, 1, n)
    vertical = torch.stack([torch.full((n,), 33.0), 20 + 40 * t], 1)  # a zero-width box
    nan = torch.full((n, 2), float("nan"))
    pts = torch.stack([vertical, nan])
    boxes = torch.tensor([[33.0, 20.0, 33.0, 60.0], [10.0, 10.0, 20.0, 20.0]])
    fast = points_to_full_masks(pts, torch.ones(2, n), boxes, (100, 120))
    assert fast.shape == (2, 100, 120)
    assert (fast == _full_masks_loop(pts, torch.ones(2, n), boxes, (100, 120))).all()
    assert not fast[1].any()  # nothing finite: only the score-0 anchors
    assert points_to_full_masks(torch.zeros(0, 5, 2), torch.zeros(0, 5), torch.zeros(0, 4), (9, 7)).shape == (0, 9, 7)
    with pytest.raises(ValueError):
        points_to_full_masks(torch.zeros(2, 5, 2), torch.zeros(2, 4), torch.zeros(2, 4), (9, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    pts, scores, boxes = _band_points(np.random.default_rng(11), 8)
    cpu = points_to_box_score_maps(pts, scores, boxes, 28)
    gpu = points_to_box_score_maps(pts.cuda(), scores.cuda(), boxes.cuda(), 28)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-5
