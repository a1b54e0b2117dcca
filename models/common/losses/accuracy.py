"""Top-1 classification accuracy, for logging (mmdetection's ``acc``)."""
from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Percentage (0-100) of rows of ``pred`` FloatTensor[N, C] whose argmax equals
    ``target`` LongTensor[N]; 0 when N = 0. Returns a detached scalar."""
    if pred.shape[0] == 0:
        return pred.new_zeros(())
    return (pred.argmax(dim=1) == target).float().mean() * 100.0
