"""cuda_ops.soft_nms: hand-computed cases and a literal port of mmdet v1's C++ loop."""
from __future__ import annotations

import math

import pytest
import torch

from cuda_ops.soft_nms import batched_soft_nms, soft_nms

# A = [0,0,9,9] (+1 area 100), B = [0,0,9,7] (area 80, inside A), C = [5,0,14,9] (area 100)
# IoU(A,B) = 80/100 = 0.8, IoU(A,C) = 50/150 = 1/3, IoU(B,C) = 40/140 = 2/7
_BOXES = torch.tensor([[0.0, 0.0, 9.0, 7.0],    # B, index 0
                       [5.0, 0.0, 14.0, 9.0],   # C, index 1
                       [0.0, 0.0, 9.0, 9.0]],   # A, index 2
                      dtype=torch.float64)
_SCORES = torch.tensor([0.8, 0.7, 0.9], dtype=torch.float64)


def _cpp_soft_nms(boxes, scores, thr, method, sigma, min_score, offset=1.0):
    """Literal port of mmdet v1 nms_cpu.cpp soft_nms_cpu_kernel (method 1 linear, 2 gauss)."""
    x1, y1, x2, y2 = [boxes[:, k].tolist() for k in range(4)]
    s = scores.tolist()
    areas = [(x2[k] - x1[k] + offset) * (y2[k] - y1[k] + offset) for k in range(len(s))]
    inds = list(range(len(s)))
    n = len(s)
    i = 0
    while i < n:
        max_score, max_pos = s[i], i
        for pos in range(i + 1, n):
            if max_score < s[pos]:
                max_score, max_pos = s[pos], pos
        for arr in (x1, y1, x2, y2, s, areas, inds):
            arr[i], arr[max_pos] = arr[max_pos], arr[i]
        pos = i + 1
        while pos < n:
            w = max(0.0, min(x2[i], x2[pos]) - max(x1[i], x1[pos]) + offset)
            h = max(0.0, min(y2[i], y2[pos]) - max(y1[i], y1[pos]) + offset)
            inter = w * h
            ov = inter / (areas[i] + areas[pos] - inter)
            if method == 1:
                weight = 1 - ov if ov > thr else 1.0
            else:
                weight = math.exp(-(ov * ov) / sigma)
            s[pos] = weight * s[pos]
            if s[pos] < min_score:
                for arr in (x1, y1, x2, y2, s, areas, inds):
                    arr[pos] = arr[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return inds[:n], s[:n]


def test_linear_three_boxes_by_hand():
    keep, new = soft_nms(_BOXES, _SCORES, iou_threshold=0.5, method="linear")
    # pick A (0.9): B decays 0.8*(1-0.8)=0.16, C untouched (1/3 <= 0.5);
    # pick C (0.7): B untouched (2/7 <= 0.5); pick B (0.16)
    assert keep.tolist() == [2, 1, 0]
    assert keep.dtype == torch.long
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, 0.8 * 0.2], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_linear_without_plus_one():
    keep, new = soft_nms(_BOXES, _SCORES, method="linear", legacy_plus_one=False)
    # areas A 81, B 63, inter 63: IoU 7/9 -> B = 0.8*2/9; IoU(A,C) = 36/126, IoU(B,C) = 28/116
    assert keep.tolist() == [2, 1, 0]
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, 0.8 * 2 / 9], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_gaussian_three_boxes_by_hand():
    keep, new = soft_nms(_BOXES, _SCORES, sigma=0.5, method="gaussian")
    # pick A: B = 0.8*exp(-0.64/0.5) = 0.2224, C = 0.7*exp(-(1/9)/0.5) = 0.5605
    # pick C: B *= exp(-(2/7)^2/0.5); pick B
    c = 0.7 * math.exp(-(1 / 9) / 0.5)
    b = 0.8 * math.exp(-0.64 / 0.5) * math.exp(-((2 / 7) ** 2) / 0.5)
    assert keep.tolist() == [2, 1, 0]
    torch.testing.assert_close(new, torch.tensor([0.9, c, b], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_min_score_drops():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0],     # 0: kept, 0.9
                          [0.0, 0.0, 9.0, 9.0],     # 1: duplicate, IoU 1 -> 0 -> dropped
                          [0.0, 0.0, 9.0, 5.0],     # 2: IoU 0.6 -> 0.002*0.4 < 1e-3 dropped
                          [0.0, 0.0, 9.0, 6.0],     # 3: IoU 0.7 -> 0.5*0.3 = 0.15 kept
                          [50.0, 50.0, 60.0, 60.0]])  # 4: far away, 0.3 kept
    scores = torch.tensor([0.9, 0.85, 0.002, 0.5, 0.3])
    keep, new = soft_nms(boxes, scores, iou_threshold=0.5, min_score=1e-3)
    assert keep.tolist() == [0, 4, 3]
    torch.testing.assert_close(new, torch.tensor([0.9, 0.3, 0.15]))
    # a higher min_score also drops box 3
    keep, _ = soft_nms(boxes, scores, min_score=0.2)
    assert keep.tolist() == [0, 4]


def test_empty_input():
    keep, new = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.long
    assert new.shape == (0,) and new.dtype == torch.float32
    keep, new = batched_soft_nms(torch.zeros(0, 4), torch.zeros(0),
                                 torch.zeros(0, dtype=torch.long))
    assert keep.shape == (0,) and new.shape == (0,)


def test_single_box():
    keep, new = soft_nms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.5]))
    assert keep.tolist() == [0] and new.tolist() == [0.5]


@pytest.mark.parametrize("method,mcode", [("linear", 1), ("gaussian", 2)])
@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_cpp_port(method, mcode, seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    # coarse scores produce ties; a high min_score makes many drops and compactions
    scores = torch.randint(1, 12, (n,), generator=g).double() / 12
    min_score = 0.05 if method == "linear" else 0.2
    ref_keep, ref_scores = _cpp_soft_nms(boxes, scores, 0.3, mcode, 0.5, min_score)
    keep, new = soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=min_score,
                         method=method)
    assert len(ref_keep) < n  # something was dropped
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(new, torch.tensor(ref_scores, dtype=torch.float64),
                               rtol=1e-14, atol=1e-15)


def test_batched_does_not_suppress_across_classes():
    boxes = torch.cat([_BOXES, _BOXES]).float()
    scores = torch.cat([_SCORES, _SCORES - 0.05]).float()
    labels = torch.tensor([3, 3, 3, 7, 7, 7])
    keep, new = batched_soft_nms(boxes, scores, labels)
    # each class on its own gives [A, C, B] with B decayed to 0.2 * its score
    expect = {0: 0.16, 1: 0.7, 2: 0.9, 3: 0.75 * 0.2, 4: 0.65, 5: 0.85}
    assert sorted(keep.tolist()) == list(range(6))
    torch.testing.assert_close(new, torch.tensor([expect[k] for k in keep.tolist()]))
    assert (new[:-1] >= new[1:]).all()  # sorted by decayed score
    for lab in (3, 7):
        idx = torch.nonzero(labels == lab).squeeze(1)
        k1, s1 = soft_nms(boxes[idx], scores[idx])
        mask = labels[keep] == lab
        assert keep[mask].tolist() == idx[k1].tolist()
        assert torch.equal(new[mask], s1)
    # all in one class, the duplicates decay each other instead
    keep_one, new_one = batched_soft_nms(boxes, scores, torch.zeros(6, dtype=torch.long))
    assert new_one.sum() < new.sum()


def test_rejects_unknown_method():
    with pytest.raises(ValueError):
        soft_nms(_BOXES, _SCORES, method="hard")
