"""Anchor generator, box coder, MaxIoU assigner and random sampler on hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch

from models.common.task_modules.anchor_generator import AnchorGenerator, anchor_inside_flags
from models.common.task_modules.assigners import AssignResult, MaxIoUAssigner
from models.common.task_modules.box_coder import DeltaXYWHBBoxCoder
from models.common.task_modules.samplers import RandomSampler

# ---------------------------------------------------------------- anchors


def test_base_anchors_v2_by_hand():
    gen = AnchorGenerator(strides=[4], ratios=[0.5, 1.0, 2.0], scales=[8])
    r = math.sqrt(2.0)
    # w = 32 / sqrt(ratio), h = 32 * sqrt(ratio), centred at 0.
    expected = torch.tensor([
        [-16 * r, -16 / r, 16 * r, 16 / r],
        [-16.0, -16.0, 16.0, 16.0],
        [-16 / r, -16 * r, 16 / r, 16 * r],
    ])
    torch.testing.assert_close(gen.base_anchors[0], expected)


def test_base_anchors_legacy_v1_by_hand():
    gen = AnchorGenerator(strides=[16], ratios=[1.0], scales=[8], center_offset=0.5, legacy=True)
    # centre (16 - 1) / 2 = 7.5; half extent (128 - 1) / 2 = 63.5.
    torch.testing.assert_close(gen.base_anchors[0], torch.tensor([[-56.0, -56.0, 71.0, 71.0]]))


def test_grid_anchors_order_is_h_w_a():
    gen = AnchorGenerator(strides=[8, 16], ratios=[1.0, 2.0], scales=[1.0])
    anchors = gen.grid_anchors([(2, 3), (1, 2)])
    assert [a.shape for a in anchors] == [(2 * 3 * 2, 4), (1 * 2 * 2, 4)]
    a = anchors[0].reshape(2, 3, 2, 4)
    base = gen.base_anchors[0]
    for y in range(2):
        for x in range(3):
            torch.testing.assert_close(a[y, x], base + torch.tensor([x * 8.0, y * 8.0, x * 8.0, y * 8.0]))
    assert gen.num_base_anchors == 2


def test_valid_and_inside_flags():
    gen = AnchorGenerator(strides=[8], ratios=[1.0], scales=[2.0])  # 16 px anchors centred on x * 8
    sizes = [(4, 4)]  # padded 32 x 32 input
    valid = gen.valid_flags(sizes, (20, 9))[0].reshape(4, 4)  # ceil(20 / 8) = 3 rows, ceil(9 / 8) = 2 cols
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:3, :2] = True
    assert torch.equal(valid, expected)
    anchors = gen.grid_anchors(sizes)[0]
    all_valid = torch.ones(16, dtype=torch.bool)
    inside = anchor_inside_flags(anchors, all_valid, (32, 32), allowed_border=0).reshape(4, 4)
    # [x*8-8, x*8+8] inside [0, 32) needs x in {1, 2}
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(inside, expected)
    assert anchor_inside_flags(anchors, all_valid, (32, 32), allowed_border=-1).all()


# ---------------------------------------------------------------- box coder


@pytest.mark.parametrize("legacy", [False, True])
def test_box_coder_round_trip(legacy):
    coder = DeltaXYWHBBoxCoder([0.1, -0.1, 0.0, 0.2], [0.1, 0.1, 0.2, 0.2], legacy_plus_one=legacy)
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(50, 2, generator=g) * 80], 1)
    gts = torch.rand(50, 2, generator=g) * 100
    gts = torch.cat([gts, gts + 5 + torch.rand(50, 2, generator=g) * 80], 1)
    deltas = coder.encode(boxes, gts)
    torch.testing.assert_close(coder.decode(boxes, deltas), gts, rtol=1e-4, atol=1e-3)


def test_box_coder_values_clipping_and_class_specific_decode():
    coder = DeltaXYWHBBoxCoder()
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 0.0, 25.0, 20.0]])
    torch.testing.assert_close(coder.encode(box, gt), torch.tensor([[1.0, 0.0, math.log(2.0), 0.0]]))
    # decode with 2 classes and a clip to (h, w) = (15, 22)
    deltas = torch.tensor([[1.0, 0.0, math.log(2.0), 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = coder.decode(box, deltas, max_shape=(15, 22))
    torch.testing.assert_close(out, torch.tensor([[5.0, 0.0, 22.0, 15.0, 0.0, 0.0, 10.0, 15.0]]))
    # per-box sizes as a tensor give the same result
    out_t = coder.decode(box, deltas, max_shape=torch.tensor([[15.0, 22.0]]))
    torch.testing.assert_close(out_t, out)
    # wh_ratio_clip bounds growth to exp(|log(16/1000)|) = 62.5x
    huge = coder.decode(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 50.0, 50.0]]))
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(62.5), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- assigner


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_max_iou_assigner_pos_neg_ignore_band_and_labels():
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.0, match_low_quality=False)
    gts = _boxes([0, 0, 10, 10], [20, 20, 30, 30])
    boxes = _boxes(
        [0, 0, 10, 10],  # IoU 1 with gt 0 -> positive 1
        [21, 21, 30, 30],  # IoU 0.81 with gt 1 -> positive 2
        [0, 0, 10, 5],  # IoU 0.5 with gt 0 -> positive (>=)
        [0, 0, 10, 4],  # IoU 0.4 -> ignored band (-1)
        [50, 50, 60, 60],  # IoU 0 -> negative
    )
    res = assigner.assign(boxes, gts, torch.tensor([3, 7]))
    assert res.gt_inds.tolist() == [1, 2, 1, -1, 0]
    assert res.labels.tolist() == [3, 7, 3, -1, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 0.81, 0.5, 0.4, 0.0]))


def test_max_iou_assigner_neg_range_pair():
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.5), match_low_quality=False)
    res = assigner.assign(_boxes([0, 0, 10, 4], [50, 50, 60, 60]), _boxes([0, 0, 10, 10]))
    assert res.gt_inds.tolist() == [0, -1]  # IoU 0.4 in [0.1, 0.5) negative; IoU 0 below the range ignored


def test_max_iou_assigner_low_quality_matches():
    gts = _boxes([0, 0, 10, 10], [100, 100, 110, 110])
    boxes = _boxes([0, 0, 10, 3], [0, 0, 10, 3], [0, 0, 10, 2], [100, 100, 110, 101])
    # best IoU: gt 0 -> 0.3 (boxes 0 and 1 tie), gt 1 -> 0.1 (box 3)
    all_ties = MaxIoUAssigner(0.7, 0.05, min_pos_iou=0.2, gt_max_assign_all=True).assign(boxes, gts)
    assert all_ties.gt_inds.tolist() == [1, 1, -1, -1]  # box 3: IoU 0.1 < min_pos_iou, in the ignore band
    first_only = MaxIoUAssigner(0.7, 0.05, min_pos_iou=0.2, gt_max_assign_all=False).assign(boxes, gts)
    assert first_only.gt_inds.tolist() == [1, -1, -1, -1]
    low = MaxIoUAssigner(0.7, 0.05, min_pos_iou=0.05).assign(boxes, gts)
    assert low.gt_inds.tolist() == [1, 1, -1, 2]
    off = MaxIoUAssigner(0.7, 0.05, min_pos_iou=0.05, match_low_quality=False).assign(boxes, gts)
    assert off.gt_inds.tolist() == [-1, -1, -1, -1]


def test_max_iou_assigner_later_gt_wins_a_shared_best_box():
    gts = _boxes([0, 0, 10, 10], [0, 0, 10, 10])
    res = MaxIoUAssigner(0.9, 0.1, min_pos_iou=0.1).assign(_boxes([0, 0, 10, 5]), gts)
    assert res.gt_inds.tolist() == [2]


def test_max_iou_assigner_ignore_regions_by_iof():
    gts = _boxes([0, 0, 10, 10])
    boxes = _boxes([50, 50, 60, 60], [55, 50, 65, 60], [80, 80, 90, 90])
    ignore = _boxes([40, 40, 60, 60])  # box 0 fully inside (IoF 1), box 1 half (IoF 0.5)
    res = MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5, ignore_iof_thr=0.6).assign(boxes, gts, None, ignore)
    assert res.gt_inds.tolist() == [-1, 0, 0]
    disabled = MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5, ignore_iof_thr=-1).assign(boxes, gts, None, ignore)
    assert disabled.gt_inds.tolist() == [0, 0, 0]


def test_max_iou_assigner_empty_inputs():
    assigner = MaxIoUAssigner(0.7, 0.3, 0.3)
    res = assigner.assign(_boxes([0, 0, 5, 5], [1, 1, 6, 6]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0, 0] and res.labels.tolist() == [-1, -1]
    res = assigner.assign(torch.zeros(0, 4), _boxes([0, 0, 5, 5]))
    assert res.gt_inds.numel() == 0 and res.num_gts == 1


# ---------------------------------------------------------------- sampler


def _assigned(num_pos: int, num_neg: int, num_ignored: int):
    boxes = torch.rand(num_pos + num_neg + num_ignored, 4) * 10
    boxes[:, 2:] += boxes[:, :2] + 1
    gt_inds = torch.cat([torch.ones(num_pos, dtype=torch.long), torch.zeros(num_neg, dtype=torch.long),
                         -torch.ones(num_ignored, dtype=torch.long)])
    labels = torch.where(gt_inds > 0, 4, -1)
    return AssignResult(1, gt_inds, torch.zeros(len(gt_inds)), labels), boxes


def test_random_sampler_counts():
    torch.manual_seed(0)
    result, boxes = _assigned(100, 1000, 50)
    gts = torch.tensor([[0.0, 0.0, 5.0, 5.0]])
    s = RandomSampler(256, 0.5, add_gt_as_proposals=False).sample(result, boxes, gts, torch.tensor([4]))
    assert s.num_pos == 100 and s.num_neg == 156  # fewer positives than 128: negatives fill up
    assert (s.pos_inds < 100).all() and ((s.neg_inds >= 100) & (s.neg_inds < 1100)).all()
    assert len(set(s.neg_inds.tolist())) == 156
    assert s.pos_gt_labels.eq(4).all() and s.pos_assigned_gt_inds.eq(0).all() and not s.pos_is_gt.any()
    torch.testing.assert_close(s.pos_gt_boxes, gts.expand(100, 4))
    assert s.boxes.shape == (256, 4)

    result, boxes = _assigned(400, 1000, 0)
    s = RandomSampler(256, 0.25, add_gt_as_proposals=False).sample(result, boxes, gts)
    assert s.num_pos == 64 and s.num_neg == 192

    result, boxes = _assigned(10, 1000, 0)
    s = RandomSampler(256, 0.25, neg_pos_ub=3, add_gt_as_proposals=False).sample(result, boxes, gts)
    assert s.num_pos == 10 and s.num_neg == 30


def test_random_sampler_adds_gt_as_proposals():
    torch.manual_seed(0)
    gts = torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0]])
    assigner = MaxIoUAssigner(0.5, 0.5, 0.5)
    proposals = torch.tensor([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 5.0, 4.0]])
    res = assigner.assign(proposals, gts, torch.tensor([1, 2]))
    s = RandomSampler(8, 0.25, add_gt_as_proposals=True).sample(res, proposals, gts, torch.tensor([1, 2]))
    # candidates: [gt0, gt1, p0 (neg), p1 (pos of gt0)]; at most 2 positives of the 3
    assert s.num_pos == 2 and s.num_neg == 1
    assert res.gt_inds.tolist() == [1, 2, 0, 1]
    assert s.pos_is_gt.sum() <= 2 and s.neg_inds.tolist() == [2]
    for idx, is_gt, box, gt_box in zip(s.pos_inds.tolist(), s.pos_is_gt.tolist(), s.pos_boxes, s.pos_gt_boxes):
        assert is_gt == (idx < 2)
        if is_gt:
            torch.testing.assert_close(box, gt_box)


def test_random_sampler_without_gt():
    torch.manual_seed(0)
    res = MaxIoUAssigner(0.5, 0.5, 0.5).assign(torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3), torch.zeros(0, 4),
                                               torch.zeros(0, dtype=torch.long))
    s = RandomSampler(2, 0.5, add_gt_as_proposals=True).sample(res, torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3),
                                                               torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert s.num_pos == 0 and s.num_neg == 2 and s.pos_gt_boxes.shape == (0, 4)
