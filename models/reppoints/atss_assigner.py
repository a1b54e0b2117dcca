"""Adaptive Training Sample Selection (ATSS, Zhang et al. 2020) assigner.

The RPv2 repo uses ``ATSSAssigner(topk=9)`` for the refine stage of RepPoints V1/V2 and
Dense RepPoints (spec reppoints.md §1.3 "Refine stage"); there the candidates are the
pseudo boxes of the detached init points, in input pixels. Steps, per image:

1. ``IoU(candidate, gt)`` [N, G], areas without the legacy "+1", union clamped to
   ``>= 1e-6`` (mmdetection 2.x ``bbox_overlaps``), so degenerate (zero-area) candidates
   give IoU 0 rather than NaN.
2. On each level, for each gt, the ``topk`` candidates whose box *centres* are nearest
   (Euclidean, pixels) to the gt centre: ``topk * num_levels`` candidates per gt (45 for
   9 x P3-P7).
3. Per gt threshold ``mean + std`` of those candidates' IoUs (``std`` unbiased, as
   ``torch.std``; with a single candidate it is taken as 0 instead of NaN).
4. A candidate is positive for a gt when its IoU ``>=`` the threshold **and** its centre
   lies inside the gt by more than 0.01 px (``min(l, t, r, b) > 0.01``).
5. A candidate positive for several gts keeps the one of highest IoU (the lowest gt
   index on an exact tie). All others are negative (``gt_inds = 0``).

Choices beyond the official code (documented deviations):

- A level with fewer than ``topk`` candidates contributes all of them (the official code
  crashes there, spec §8.7; later mmdetection versions do the same as here).
- ``ignore_iof_thr`` (mmdetection >= 2.x extension, **off by default**, matching the RPv2
  repo where ``gt_bboxes_ignore`` is not handled): candidates whose IoF with an ignore
  region exceeds it are never selected as candidates and end up ignored (``gt_inds = -1``)
  unless some gt still takes them as a positive.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.common.task_modules.assigners import AssignResult, box_iof


def pairwise_iou(boxes: Tensor, gt_boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """FloatTensor[N, G]: IoU of ``boxes`` [N, 4] with ``gt_boxes`` [G, 4] (xyxy, no "+1").

    The union is clamped to ``>= eps`` (mmdetection 2.x ``bbox_overlaps``).
    """
    area1 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area2 = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    lt = torch.max(boxes[:, None, :2], gt_boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], gt_boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - inter).clamp(min=eps)
    return inter / union


class ATSSAssigner:
    """ATSS: per-gt adaptive IoU threshold over the nearest candidates of every level.

    Args:
        topk: candidates taken per level per gt (9 in every RepPoints config).
        ignore_iof_thr: IoF above which a candidate overlapping an ignore region is
            ignored; negative (the default) disables ignore regions.
    """

    def __init__(self, topk: int = 9, ignore_iof_thr: float = -1.0) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = int(topk)
        self.ignore_iof_thr = float(ignore_iof_thr)

    def assign(
        self,
        boxes: Tensor,
        num_level_boxes: Sequence[int],
        gt_boxes: Tensor,
        gt_labels: Tensor | None = None,
        gt_boxes_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign candidate ``boxes`` FloatTensor[N, 4] (xyxy pixels, all levels concatenated).

        Args:
            boxes: candidate boxes, level after level (finest first).
            num_level_boxes: number of candidates of each level; sums to N.
            gt_boxes: FloatTensor[G, 4] xyxy pixels.
            gt_labels: LongTensor[G] in 0..num_classes-1, or None.
            gt_boxes_ignore: FloatTensor[M, 4] or None (used only when ``ignore_iof_thr > 0``).

        Returns:
            AssignResult: ``gt_inds`` LongTensor[N] (0 negative, -1 ignored, k + 1 gt k);
            ``max_overlaps`` FloatTensor[N], the IoU with the assigned gt at positives and
            the best IoU with any gt elsewhere (0 when G = 0); ``labels`` LongTensor[N] (gt
            class at positives, -1 elsewhere) or None without ``gt_labels``.
        """
        boxes = boxes[:, :4]
        num_level_boxes = [int(n) for n in num_level_boxes]
        num_gts, num_boxes = gt_boxes.shape[0], boxes.shape[0]
        if sum(num_level_boxes) != num_boxes:
            raise ValueError(f"num_level_boxes {num_level_boxes} sum to {sum(num_level_boxes)}, not {num_boxes}")
        device = boxes.device
        gt_inds = torch.zeros(num_boxes, dtype=torch.long, device=device)
        if num_gts == 0 or num_boxes == 0:
            labels = None if gt_labels is None else torch.full((num_boxes,), -1, dtype=torch.long, device=device)
            return AssignResult(num_gts, gt_inds, torch.zeros(num_boxes, device=device), labels)

        boxes = boxes.float()
        gt_boxes = gt_boxes[:, :4].float()
        overlaps = pairwise_iou(boxes, gt_boxes)  # [N, G]

        box_ctr = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
        gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [G, 2]
        distances = (box_ctr[:, None, :] - gt_ctr[None, :, :]).pow(2).sum(-1).sqrt()  # [N, G]

        if self.ignore_iof_thr > 0 and gt_boxes_ignore is not None and gt_boxes_ignore.numel() > 0:
            ignored = box_iof(boxes, gt_boxes_ignore[:, :4].float().to(device)).max(dim=1).values > self.ignore_iof_thr
            distances[ignored, :] = float("inf")
            gt_inds[ignored] = -1

        # 2. nearest ``topk`` candidate centres per level per gt -> [K, G] global indices.
        candidate_idxs = []
        start = 0
        for n in num_level_boxes:
            if n > 0:
                k = min(self.topk, n)
                _, idx = distances[start:start + n].topk(k, dim=0, largest=False)
                candidate_idxs.append(idx + start)
            start += n
        candidate_idxs = torch.cat(candidate_idxs, dim=0)  # [K, G]
        gt_cols = torch.arange(num_gts, device=device).expand_as(candidate_idxs)

        # 3. adaptive threshold, 4. centre inside the gt.
        cand_ious = overlaps[candidate_idxs, gt_cols]  # [K, G]
        if cand_ious.shape[0] > 1:
            thr = cand_ious.mean(dim=0) + cand_ious.std(dim=0)
        else:
            thr = cand_ious.mean(dim=0)
        is_pos = cand_ious >= thr[None, :]
        cand_ctr = box_ctr[candidate_idxs]  # [K, G, 2]
        deltas = torch.stack([
            cand_ctr[..., 0] - gt_boxes[None, :, 0],
            cand_ctr[..., 1] - gt_boxes[None, :, 1],
            gt_boxes[None, :, 2] - cand_ctr[..., 0],
            gt_boxes[None, :, 3] - cand_ctr[..., 1],
        ], dim=-1)
        is_pos &= deltas.min(dim=-1).values > 0.01

        # 5. a candidate positive for several gts keeps the one of highest IoU.
        pos_overlaps = torch.full_like(overlaps, float("-inf"))
        pos_overlaps[candidate_idxs[is_pos], gt_cols[is_pos]] = overlaps[candidate_idxs[is_pos], gt_cols[is_pos]]
        best_pos_iou, best_gt = pos_overlaps.max(dim=1)  # first (lowest) gt index on ties
        pos = torch.isfinite(best_pos_iou)
        gt_inds[pos] = best_gt[pos] + 1
        max_overlaps = torch.where(pos, best_pos_iou, overlaps.max(dim=1).values)

        labels = None
        if gt_labels is not None:
            labels = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
            labels[pos] = gt_labels.to(device).long()[best_gt[pos]]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)
