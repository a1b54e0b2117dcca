"""Gaussian focal loss (CornerNet, Law & Deng 2018), RepPoints V2's corner heatmap loss
(spec reppoints.md §2.2).

With ``p = sigmoid(logit)`` and a heatmap target ``y`` in [0, 1] (exactly 1 at the
positives, a Gaussian bump below 1 around them, 0 elsewhere), element-wise::

    y == 1:  -log(p) * (1 - p) ** alpha
    y <  1:  -log(1 - p) * p ** alpha * (1 - y) ** gamma

RepPoints V2 uses ``alpha = 2``, ``gamma = 4``, weight 0.25, the sum divided by the number of
positive corners. The logs are computed from the logits (``logsigmoid``), which equals the
reference's ``log(p + 1e-12)`` wherever that is finite and never gives ``-inf``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def gaussian_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        avg_factor: float | Tensor | None = None) -> Tensor:
    """Summed Gaussian focal loss, divided by ``avg_factor`` (default: the number of elements
    with ``target == 1``, at least 1).

    Args:
        logits: FloatTensor[...] heatmap logits (computed in float32).
        target: FloatTensor[...] of the same shape, values in [0, 1].
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    logits = logits.float()
    target = target.float()
    p = logits.sigmoid()
    pos = target.eq(1).float()
    pos_loss = -F.logsigmoid(logits) * (1 - p).pow(alpha) * pos
    neg_loss = -F.logsigmoid(-logits) * p.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)
    if avg_factor is None:
        avg_factor = pos.sum().clamp(min=1)
    return (pos_loss + neg_loss).sum() / avg_factor
