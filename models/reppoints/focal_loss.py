"""Sigmoid focal loss (Lin et al. 2017) for dense heads (RetinaNet, RepPoints, ATSS).

Element-wise, with ``p = sigmoid(x)`` and a binary target ``t``::

    loss = -alpha_t * (1 - p_t) ** gamma * log(p_t)
    p_t = p if t == 1 else 1 - p;  alpha_t = alpha if t == 1 else 1 - alpha

(``log(p_t)`` computed stably as ``-BCE_with_logits``; identical to
``torchvision.ops.sigmoid_focal_loss`` and to mmdetection's ``sigmoid_focal_loss``).
Class-index targets follow the mmdetection 2.x convention of spec reppoints.md: labels
``0..C-1`` are foreground, label ``C`` (background) gives an all-zero target row, so every
class logit is pushed down. RepPoints uses ``alpha=0.25, gamma=2.0``, ``loss_weight=1.0``,
reduction ``"mean"`` with ``avg_factor`` = the number of (refine) positives.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.common.losses.utils import weight_reduce_loss


def labels_to_binary_targets(labels: Tensor, num_classes: int) -> Tensor:
    """FloatTensor[N, C] one-hot of ``labels`` LongTensor[N]; label ``C`` (background) and
    any other value outside ``0..C-1`` (e.g. -1) give an all-zero row."""
    labels = labels.long()
    fg = (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).float()
    return onehot * fg[:, None].float()


def sigmoid_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, gamma: float = 2.0,
                       alpha: float = 0.25, reduction: str = "mean",
                       avg_factor: float | Tensor | None = None) -> Tensor:
    """Weighted, reduced sigmoid focal loss.

    Args:
        pred: FloatTensor[N, C] logits (computed in float32).
        target: LongTensor[N] class indices (``C`` = background) or FloatTensor[N, C] binary
            (or soft) targets of the same shape as ``pred``.
        weight: per-sample FloatTensor[N] (broadcast over classes), per-element
            FloatTensor[N, C], or its flattened FloatTensor[N * C]; None = all ones.
        gamma: focusing exponent (>= 0).
        alpha: weight of the positive term in [0, 1]; negative values disable the
            alpha balancing (torchvision's convention).
        reduction: ``"none"`` (FloatTensor[N, C]), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this (e.g. the number of positives).

    Returns:
        A scalar unless ``reduction="none"``.
    """
    if pred.dim() != 2:
        raise ValueError(f"pred must be [N, C], got {tuple(pred.shape)}")
    pred = pred.float()
    if target.dim() == 1:
        if target.shape[0] != pred.shape[0]:
            raise ValueError(f"{target.shape[0]} labels for {pred.shape[0]} predictions")
        target = labels_to_binary_targets(target, pred.shape[1])
    elif target.shape != pred.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.to(pred)
    p = pred.sigmoid()
    ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    if weight is not None:
        weight = weight.float()
        if weight.shape != loss.shape:
            if weight.dim() == 1 and weight.numel() == loss.shape[0]:
                weight = weight[:, None]
            elif weight.numel() == loss.numel():
                weight = weight.reshape(loss.shape)
            else:
                raise ValueError(f"weight {tuple(weight.shape)} does not fit the loss {tuple(loss.shape)}")
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class FocalLoss(nn.Module):
    """:func:`sigmoid_focal_loss` times ``loss_weight`` (sigmoid only, like mmdetection)."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        return self.loss_weight * sigmoid_focal_loss(pred, target, weight, self.gamma, self.alpha,
                                                     self.reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, loss_weight={self.loss_weight}"
