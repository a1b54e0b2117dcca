"""Training and test transforms of a detection sample: rescale, horizontal flip, normalise.

mmdetection semantics (``Resize`` with ``keep_ratio``, ``RandomFlip``, ``Normalize``):

* ``scales`` are ``(long, short)`` edge pairs like mmdet's ``img_scale``. With
  ``keep_ratio`` the image is rescaled by ``min(long / max(h, w), short / min(h, w))`` so
  its long edge is <= ``long`` and its short edge <= ``short``; the new size is
  ``(int(w * s + 0.5), int(h * s + 0.5))`` and boxes are scaled by the realised
  per-axis factors ``(new_w / w, new_h / h)``. Without ``keep_ratio`` the image is
  resized to exactly ``w = long, h = short``.
* ``multiscale_mode="value"`` picks one of the scales; ``"range"`` (two scales) samples the
  long edge and the short edge uniformly (integers, inclusive) between them.
* Horizontal flip with probability ``flip_ratio``: ``x1' = W - x2``, ``x2' = W - x1``
  (continuous pixel coordinates, no ``-1``); ignore boxes and masks follow.
* Normalise ``(img - mean) / std`` with ``img`` in RGB 0..255 units.

The image is resized with cv2 bilinear interpolation, masks with nearest neighbour.
All randomness comes from the ``np.random.Generator`` the caller passes (the dataset seeds
it per sample and epoch), in a fixed order: scale, then flip.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
_CV_MAX_CHANNELS = 512


def rescale_size(w: int, h: int, long_edge: int, short_edge: int) -> tuple[int, int]:
    """mmcv ``rescale_size``: the (w, h) after keep-ratio scaling into ``long_edge x short_edge``."""
    scale = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * scale + 0.5), int(h * scale + 0.5)


def resize_masks(masks: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest-neighbour resize of masks uint8 [N, H, W] to [N, h, w]."""
    n = masks.shape[0]
    if n == 0:
        return np.zeros((0, h, w), dtype=masks.dtype)
    out = []
    for start in range(0, n, _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(masks[start : start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        r = cv2.resize(chunk, (w, h), interpolation=cv2.INTER_NEAREST)
        out.append(r[None] if r.ndim == 2 else r.transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(out, axis=0))


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Horizontally flip xyxy boxes [N, 4] in an image ``width`` pixels wide."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class DetectionTransforms:
    """Rescale, random horizontal flip and normalisation of one image with its targets.

    Args:
        scales: ``(long, short)`` edge pairs; empty keeps the original size.
        multiscale_mode: ``"value"`` (pick one scale) or ``"range"`` (sample between two).
        flip_ratio: probability of a horizontal flip.
        mean, std: per-channel RGB normalisation in 0..255 units.
        keep_ratio: keep the aspect ratio (mmdet default) or resize to exactly (long, short).
    """

    def __init__(
        self,
        scales: Sequence[Sequence[int]] = (),
        multiscale_mode: str = "value",
        flip_ratio: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        keep_ratio: bool = True,
    ) -> None:
        if any(len(s) != 2 for s in scales):
            raise ValueError(f"each scale must be a (long, short) pair, got {list(scales)}")
        self.scales: list[tuple[int, int]] = [(int(max(s)), int(min(s))) for s in scales]
        if multiscale_mode not in ("value", "range"):
            raise ValueError(f"multiscale_mode must be 'value' or 'range', got {multiscale_mode!r}")
        if multiscale_mode == "range" and len(self.scales) != 2:
            raise ValueError(f"multiscale_mode 'range' needs exactly two scales, got {self.scales}")
        if not 0.0 <= flip_ratio <= 1.0:
            raise ValueError(f"flip_ratio must be in [0, 1], got {flip_ratio}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.multiscale_mode = multiscale_mode
        self.flip_ratio = float(flip_ratio)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.keep_ratio = keep_ratio

    def __repr__(self) -> str:
        return (
            f"DetectionTransforms(scales={self.scales}, multiscale_mode={self.multiscale_mode!r}, "
            f"flip_ratio={self.flip_ratio}, mean={self.mean.tolist()}, std={self.std.tolist()}, "
            f"keep_ratio={self.keep_ratio})"
        )

    def sample_scale(self, rng: np.random.Generator) -> tuple[int, int] | None:
        """The ``(long, short)`` target scale for one sample, or None to keep the size."""
        if not self.scales:
            return None
        if self.multiscale_mode == "range":
            longs = [s[0] for s in self.scales]
            shorts = [s[1] for s in self.scales]
            return int(rng.integers(min(longs), max(longs) + 1)), int(rng.integers(min(shorts), max(shorts) + 1))
        return self.scales[int(rng.integers(len(self.scales)))]

    def __call__(
        self, image: np.ndarray, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Transform one sample.

        Args:
            image: uint8 [H0, W0, 3], RGB.
            target: ``boxes`` float32 [N, 4] and ``ignore_boxes`` float32 [M, 4] (xyxy pixels
                of the original image), optional ``masks`` uint8 [N, H0, W0]; other keys
                pass through unchanged.
            rng: source of the random scale and flip.

        Returns:
            image float32 [3, H, W] normalised, and the target with ``boxes`` FloatTensor [N, 4]
            and ``ignore_boxes`` FloatTensor [M, 4] (xyxy pixels of the output image, clipped
            to it), ``masks`` UInt8Tensor [N, H, W] if given, ``img_size`` (H, W),
            ``scale_factor`` FloatTensor [2] = (sx, sy) original -> output, ``flipped`` bool.
        """
        h0, w0 = image.shape[:2]
        scale = self.sample_scale(rng)
        flipped = bool(rng.random() < self.flip_ratio)

        if scale is None:
            w, h = w0, h0
        elif self.keep_ratio:
            w, h = rescale_size(w0, h0, scale[0], scale[1])
        else:
            w, h = scale
        if (w, h) != (w0, h0):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        sx, sy = w / w0, h / h0
        factor = np.array([sx, sy, sx, sy], np.float32)
        limit = np.array([w, h, w, h], np.float32)

        out = dict(target)
        boxes = {}
        for key in ("boxes", "ignore_boxes"):
            b = np.asarray(target.get(key, np.zeros((0, 4), np.float32)), np.float32).reshape(-1, 4)
            b = np.clip(b * factor, 0.0, limit)
            boxes[key] = flip_boxes(b, w) if flipped else b
        masks = target.get("masks")
        if masks is not None:
            masks = np.asarray(masks, np.uint8)
            if (w, h) != (w0, h0):
                masks = resize_masks(masks, w, h)
            if flipped:
                masks = masks[:, :, ::-1]
            out["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        if flipped:
            image = image[:, ::-1]

        img = (image.astype(np.float32) - self.mean) / self.std
        out["boxes"] = torch.from_numpy(boxes["boxes"])
        out["ignore_boxes"] = torch.from_numpy(boxes["ignore_boxes"])
        out["img_size"] = (h, w)
        out["scale_factor"] = torch.tensor([sx, sy], dtype=torch.float32)
        out["flipped"] = flipped
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), out
