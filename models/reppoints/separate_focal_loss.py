"""Separately normalised sigmoid focal loss ("normalized focal loss" of the RepPoints V2
paper, ``SEPFocalLoss`` of its repository; spec reppoints.md §2.3), the loss of the
within-box foreground verification branch.

With ``p = sigmoid(logit)``, a binary target map ``y`` and per-element positive weights
``w`` (RepPoints V2: 1 / box area in pixels, so each object counts about equally whatever
its size)::

    positive term = sum_{y == 1} alpha * (1 - p) ** gamma * -log(p) * w  /  sum_{y == 1} w
    negative term = sum_{y <  1} (1 - alpha) * p ** gamma * -log(1 - p)  /  max(N_pos, 1)
    loss = positive term + negative term   (only the negative term without positives)

``N_pos`` is the number of positive *cells* (``avg_factor``; the caller counts them).
Decision on the spec's flag (§2.3, "log(p) with no eps"): the logs are taken from the
logits (``logsigmoid``), identical where the reference is finite, never NaN or infinite;
``N_pos`` is floored at 1 so an image batch without objects gives a finite loss.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def separate_focal_loss(logits: Tensor, target: Tensor, pos_weight: Tensor, avg_factor: float | Tensor,
                        gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Args:
        logits: FloatTensor[...] (computed in float32).
        target: FloatTensor[...] binary, same shape.
        pos_weight: FloatTensor[...] weights of the positives (ignored elsewhere), same shape.
        avg_factor: number of positive cells normalising the negative term (floored at 1).
    """
    if not (logits.shape == target.shape == pos_weight.shape):
        raise ValueError(f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and pos_weight "
                         f"{tuple(pos_weight.shape)} must have the same shape")
    logits = logits.float()
    p = logits.sigmoid()
    pos = target.eq(1)
    neg_loss = ((1 - alpha) * p.pow(gamma) * -F.logsigmoid(-logits))[~pos].sum()
    loss = neg_loss / max(float(avg_factor), 1.0)
    if pos.any():
        w = pos_weight.float()[pos]
        pos_loss = (alpha * (1 - p[pos]).pow(gamma) * -F.logsigmoid(logits[pos]) * w).sum()
        loss = loss + pos_loss / w.sum().clamp(min=1e-12)
    return loss
