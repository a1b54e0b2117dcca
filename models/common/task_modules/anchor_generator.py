"""Anchor boxes on a grid of feature-map locations (mmdetection semantics).

Per level with stride ``s`` and base size ``b`` (default ``b = s``), the base anchors are
centred at ``c`` and have, for every ratio ``r`` (= h / w) and scale ``k``,
``w = b * k / sqrt(r)`` and ``h = b * k * sqrt(r)``. Order of the A = len(ratios) *
len(scales) base anchors: ratio-major (``index = ratio_idx * len(scales) + scale_idx``),
mmdetection's ``scale_major=True``.

Centre conventions (a constructor argument, since mmdetection v1 and v2 differ):

- v2 (``legacy=False``): ``c = center_offset * b``; corners ``c -/+ w / 2``.
  ``center_offset=0.0`` is mmdetection v2's default (anchors centred on the top-left
  corner of their feature cell, in input pixels ``x * s``).
- v1 (``legacy=True``, mmdetection v1 / v2's ``LegacyAnchorGenerator``):
  ``c = center_offset * (b - 1)``, corners ``c -/+ (w - 1) / 2``, rounded. mmdetection v1 is
  ``legacy=True, center_offset=0.5``, i.e. centre ``(stride - 1) / 2`` and the "+1" width.

Grid anchors of a level are ordered (H, W, A): ``index = (y * W + x) * A + a``, matching a
head output of shape [B, A*k, H, W] permuted to [B, H, W, A*k].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Multi-level anchor generator.

    Args:
        strides: stride in input pixels of each level, e.g. (4, 8, 16, 32, 64).
        ratios: height / width ratios, e.g. (0.5, 1.0, 2.0).
        scales: anchor size multipliers of the base size, e.g. (8,).
        base_sizes: base size per level; ``None`` uses the strides.
        center_offset: centre of the base anchors as a fraction of the base size (v2) or
            of ``base_size - 1`` (legacy).
        legacy: mmdetection v1 "+1" anchors (see module doc).
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
        base_sizes: Sequence[float] | None = None,
        center_offset: float = 0.0,
        legacy: bool = False,
    ) -> None:
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(k) for k in scales]
        self.base_sizes = [float(b) for b in (base_sizes if base_sizes is not None else self.strides)]
        if len(self.base_sizes) != len(self.strides):
            raise ValueError("base_sizes and strides must have the same length")
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset must be in [0, 1], got {center_offset}")
        self.center_offset = float(center_offset)
        self.legacy = legacy
        self.base_anchors: list[Tensor] = [self._base_anchors(b) for b in self.base_sizes]
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> int:
        """A, the number of anchors per location (the same on every level)."""
        return len(self.ratios) * len(self.scales)

    def _base_anchors(self, base_size: float) -> Tensor:
        """FloatTensor[A, 4] (x1, y1, x2, y2) around the level's origin cell."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64, device="cpu")
        scales = torch.tensor(self.scales, dtype=torch.float64, device="cpu")
        h_ratios = ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
        if self.legacy:
            c = self.center_offset * (base_size - 1)
            anchors = torch.stack([c - 0.5 * (ws - 1), c - 0.5 * (hs - 1), c + 0.5 * (ws - 1), c + 0.5 * (hs - 1)], -1)
            anchors = anchors.round()
        else:
            c = self.center_offset * base_size
            anchors = torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], -1)
        return anchors.float()

    def single_level_grid_anchors(self, level: int, featmap_size: tuple[int, int],
                                  device: torch.device | str = "cpu") -> Tensor:
        """FloatTensor[H * W * A, 4] anchors of one level in input pixels, (H, W, A) order."""
        h, w = featmap_size
        stride = self.strides[level]
        shift_x = torch.arange(w, device=device, dtype=torch.float32) * stride
        shift_y = torch.arange(h, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        return (shifts + self.base_anchors[level].to(device)[None]).reshape(-1, 4)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]],
                     device: torch.device | str = "cpu") -> list[Tensor]:
        """Anchors of every level: list of FloatTensor[H_l * W_l * A, 4]. Cached per sizes/device."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature map sizes, got {len(featmap_sizes)}")
        key = (tuple((int(h), int(w)) for h, w in featmap_sizes), str(device))
        if key not in self._cache:
            if len(self._cache) >= 8:
                self._cache.clear()
            self._cache[key] = [
                self.single_level_grid_anchors(i, (int(h), int(w)), device) for i, (h, w) in enumerate(featmap_sizes)
            ]
        return self._cache[key]

    def valid_flags(self, featmap_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                    device: torch.device | str = "cpu") -> list[Tensor]:
        """Per level BoolTensor[H_l * W_l * A]: the anchor's feature location lies in the image.

        A location (y, x) of a level with stride s is valid when ``y < ceil(h / s)`` and
        ``x < ceil(w / s)`` for the unpadded ``image_size = (h, w)``; locations that only
        cover batch padding are invalid (mmdetection's ``valid_flags`` against the image's
        own extent).
        """
        img_h, img_w = image_size
        flags = []
        for level, (h, w) in enumerate(featmap_sizes):
            stride = self.strides[level]
            valid_h = min(int(math.ceil(img_h / stride)), int(h))
            valid_w = min(int(math.ceil(img_w / stride)), int(w))
            valid_y = torch.arange(int(h), device=device) < valid_h
            valid_x = torch.arange(int(w), device=device) < valid_w
            valid = valid_y[:, None] & valid_x[None, :]
            flags.append(valid[:, :, None].expand(int(h), int(w), self.num_base_anchors).reshape(-1))
        return flags


def anchor_inside_flags(anchors: Tensor, valid_flags: Tensor, image_size: tuple[int, int],
                        allowed_border: int = 0) -> Tensor:
    """BoolTensor[N]: valid anchors that lie within the image grown by ``allowed_border`` px.

    ``anchors``: FloatTensor[N, 4] xyxy; ``valid_flags``: BoolTensor[N]; ``image_size``:
    unpadded (h, w). A negative ``allowed_border`` disables the border test (mmdetection v2's
    RPN default -1); mmdetection v1 uses 0 (anchors crossing the border are ignored).
    """
    if allowed_border < 0:
        return valid_flags
    h, w = image_size
    return (
        valid_flags
        & (anchors[:, 0] >= -allowed_border)
        & (anchors[:, 1] >= -allowed_border)
        & (anchors[:, 2] < w + allowed_border)
        & (anchors[:, 3] < h + allowed_border)
    )
