"""Assigning candidate boxes (anchors, proposals) to ground-truth boxes by IoU.

:class:`MaxIoUAssigner` follows mmdetection's ``MaxIoUAssigner`` step by step, vectorised
(no Python loop over boxes or ground truths):

1. ``overlaps = IoU(gt, candidates)`` [G, N]. Candidates whose IoF (intersection over the
   candidate's own area) with any ignore region exceeds ``ignore_iof_thr`` get overlap -1
   with every gt, so they end up ignored.
2. Every candidate starts as ignored (-1).
3. Negatives: max overlap in ``[0, neg_iou_thr)`` (or in ``[lo, hi)`` for a pair).
4. Positives: max overlap ``>= pos_iou_thr`` -> its argmax gt.
5. Low-quality matches (``match_low_quality``): every gt whose best overlap is
   ``>= min_pos_iou`` claims its best candidate (all tied candidates when
   ``gt_max_assign_all``), overriding 3-4; when several gts claim one candidate the gt
   with the highest index wins (mmdetection's loop order).

IoU uses torchvision's ``box_iou`` (areas without the v1 "+1").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou


def box_iof(boxes: Tensor, regions: Tensor) -> Tensor:
    """FloatTensor[N, M]: intersection of ``boxes[i]`` and ``regions[j]`` over the area of ``boxes[i]``."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / box_area(boxes).clamp(min=1e-6)[:, None]


@dataclass
class AssignResult:
    """The assignment of N candidates to G ground truths.

    Attributes:
        num_gts: G.
        gt_inds: LongTensor[N]: 0 negative, -1 ignored, k + 1 assigned to gt k.
        max_overlaps: FloatTensor[N]: best IoU with any gt (0 when G = 0; -1 for candidates
            ignored by an ignore region).
        labels: LongTensor[N]: class of the assigned gt, -1 where not positive (or
            ``None`` when no gt labels were given).
    """

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor | None = None

    @property
    def num_candidates(self) -> int:
        return self.gt_inds.numel()

    def add_gt_(self, gt_labels: Tensor | None) -> None:
        """Prepend the gt boxes themselves as candidates, each assigned to itself (IoU 1)."""
        device = self.gt_inds.device
        self_inds = torch.arange(1, self.num_gts + 1, dtype=torch.long, device=device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(self.num_gts), self.max_overlaps])
        if self.labels is not None:
            if gt_labels is None:
                raise ValueError("add_gt_: the result has labels, so gt_labels are needed")
            self.labels = torch.cat([gt_labels.to(self.labels), self.labels])


class MaxIoUAssigner:
    """Assign each candidate to the gt of highest IoU, with positive/negative thresholds.

    Args:
        pos_iou_thr: IoU >= this makes a positive.
        neg_iou_thr: IoU in [0, thr) makes a negative; a pair (lo, hi) means [lo, hi).
        min_pos_iou: least IoU for a gt's low-quality best match.
        gt_max_assign_all: a gt claims every candidate tied at its best IoU.
        ignore_iof_thr: candidates with IoF > this against an ignore region are ignored;
            negative disables ignore regions.
        match_low_quality: enable step 5 (module doc).
    """

    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float | tuple[float, float],
        min_pos_iou: float = 0.0,
        gt_max_assign_all: bool = True,
        ignore_iof_thr: float = -1.0,
        match_low_quality: bool = True,
    ) -> None:
        self.pos_iou_thr = float(pos_iou_thr)
        if isinstance(neg_iou_thr, (list, tuple)):
            if len(neg_iou_thr) != 2:
                raise ValueError(f"neg_iou_thr pair must have 2 values, got {neg_iou_thr}")
            self.neg_iou_thr: tuple[float, float] = (float(neg_iou_thr[0]), float(neg_iou_thr[1]))
        else:
            self.neg_iou_thr = (0.0, float(neg_iou_thr))
        self.min_pos_iou = float(min_pos_iou)
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = float(ignore_iof_thr)
        self.match_low_quality = match_low_quality

    def assign(
        self,
        boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor | None = None,
        gt_boxes_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign ``boxes`` FloatTensor[N, 4] to ``gt_boxes`` FloatTensor[G, 4] (xyxy pixels).

        ``gt_labels``: LongTensor[G] or None; ``gt_boxes_ignore``: FloatTensor[M, 4] or None
        (used only when ``ignore_iof_thr >= 0``).
        """
        boxes = boxes[:, :4]
        num_gts, num_boxes = gt_boxes.shape[0], boxes.shape[0]
        device = boxes.device
        gt_inds = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
        if num_gts == 0 or num_boxes == 0:
            max_overlaps = boxes.new_zeros(num_boxes)
            if num_gts == 0:
                gt_inds.zero_()
            labels = None if gt_labels is None else torch.full((num_boxes,), -1, dtype=torch.long, device=device)
            return AssignResult(num_gts, gt_inds, max_overlaps, labels)

        overlaps = box_iou(gt_boxes.float(), boxes.float())  # [G, N]
        if self.ignore_iof_thr >= 0 and gt_boxes_ignore is not None and gt_boxes_ignore.numel() > 0:
            ignored = box_iof(boxes.float(), gt_boxes_ignore.float()).max(dim=1).values > self.ignore_iof_thr
            overlaps[:, ignored] = -1

        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        lo, hi = self.neg_iou_thr
        gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax_overlaps[pos] + 1

        if self.match_low_quality:
            gt_max_overlaps, gt_argmax = overlaps.max(dim=1)  # [G]
            eligible = gt_max_overlaps >= self.min_pos_iou
            gt_ids = torch.arange(1, num_gts + 1, device=device)
            if self.gt_max_assign_all:
                claims = (overlaps == gt_max_overlaps[:, None]) & eligible[:, None]  # [G, N]
                winner = (claims.long() * gt_ids[:, None]).max(dim=0).values  # highest claiming gt + 1, or 0
                gt_inds = torch.where(winner > 0, winner, gt_inds)
            else:
                winner = torch.zeros(num_boxes, dtype=torch.long, device=device)
                winner.scatter_reduce_(0, gt_argmax[eligible], gt_ids[eligible], reduce="amax")
                gt_inds = torch.where(winner > 0, winner, gt_inds)

        labels = None
        if gt_labels is not None:
            labels = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
            pos = gt_inds > 0
            labels[pos] = gt_labels.to(device).long()[gt_inds[pos] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)
