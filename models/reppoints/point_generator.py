"""Prior points on a grid of feature-map locations (RepPoints family, spec reppoints.md).

Per level with stride ``s``, the feature cell at row ``i``, column ``j`` maps to the input
image point ``(x, y) = (j * s, i * s)``: the top-left corner of the cell, **no half-stride
offset** (RPv2 repo ``mmdet/core/anchor/point_generator.py``; spec "Conventions" and §8.1).
Each point is returned as ``(x, y, stride)`` so that assigners can recover its level from
``log2(stride)``.

Points of a level are ordered row-major, ``index = i * W + j``, matching a head output of
shape [B, k, H, W] permuted to [B, H, W, k] and flattened.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class PointGenerator:
    """Multi-level prior-point generator.

    Args:
        strides: stride in input pixels of each level, e.g. (8, 16, 32, 64, 128) for P3-P7.
    """

    def __init__(self, strides: Sequence[int]) -> None:
        self.strides = [int(s) for s in strides]
        if any(s <= 0 for s in self.strides):
            raise ValueError(f"strides must be positive, got {self.strides}")

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def single_level_grid_points(self, level: int, featmap_size: tuple[int, int],
                                 device: torch.device | str = "cpu") -> Tensor:
        """FloatTensor[H * W, 3]: ``(x, y, stride)`` of every cell of one level, x/y in input pixels.

        Row-major order: point ``i * W + j`` is ``(j * s, i * s, s)``.
        """
        h, w = int(featmap_size[0]), int(featmap_size[1])
        stride = self.strides[level]
        xs = torch.arange(w, device=device, dtype=torch.float32) * stride
        ys = torch.arange(h, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        ss = torch.full_like(xx, float(stride))
        return torch.stack([xx, yy, ss], dim=-1).reshape(-1, 3)

    def grid_points(self, featmap_sizes: Sequence[tuple[int, int]],
                    device: torch.device | str = "cpu") -> list[Tensor]:
        """Points of every level: list of FloatTensor[H_l * W_l, 3] ``(x, y, stride)``."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature map sizes, got {len(featmap_sizes)}")
        return [self.single_level_grid_points(i, size, device) for i, size in enumerate(featmap_sizes)]

    def valid_flags(self, featmap_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                    device: torch.device | str = "cpu") -> list[Tensor]:
        """Per level BoolTensor[H_l * W_l]: the cell lies inside an image of ``image_size``.

        A cell (i, j) of a level with stride s is valid when ``i < ceil(h / s)`` and
        ``j < ceil(w / s)`` for ``image_size = (h, w)`` (input pixels). The RPv2 repo passes
        the image's ``pad_shape`` here (spec §1.3 [FLAG]): only cells covering the *batch*
        padding beyond the image's own padded size are invalid. Pass the unpadded
        ``img_shape`` instead to also drop cells over the per-image padding.
        """
        img_h, img_w = int(image_size[0]), int(image_size[1])
        flags = []
        for level, (h, w) in enumerate(featmap_sizes):
            h, w = int(h), int(w)
            stride = self.strides[level]
            valid_h = min(int(math.ceil(img_h / stride)), h)
            valid_w = min(int(math.ceil(img_w / stride)), w)
            valid_y = torch.arange(h, device=device) < valid_h
            valid_x = torch.arange(w, device=device) < valid_w
            flags.append((valid_y[:, None] & valid_x[None, :]).reshape(-1))
        return flags
