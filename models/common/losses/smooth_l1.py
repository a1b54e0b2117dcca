"""Smooth L1 (Huber-like) box regression loss; ``beta = 0`` is plain L1.

mmdetection v1 uses SmoothL1 with beta 1/9 for the RPN and 1.0 for the R-CNN box head;
mmdetection v2's Faster R-CNN uses L1 for both (``beta=0`` here).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.common.losses.utils import weight_reduce_loss


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0, weight: Tensor | None = None,
                   reduction: str = "mean", avg_factor: float | Tensor | None = None) -> Tensor:
    """Element-wise ``0.5 * d**2 / beta if d < beta else d - 0.5 * beta`` with ``d = |pred - target|``.

    ``pred``, ``target``: FloatTensor[..., 4] (same shape); ``weight`` broadcasts to them.
    Returns a scalar unless ``reduction="none"``.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff = (pred.float() - target.float()).abs()  # float32 even under mixed precision
    if beta > 0:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    else:
        loss = diff
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class SmoothL1Loss(nn.Module):
    """:func:`smooth_l1_loss` times ``loss_weight``."""

    def __init__(self, beta: float = 1.0, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.beta = beta
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        return self.loss_weight * smooth_l1_loss(pred, target, self.beta, weight, self.reduction, avg_factor)
