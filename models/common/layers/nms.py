"""NMS over a batch of images in one call, keeping the best ``k`` boxes of each image.

A thin wrapper over :func:`torchvision.ops.nms`: boxes of different groups (e.g.
image x level for proposals, image x class for detections) never suppress each other.
:func:`batched_nms` is :func:`torchvision.ops.batched_nms` (same two strategies, same result)
with every tensor made on the boxes' device: torchvision's coordinate trick makes a CPU
``torch.tensor(1)`` on the default device, which the meta-device check of
``tests/test_autocast_presets.py`` rejects.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS of FloatTensor[N, 4] xyxy ``boxes`` / FloatTensor[N] ``scores`` within each group of
    LongTensor[N] ``idxs``: LongTensor[K] kept indices by decreasing score, as
    :func:`torchvision.ops.batched_nms` (one NMS per group above 4000 boxes on CPU / 20000 on
    GPU, else one NMS of the boxes offset apart per group)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 20000):
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for group in torch.unique(idxs):
            inds = torch.where(idxs == group)[0]
            keep_mask[inds[nms(boxes[inds], scores[inds], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def top_k_per_image(order: Tensor, image_ids: Tensor, num_images: int, k: int) -> tuple[Tensor, list[int]]:
    """Regroup indices by image, keeping each image's first ``k``.

    Args:
        order: LongTensor[M] indices, in priority order (e.g. by decreasing score).
        image_ids: LongTensor[N] image of each indexed element.
        num_images: number of images B.
        k: at most this many per image.

    Returns:
        LongTensor[M'] the kept indices grouped by image (image 0 first), priority order
        within an image; and the per-image counts (list of B ints) to ``split`` with.
    """
    images, perm = torch.sort(image_ids[order], stable=True)
    order = order[perm]
    counts = torch.bincount(images, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[images]
    return order[rank < k], counts.clamp(max=k).tolist()


def batched_nms_per_image(boxes: Tensor, scores: Tensor, groups: Tensor, image_ids: Tensor, num_images: int,
                          iou_threshold: float, max_per_img: int) -> tuple[Tensor, list[int]]:
    """NMS within each group, then the ``max_per_img`` highest-scoring survivors of each image.

    Args:
        boxes: FloatTensor[N, 4] xyxy; scores: FloatTensor[N].
        groups: LongTensor[N] NMS group of each box (must not span images).
        image_ids: LongTensor[N] image of each box, 0..num_images-1.

    Returns:
        kept indices into the inputs grouped by image, decreasing score within an image,
        and the number kept per image.
    """
    keep = batched_nms(boxes, scores, groups, iou_threshold)  # decreasing score
    return top_k_per_image(keep, image_ids, num_images, max_per_img)
