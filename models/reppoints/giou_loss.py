"""Generalized IoU loss (Rezatofighi et al. 2019): ``loss = 1 - GIoU`` per aligned box pair.

``GIoU = IoU - (|C| - |U|) / |C|`` with ``U`` the union and ``C`` the smallest enclosing box
of the pair; the loss lies in [0, 2] (0 for identical boxes, -> 2 for far-apart ones).
Boxes are xyxy in any common unit (RepPoints: pixels divided by ``4 * stride``).

Two conventions (``legacy`` argument; spec reppoints.md §1.4 [FLAG], §8.2):

- ``legacy=False`` (default, mmdetection 2.x ``bbox_overlaps(mode="giou")``): widths
  ``x2 - x1``; union and enclosing area clamped to ``>= eps``.
- ``legacy=True`` (the RPv2 repo's ``giou_loss``): widths ``x2 - x1 + 1`` for the
  intersection, both areas and the enclosing box, and ``eps`` *added* to the union and
  the enclosing area. On boxes already divided by ``4 * stride`` the "+1" pads every box
  by ``4 * stride`` px, which softens the loss for small boxes; use it only to match the
  RPv2 repo's numbers.

Areas are not clamped (as in both references): a doubly inverted box (x2 < x1 and
y2 < y1, possible with ``exact_minmax`` pseudo boxes) has a positive area.

Weighting (mmdetection's ``GIoULoss.forward``): a weight of shape [N, 4] is averaged to
[N]; if a weight is given and none of it is > 0 the loss is ``(pred * weight).sum()``, a
zero connected to the graph; an empty input gives such a zero as well.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.common.losses.utils import weight_reduce_loss


def generalized_iou(pred: Tensor, target: Tensor, eps: float = 1e-6, legacy: bool = False) -> Tensor:
    """FloatTensor[N]: aligned GIoU of ``pred`` and ``target`` FloatTensor[N, 4] (xyxy)."""
    off = 1.0 if legacy else 0.0
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt + off).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0] + off) * (pred[:, 3] - pred[:, 1] + off)
    area_t = (target[:, 2] - target[:, 0] + off) * (target[:, 3] - target[:, 1] + off)
    union = area_p + area_t - overlap
    enc_lt = torch.min(pred[:, :2], target[:, :2])
    enc_rb = torch.max(pred[:, 2:], target[:, 2:])
    enc_wh = (enc_rb - enc_lt + off).clamp(min=0)
    enclose = enc_wh[:, 0] * enc_wh[:, 1]
    if legacy:
        union = union + eps
        enclose = enclose + eps
    else:
        union = union.clamp(min=eps)
        enclose = enclose.clamp(min=eps)
    return overlap / union - (enclose - union) / enclose


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 1e-6,
              legacy: bool = False, reduction: str = "mean", avg_factor: float | Tensor | None = None) -> Tensor:
    """Weighted, reduced ``1 - GIoU``.

    Args:
        pred, target: FloatTensor[N, 4] xyxy boxes (computed in float32).
        weight: FloatTensor[N] or [N, 4] (averaged over the 4 coordinates); None = ones.
        eps: numerical floor (see the module doc for how each convention applies it).
        legacy: the RPv2 repo's "+1" widths (module doc).
        reduction: ``"none"`` (FloatTensor[N]), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this (e.g. the number of positives).
    """
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [N, 4]")
    if weight is not None:
        if weight.dim() > 1:
            if weight.shape != pred.shape:
                raise ValueError(f"weight {tuple(weight.shape)} must be [N] or [N, 4]")
            weight = weight.mean(dim=-1)
        if not torch.any(weight > 0) and reduction != "none":
            return (pred.float() * weight.float()[:, None]).sum()
        weight = weight.float()
    if pred.shape[0] == 0 and reduction != "none":
        return pred.sum() * 0.0
    loss = 1.0 - generalized_iou(pred.float(), target.float(), eps, legacy)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class GIoULoss(nn.Module):
    """:func:`giou_loss` times ``loss_weight`` (RepPoints GIoU configs: 1.0 init, 2.0 refine)."""

    def __init__(self, eps: float = 1e-6, legacy: bool = False, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.eps = float(eps)
        self.legacy = legacy
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        return self.loss_weight * giou_loss(pred, target, weight, self.eps, self.legacy, self.reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, legacy={self.legacy}, loss_weight={self.loss_weight}"
