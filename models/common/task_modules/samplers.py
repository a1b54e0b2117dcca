"""Sampling a fixed-size, class-balanced subset of assigned candidates.

:class:`RandomSampler` is mmdetection's: up to ``num * pos_fraction`` positives drawn
uniformly at random, the rest of ``num`` filled with random negatives (optionally at most
``neg_pos_ub`` per positive). Draws use ``torch.randperm`` on torch's global RNG, which the
engine seeds and checkpoints, so runs repeat and resume exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.common.task_modules.assigners import AssignResult


@dataclass
class SamplingResult:
    """The sampled candidates of one image; positives come first in :attr:`boxes`.

    Attributes:
        pos_inds, neg_inds: LongTensor[P], LongTensor[Q] indices into the candidates
            (after gt boxes were prepended, if ``add_gt_as_proposals``), sorted.
        pos_boxes, neg_boxes: FloatTensor[P, 4], FloatTensor[Q, 4] xyxy.
        pos_gt_boxes: FloatTensor[P, 4] the gt box each positive is assigned to.
        pos_gt_labels: LongTensor[P] its class (0..num_classes-1), or -1s when unlabelled.
        pos_assigned_gt_inds: LongTensor[P] its gt index (0-based).
        pos_is_gt: BoolTensor[P] whether the positive is a gt box added as a proposal.
        num_gts: G.
    """

    pos_inds: Tensor
    neg_inds: Tensor
    pos_boxes: Tensor
    neg_boxes: Tensor
    pos_gt_boxes: Tensor
    pos_gt_labels: Tensor
    pos_assigned_gt_inds: Tensor
    pos_is_gt: Tensor
    num_gts: int

    @property
    def boxes(self) -> Tensor:
        """FloatTensor[P + Q, 4]: positives then negatives."""
        return torch.cat([self.pos_boxes, self.neg_boxes])

    @property
    def num_pos(self) -> int:
        return self.pos_inds.numel()

    @property
    def num_neg(self) -> int:
        return self.neg_inds.numel()


def random_choice(inds: Tensor, num: int) -> Tensor:
    """``num`` distinct elements of the 1-D ``inds`` chosen uniformly (all of them if fewer)."""
    if inds.numel() <= num:
        return inds
    # drawn on the CPU generator (the same draws on every device), then moved
    perm = torch.randperm(inds.numel(), device="cpu")[:num].to(inds.device)
    return inds[perm]


class RandomSampler:
    """Random positive/negative sampler.

    Args:
        num: candidates sampled per image (positives + negatives).
        pos_fraction: the largest share of positives.
        neg_pos_ub: at most ``neg_pos_ub * max(1, num_pos)`` negatives; negative means no bound.
        add_gt_as_proposals: prepend the gt boxes to the candidates (as positives of
            themselves) before sampling (R-CNN stage; not for RPN anchors).
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True) -> None:
        if num <= 0 or not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"RandomSampler: need num > 0 and pos_fraction in [0, 1], got {num}, {pos_fraction}")
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, assign_result: AssignResult, boxes: Tensor, gt_boxes: Tensor,
               gt_labels: Tensor | None = None) -> SamplingResult:
        """Sample from ``boxes`` FloatTensor[N, 4] given their assignment to ``gt_boxes`` [G, 4].

        With ``add_gt_as_proposals`` and G > 0, ``assign_result`` is extended in place with
        the gt boxes (mmdetection's behaviour) and indices refer to ``cat([gt_boxes, boxes])``.
        """
        boxes = boxes[:, :4]
        device = boxes.device
        gt_flags = torch.zeros(boxes.shape[0], dtype=torch.bool, device=device)
        if self.add_gt_as_proposals and gt_boxes.shape[0] > 0:
            boxes = torch.cat([gt_boxes.to(boxes.dtype), boxes])
            assign_result.add_gt_(gt_labels)
            gt_flags = torch.cat([torch.ones(gt_boxes.shape[0], dtype=torch.bool, device=device), gt_flags])

        gt_inds = assign_result.gt_inds
        num_expected_pos = int(self.num * self.pos_fraction)
        pos_inds = random_choice(torch.nonzero(gt_inds > 0).squeeze(1), num_expected_pos).sort().values
        num_expected_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_expected_neg = min(num_expected_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = random_choice(torch.nonzero(gt_inds == 0).squeeze(1), num_expected_neg).sort().values

        pos_assigned = gt_inds[pos_inds] - 1
        if gt_boxes.shape[0] > 0:
            pos_gt_boxes = gt_boxes[pos_assigned].to(boxes.dtype)
        else:
            pos_gt_boxes = boxes.new_zeros((0, 4))
        if assign_result.labels is not None:
            pos_gt_labels = assign_result.labels[pos_inds]
        else:
            pos_gt_labels = torch.full_like(pos_inds, -1)
        return SamplingResult(
            pos_inds=pos_inds,
            neg_inds=neg_inds,
            pos_boxes=boxes[pos_inds],
            neg_boxes=boxes[neg_inds],
            pos_gt_boxes=pos_gt_boxes,
            pos_gt_labels=pos_gt_labels,
            pos_assigned_gt_inds=pos_assigned,
            pos_is_gt=gt_flags[pos_inds],
            num_gts=gt_boxes.shape[0],
        )
