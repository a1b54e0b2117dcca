"""Classification losses: softmax cross-entropy and sigmoid binary cross-entropy."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.common.losses.utils import weight_reduce_loss


def cross_entropy(pred: Tensor, label: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                  avg_factor: float | Tensor | None = None) -> Tensor:
    """Softmax CE. ``pred``: FloatTensor[N, C] logits; ``label``: LongTensor[N] in 0..C-1;
    ``weight``: FloatTensor[N] per-sample weights."""
    loss = F.cross_entropy(pred, label, reduction="none")
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction, avg_factor)


def binary_cross_entropy(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                         avg_factor: float | Tensor | None = None) -> Tensor:
    """Sigmoid BCE. ``pred``: logits of any shape; ``target``: 0/1 (or soft) of the same
    shape; ``weight`` broadcasts to it."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    loss = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), reduction="none")
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction, avg_factor)


class CrossEntropyLoss(nn.Module):
    """Softmax CE (``use_sigmoid=False``) or sigmoid BCE (``use_sigmoid=True``) times ``loss_weight``."""

    def __init__(self, use_sigmoid: bool = False, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.use_sigmoid = use_sigmoid
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        fn = binary_cross_entropy if self.use_sigmoid else cross_entropy
        return self.loss_weight * fn(pred, target, weight, self.reduction, avg_factor)
