"""Batching of detection samples: pad images to a common, divisible size."""
from __future__ import annotations

import math
from typing import Any

import torch


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]]], size_divisor: int = 32
) -> tuple[torch.Tensor, list[tuple[int, int]], list[dict[str, Any]]]:
    """Stack ``(image, target)`` samples into a padded batch.

    Args:
        batch: samples from :class:`~pipeline.data.dataset.CocoDetectionDataset`, images
            FloatTensor [3, H_i, W_i].
        size_divisor: the padded height and width are multiples of it (<= 1: no rounding).

    Returns:
        images FloatTensor [B, 3, Hp, Wp], each image at the top-left and zeros (the
        normalised mean colour) at the bottom/right, Hp/Wp = max H_i/W_i rounded up to a
        multiple of ``size_divisor``; image_sizes [(H_i, W_i)] before padding; targets as
        given (masks stay [N, H_i, W_i]).
    """
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images = [img for img, _ in batch]
    targets = [t for _, t in batch]
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    hp = max(h for h, _ in sizes)
    wp = max(w for _, w in sizes)
    if size_divisor > 1:
        hp = int(math.ceil(hp / size_divisor) * size_divisor)
        wp = int(math.ceil(wp / size_divisor) * size_divisor)
    out = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))
    for i, img in enumerate(images):
        out[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return out, sizes, targets
