"""NMS over a batch of images in one call, keeping the best ``k`` boxes of each image.

A thin wrapper over :func:`torchvision.ops.batched_nms`: boxes of different groups (e.g.
image x level for proposals, image x class for detections) never suppress each other.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms


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
