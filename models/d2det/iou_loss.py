"""D2Det's softened IoU loss (spec d2det.md §3.4, ``mmdet/models/d2det/iou_loss.py`` of the
official D2Det code).

Per aligned box pair (boxes ``(x1, y1, x2, y2)`` in input pixels):

- ``IoU`` with the legacy ``+1`` (``w = x2 - x1 + 1``, mmdet v1 ``bbox_overlaps(...,
  is_aligned=True)``), clamped at ``min=1e-6``;
- ``IoU' = IoU + 0.1`` where ``IoU <= 0.1``, else ``IoU`` (softens the loss of near-disjoint
  pairs, e.g. the near-zero predictions at initialisation);
- ``loss = -log(IoU')``.

Weighting / reduction (``weighting`` argument; ``M`` = number of pairs, ``l`` the loss,
``w`` the per-pair weight):

- ``"v1_broadcast"``: ``loss_weight * mean(l) * mean(w)``. This is what the official (mmdet
  v1) code computes: its loss is ``(M,)`` and its weight ``(M, 1)``, so ``loss * weight``
  broadcasts to an ``M x M`` matrix whose mean is ``mean(l) * mean(w)``. Every pair is pushed
  towards its target, scaled by the fraction of positive weights. **This reproduces the
  README numbers; use it (with ``loss_weight=2.0``) for every D2Det preset that aims to
  reproduce the official results.**
- ``"masked_mean"``: ``loss_weight * sum(w * l) / M``, the mmdet2.1 port's fix (there used
  with ``loss_weight=1.0``); still normalised by all pairs, not by the positive ones. Only
  for experiments that deliberately follow the mmdet2.1 port.

An empty input reduces to a zero that stays connected to the autograd graph.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["IoUWeighting", "aligned_iou_legacy", "softened_iou_loss", "iou_loss", "IoULoss"]

IoUWeighting = Literal["v1_broadcast", "masked_mean"]
_WEIGHTINGS = ("v1_broadcast", "masked_mean")


def aligned_iou_legacy(pred: Tensor, target: Tensor) -> Tensor:
    """Aligned IoU with the legacy ``+1`` (mmdet v1 ``bbox_overlaps(is_aligned=True)``).

    Args:
        pred, target: FloatTensor[M, 4] boxes ``(x1, y1, x2, y2)`` in pixels.

    Returns:
        FloatTensor[M] IoU (unclamped).
    """
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    area_t = (target[:, 2] - target[:, 0] + 1) * (target[:, 3] - target[:, 1] + 1)
    return overlap / (area_p + area_t - overlap)


def softened_iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise D2Det IoU loss ``-log(IoU')`` (see the module docstring).

    Args:
        pred, target: FloatTensor[M, 4] boxes in pixels.

    Returns:
        FloatTensor[M] (float32 even for half-precision inputs).
    """
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [M, 4]")
    iou = aligned_iou_legacy(pred.float(), target.float()).clamp(min=1e-6)
    iou = torch.where(iou <= 0.1, iou + 0.1, iou)
    return -torch.log(iou)


def iou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None,
             weighting: IoUWeighting = "v1_broadcast", loss_weight: float = 1.0) -> Tensor:
    """Weighted, reduced D2Det IoU loss (scalar).

    Args:
        pred, target: FloatTensor[M, 4] boxes in pixels.
        weight: FloatTensor[M] (or [M, 1]) per-pair weights (D2Det: the 0/1 overlap target);
            ``None`` = all ones.
        weighting: ``"v1_broadcast"`` -> ``loss_weight * mean(l) * mean(w)`` (official code,
            reproduces the README); ``"masked_mean"`` -> ``loss_weight * sum(w*l) / M``
            (mmdet2.1 fix).
        loss_weight: multiplier (D2Det v1: 2.0; mmdet2.1: 1.0).
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    loss = softened_iou_loss(pred, target)
    if loss.numel() == 0:
        return pred.sum() * 0.0
    w = torch.ones_like(loss) if weight is None else weight.reshape(-1).to(loss.dtype)
    if w.numel() != loss.numel():
        raise ValueError(f"weight has {w.numel()} elements, expected {loss.numel()}")
    if weighting == "v1_broadcast":
        return loss_weight * loss.mean() * w.mean()
    return loss_weight * (loss * w).sum() / loss.numel()


class IoULoss(nn.Module):
    """Module form of :func:`iou_loss`.

    ``forward(pred [M, 4], target [M, 4], weight [M] | None)`` -> scalar.
    """

    def __init__(self, weighting: IoUWeighting = "v1_broadcast", loss_weight: float = 2.0) -> None:
        super().__init__()
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        self.weighting: IoUWeighting = weighting
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return iou_loss(pred, target, weight, self.weighting, self.loss_weight)

    def extra_repr(self) -> str:
        return f"weighting={self.weighting!r}, loss_weight={self.loss_weight}"
