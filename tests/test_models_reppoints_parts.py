"""RepPoints shared parts on hand-made cases: prior points, PointAssigner, ATSSAssigner,
sigmoid focal loss and GIoU loss (spec reppoints.md §1.3, §1.4)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import torchvision

from models.reppoints.focal_loss import FocalLoss, labels_to_binary_targets, sigmoid_focal_loss
from models.reppoints.giou_loss import GIoULoss, generalized_iou, giou_loss
from models.common.task_modules.assigners import AssignResult
from models.reppoints.atss_assigner import ATSSAssigner, pairwise_iou
from models.reppoints.point_assigner import PointAssigner
from models.reppoints.point_generator import PointGenerator


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- point generator


def test_grid_points_have_no_half_stride_offset_and_carry_the_stride():
    gen = PointGenerator(strides=[8, 16])
    pts = gen.grid_points([(2, 3), (1, 2)])
    assert [tuple(p.shape) for p in pts] == [(6, 3), (2, 3)]
    expected0 = torch.tensor([[0, 0, 8], [8, 0, 8], [16, 0, 8], [0, 8, 8], [8, 8, 8], [16, 8, 8]],
                             dtype=torch.float32)
    torch.testing.assert_close(pts[0], expected0)  # row-major: index i * W + j -> (j * s, i * s, s)
    torch.testing.assert_close(pts[1], torch.tensor([[0.0, 0.0, 16.0], [16.0, 0.0, 16.0]]))
    with pytest.raises(ValueError):
        gen.grid_points([(2, 3)])


def test_point_valid_flags_for_a_padded_image():
    gen = PointGenerator(strides=[8, 32])
    flags = gen.valid_flags([(4, 4), (1, 1)], image_size=(9, 17))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :3] = True  # ceil(9 / 8) = 2 rows, ceil(17 / 8) = 3 columns
    assert torch.equal(flags[0].reshape(4, 4), expected)
    assert flags[1].tolist() == [True]


# ---------------------------------------------------------------- point assigner


def _p3_p5_points():
    """Points of a 64 x 64 input on strides 8, 16, 32: 64 + 16 + 4 = 84 points."""
    return torch.cat(PointGenerator([8, 16, 32]).grid_points([(8, 8), (4, 4), (2, 2)]))


def test_point_assigner_gt_levels_by_hand():
    assigner = PointAssigner(scale=4, pos_num=1)
    sides = [2.0, 16.0, 32.0, 63.0, 64.0, 128.0, 256.0, 512.0, 1000.0]
    gts = torch.tensor([[0.0, 0.0, s, s] for s in sides] + [[0.0, 0.0, 32.0, 128.0]])
    # sqrt(wh) / 4: 0.5 -> -1 -> 3, 4 -> 2 -> 3, 8 -> 3, 15.75 -> 3, 16 -> 4, ..., 250 -> 7 (clamped); 32 x 128 -> (3 + 5) / 2 = 4.
    assert assigner.gt_levels(gts, 3, 7).tolist() == [3, 3, 3, 3, 4, 5, 6, 7, 7, 4]
    assert assigner.gt_levels(gts, 3, 5).tolist() == [3, 3, 3, 3, 4, 5, 5, 5, 5, 4]


def test_point_assigner_picks_the_level_and_the_closest_point():
    points = _p3_p5_points()
    gts = _boxes(
        [10, 10, 42, 42],  # 32 px -> P3, centre (26, 26) -> point (24, 24): P3 index 3 * 8 + 3 = 27
        [0, 0, 64, 64],  # 64 px -> P4, centre (32, 32) -> point (32, 32): 64 + 2 * 4 + 2 = 74
        [50, 2, 52, 4],  # 2 px -> clamped to P3, centre (51, 3) -> point (48, 0): index 6
        [0, 0, 600, 600],  # -> P7, clamped to P5, centre (300, 300) -> point (32, 32): 80 + 1 * 2 + 1 = 83
    )
    res = PointAssigner(scale=4, pos_num=1).assign(points, gts, torch.tensor([5, 6, 7, 8]))
    assert isinstance(res, AssignResult) and res.num_gts == 4
    expected = torch.zeros(84, dtype=torch.long)
    expected[[27, 74, 6, 83]] = torch.tensor([1, 2, 3, 4])
    assert torch.equal(res.gt_inds, expected)
    labels = torch.full((84,), -1, dtype=torch.long)
    labels[[27, 74, 6, 83]] = torch.tensor([5, 6, 7, 8])
    assert torch.equal(res.labels, labels)
    assert res.max_overlaps.shape == (84,)


def test_point_assigner_pos_num_three():
    points = _p3_p5_points()
    # centre (26, 26), 32 x 32: distances (24,24) 0.088, (32,24) and (24,32) 0.198, next (32,32) 0.265.
    res = PointAssigner(scale=4, pos_num=3).assign(points, _boxes([10, 10, 42, 42]))
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [27, 28, 35]
    assert res.labels is None


def test_point_assigner_shared_point_goes_to_the_nearer_gt():
    points = _p3_p5_points()
    # Both 32 px (P3); both nearest to point (16, 16) = index 18: gt 0 at distance 0, gt 1 at sqrt(5) / 32.
    gts = _boxes([0, 0, 32, 32], [2, 1, 34, 33])
    res = PointAssigner(pos_num=1).assign(points, gts)
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [18] and res.gt_inds[18] == 1
    swapped = PointAssigner(pos_num=1).assign(points, gts.flip(0))
    assert swapped.gt_inds[18] == 2 and int((swapped.gt_inds > 0).sum()) == 1
    # Exact tie (identical gts): the lower gt index wins.
    tie = PointAssigner(pos_num=1).assign(points, _boxes([0, 0, 32, 32], [0, 0, 32, 32]))
    assert tie.gt_inds[18] == 1 and int((tie.gt_inds > 0).sum()) == 1


def test_point_assigner_without_gt_or_points():
    points = _p3_p5_points()
    res = PointAssigner().assign(points, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.num_gts == 0 and not res.gt_inds.any() and (res.labels == -1).all()
    res = PointAssigner().assign(torch.zeros(0, 3), _boxes([0, 0, 10, 10]))
    assert res.gt_inds.numel() == 0 and res.num_gts == 1


def test_point_assigner_pos_num_larger_than_the_level():
    # Only 4 points on P5; pos_num 6 gives the gt all 4 and none of the other levels.
    points = _p3_p5_points()
    res = PointAssigner(pos_num=6).assign(points, _boxes([0, 0, 128, 128]))
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [80, 81, 82, 83]


# ---------------------------------------------------------------- ATSS


_ATSS_GT = [[0, 0, 10, 10]]
_ATSS_BOXES = [
    [0, 0, 10, 10],  # IoU 1.0, centre distance 0
    [0, 1, 10, 10],  # IoU 0.9, 0.5
    [0, 0, 10, 1],  # IoU 0.1, 4.5
    [0, 9, 10, 10],  # IoU 0.1, 4.5
    [0, 0, 1, 10],  # IoU 0.1, 4.5
    [9, 0, 10, 10],  # IoU 0.1, 4.5
    [50, 50, 60, 60],  # IoU 0, far
]


def test_atss_mean_plus_std_threshold_by_hand():
    gts, boxes = _boxes(*_ATSS_GT), _boxes(*_ATSS_BOXES)
    # One level, topk 6: candidates are boxes 0-5 (box 6 is the farthest).
    ious = [1.0, 0.9, 0.1, 0.1, 0.1, 0.1]
    thr = statistics.mean(ious) + statistics.stdev(ious)  # 0.38333 + 0.44008
    assert thr == pytest.approx(0.82341, abs=1e-4)
    res = ATSSAssigner(topk=6).assign(boxes, [7], gts, torch.tensor([3]))
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 0, 0, 0]  # IoU 1.0 and 0.9 >= 0.823
    assert res.labels.tolist() == [3, 3, -1, -1, -1, -1, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 0.9, 0.1, 0.1, 0.1, 0.1, 0.0]))

    # Two levels (boxes 0-3 | 4-6), topk 3 per level: {0, 1, 2 or 3} | {4, 5, 6}; box 6 (IoU 0)
    # now is a candidate too. IoUs [1, .9, .1, .1, .1, 0] -> thr 0.36667 + 0.45461.
    ious = [1.0, 0.9, 0.1, 0.1, 0.1, 0.0]
    assert statistics.mean(ious) + statistics.stdev(ious) == pytest.approx(0.82128, abs=1e-4)
    assert ATSSAssigner(topk=3).assign(boxes, [4, 3], gts).gt_inds.tolist() == [1, 1, 0, 0, 0, 0, 0]

    # topk 2 per level: {0, 1} | {4, 5}, IoUs [1, .9, .1, .1] -> thr 0.525 + 0.49244 > 1: no positive.
    ious = [1.0, 0.9, 0.1, 0.1]
    assert statistics.mean(ious) + statistics.stdev(ious) == pytest.approx(1.01744, abs=1e-4)
    assert ATSSAssigner(topk=2).assign(boxes, [4, 3], gts).gt_inds.tolist() == [0] * 7


def test_atss_centre_must_be_inside_the_gt():
    gts = _boxes([0, 0, 10, 10])
    # Both IoU 0.5 (std 0, thr 0.5); centres x = 0 and x = 10 on the border: not inside by > 0.01.
    on_border = ATSSAssigner(topk=9).assign(_boxes([-10, 0, 10, 10], [0, 0, 20, 10]), [2], gts)
    assert on_border.gt_inds.tolist() == [0, 0]
    # Shifted by 0.5 px inwards: IoU still 0.5, centres x = 0.5 and 9.5 -> both positive.
    inside = ATSSAssigner(topk=9).assign(_boxes([-9.5, 0, 10.5, 10], [-0.5, 0, 19.5, 10]), [2], gts)
    assert inside.gt_inds.tolist() == [1, 1]


def test_atss_candidate_of_two_gts_keeps_the_higher_iou():
    gts = _boxes([0, 0, 10, 10], [0, 0, 10, 12])
    boxes = _boxes([0, 0, 10, 11], [0, 0, 10, 11])  # one per level; IoU 100/110 with gt 0, 110/120 with gt 1
    res = ATSSAssigner(topk=1).assign(boxes, [1, 1], gts, torch.tensor([4, 9]))
    assert res.gt_inds.tolist() == [2, 2] and res.labels.tolist() == [9, 9]
    torch.testing.assert_close(res.max_overlaps, torch.full((2,), 110 / 120))


def test_atss_without_gt_ignore_regions_and_bad_level_counts():
    boxes = _boxes([0, 0, 5, 5], [1, 1, 6, 6])
    res = ATSSAssigner().assign(boxes, [2], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0, 0] and res.labels.tolist() == [-1, -1] and res.num_gts == 0
    torch.testing.assert_close(res.max_overlaps, torch.zeros(2))
    with pytest.raises(ValueError):
        ATSSAssigner().assign(boxes, [3], _boxes([0, 0, 5, 5]))
    gts, boxes = _boxes(*_ATSS_GT), _boxes(*_ATSS_BOXES)
    ignore = _boxes([45, 45, 65, 65])  # covers box 6 (IoF 1)
    res = ATSSAssigner(topk=6, ignore_iof_thr=0.5).assign(boxes, [7], gts, None, ignore)
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 0, 0, -1]
    res = ATSSAssigner(topk=6).assign(boxes, [7], gts, None, ignore)  # ignore regions off by default
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 0, 0, 0]


def test_pairwise_iou_matches_torchvision_and_is_nan_free():
    a = _boxes([0, 0, 10, 10], [5, 5, 15, 20], [3, 3, 3, 3])
    b = _boxes([0, 0, 10, 5], [2, 2, 8, 8])
    torch.testing.assert_close(pairwise_iou(a[:2], b), torchvision.ops.box_iou(a[:2], b))
    degenerate = pairwise_iou(_boxes([3, 3, 3, 3]), _boxes([3, 3, 3, 3]))
    assert torch.isfinite(degenerate).all() and degenerate.item() == 0.0


# ---------------------------------------------------------------- focal loss


def test_focal_loss_by_hand_direct_formula_and_torchvision():
    # logit 0 (p = 0.5): positive alpha * 0.25 * log 2, negative (1 - alpha) * 0.25 * log 2.
    hand = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([0]), reduction="none")
    torch.testing.assert_close(hand, torch.tensor([[0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)]]))

    torch.manual_seed(0)
    pred = torch.randn(5, 4) * 3
    labels = torch.tensor([0, 3, 4, 2, 4])  # 4 = background (num_classes)
    t = labels_to_binary_targets(labels, 4)
    assert t.sum(1).tolist() == [1, 1, 0, 1, 0]
    p = pred.sigmoid()
    direct = -(0.25 * t * (1 - p) ** 2 * p.log() + 0.75 * (1 - t) * p**2 * (1 - p).log())
    loss = sigmoid_focal_loss(pred, labels, avg_factor=3.0)
    torch.testing.assert_close(loss, direct.sum() / 3.0)
    tv = torchvision.ops.sigmoid_focal_loss(pred, t, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(loss, tv / 3.0)
    torch.testing.assert_close(sigmoid_focal_loss(pred, t, avg_factor=3.0), loss)  # binary targets alike
    torch.testing.assert_close(sigmoid_focal_loss(pred, labels), direct.mean())


def test_focal_loss_weights_module_and_empty_input():
    torch.manual_seed(1)
    pred = torch.randn(3, 2)
    labels = torch.tensor([1, 2, -1])  # 2 = background; -1 also gives an all-zero row
    per_elem = sigmoid_focal_loss(pred, labels, reduction="none")
    w = torch.tensor([1.0, 0.0, 2.0])
    torch.testing.assert_close(sigmoid_focal_loss(pred, labels, w, reduction="sum"), (per_elem * w[:, None]).sum())
    flat = torch.arange(6, dtype=torch.float32)
    torch.testing.assert_close(sigmoid_focal_loss(pred, labels, flat, reduction="sum"),
                               (per_elem * flat.reshape(3, 2)).sum())
    module = FocalLoss(gamma=2.0, alpha=0.25, loss_weight=0.5)
    torch.testing.assert_close(module(pred, labels, avg_factor=2), 0.5 * per_elem.sum() / 2)
    empty = torch.zeros(0, 80, requires_grad=True)
    out = module(empty, torch.zeros(0, dtype=torch.long), avg_factor=1.0)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()


# ---------------------------------------------------------------- GIoU loss


def test_giou_loss_hand_values():
    pred = _boxes([0, 0, 10, 10], [0, 0, 1, 1], [0, 0, 2, 2])
    target = _boxes([0, 0, 10, 10], [2, 0, 3, 1], [1, 1, 3, 3])
    # identical -> 0; disjoint: IoU 0, union 2, enclosing 3 x 1 -> GIoU -1/3;
    # overlap: inter 1, union 7, enclosing 9 -> GIoU 1/7 - 2/9.
    expected = torch.tensor([0.0, 4.0 / 3.0, 1.0 - 1.0 / 7.0 + 2.0 / 9.0])
    torch.testing.assert_close(giou_loss(pred, target, reduction="none"), expected)
    torch.testing.assert_close(giou_loss(pred, target), expected.mean())
    torch.testing.assert_close(giou_loss(pred, target, reduction="none"),
                               torchvision.ops.generalized_box_iou_loss(pred, target, reduction="none"))
    # Legacy "+1" (RPv2 repo): the disjoint pair gets widths 2, inter 0, union 8, enclosing 4 x 2 = 8 -> loss 1.
    legacy = giou_loss(pred, target, legacy=True, reduction="none")
    torch.testing.assert_close(legacy[:2], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(generalized_iou(pred[:1], target[:1], legacy=True), torch.ones(1))


def test_giou_loss_weights_avg_factor_and_empty():
    pred = _boxes([0, 0, 1, 1], [0, 0, 2, 2]).requires_grad_()
    target = _boxes([2, 0, 3, 1], [1, 1, 3, 3])
    per = giou_loss(pred, target, reduction="none")
    w4 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # averaged to [1, 0.5]
    module = GIoULoss(loss_weight=2.0)
    torch.testing.assert_close(module(pred, target, w4, avg_factor=4), 2.0 * (per[0] + 0.5 * per[1]) / 4)
    zero = module(pred, target, torch.zeros(2))
    assert zero.item() == 0.0 and zero.requires_grad
    empty = torch.zeros(0, 4, requires_grad=True)
    out = module(empty, torch.zeros(0, 4), avg_factor=1.0)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert empty.grad is not None and empty.grad.shape == (0, 4)
    loss = module(pred, target, avg_factor=2)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
