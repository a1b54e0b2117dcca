"""Weighting and reduction shared by the losses (mmdetection's ``weight_reduce_loss``)."""
from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def weight_reduce_loss(loss: Tensor, weight: Tensor | None = None, reduction: str = "mean",
                       avg_factor: float | Tensor | None = None) -> Tensor:
    """Multiply an element-wise ``loss`` by ``weight`` (broadcast) and reduce it.

    ``reduction="mean"`` with an ``avg_factor`` divides the *sum* by ``avg_factor`` (e.g.
    the number of sampled anchors), mmdetection's normalisation; without one it is the
    plain mean. An empty ``loss`` reduces to a zero that keeps the autograd graph.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if avg_factor is None:
        return loss.sum() * 0.0 if loss.numel() == 0 else loss.mean()
    return loss.sum() / avg_factor
