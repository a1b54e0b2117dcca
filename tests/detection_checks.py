"""Shared pieces of the detector tests: the synthetic overfitting batch, the total loss,
a plain SGD overfitting loop and the "every gt found" measure."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.ops import box_iou


def rectangles_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 160 x 160 noise images with coloured rectangles; one class per colour (3 classes)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 160, 160, generator=g) * 0.3
    boxes = [torch.tensor([[20.0, 30.0, 70.0, 90.0], [100.0, 100.0, 140.0, 130.0], [90.0, 20.0, 150.0, 60.0]]),
             torch.tensor([[40.0, 40.0, 120.0, 120.0], [10.0, 130.0, 30.0, 150.0]])]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1, 0])]
    colours = torch.tensor([[2.0, -2.0, -2.0], [-2.0, 2.0, -2.0], [-2.0, -2.0, 2.0]])
    for i in range(2):
        for box, label in zip(boxes[i], labels[i]):
            x1, y1, x2, y2 = box.long().tolist()
            images[i, :, y1:y2, x1:x2] = colours[label][:, None, None] + 0.3 * torch.randn(3, y2 - y1, x2 - x1,
                                                                                          generator=g)
    return images, [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the weighted losses (keys starting with ``loss``; logging scalars excluded)."""
    return sum(v for k, v in losses.items() if k.startswith("loss"))


def overfit(model: torch.nn.Module, images: torch.Tensor, sizes: Sequence[tuple[int, int]],
            targets: Sequence[dict[str, torch.Tensor]], iterations: int, lr: float = 0.02,
            on_losses: Callable[[dict[str, torch.Tensor]], None] | None = None) -> list[float]:
    """SGD (momentum 0.9, gradient clip 10) on one batch; returns the total loss per iteration."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = []
    for _ in range(iterations):
        losses = model(images, sizes, targets)
        if on_losses is not None:
            on_losses(losses)
        loss = total_loss(losses)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        history.append(loss.item())
    return history


def top_k_match_iou(det: dict[str, torch.Tensor], target: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """FloatTensor[G]: per gt, the best IoU of a detection of its class among the image's ``k``
    highest-scoring detections, with no score threshold.

    The overfitting tests ask this rather than "a detection above score s": after a few dozen
    iterations on one batch, *whether* a gt's detection scores 0.29 or 0.31 depends on float
    rounding (another CPU kernel set, another trajectory), but whether it ranks among the top
    few of its image does not."""
    order = det["scores"].argsort(descending=True)[:k]
    iou = box_iou(target["boxes"], det["boxes"][order])
    same_class = target["labels"][:, None] == det["labels"][order][None, :]
    if order.numel() == 0:
        return torch.zeros(len(target["boxes"]))
    return (iou * same_class).max(dim=1).values


def mean_ratio(values: Sequence[float], n: int) -> float:
    """Mean of the last ``n`` values over the mean of the first ``n`` (a loss's fall)."""
    return (sum(values[-n:]) / n) / max(sum(values[:n]) / n, 1e-12)
