"""Pooling fixed-size RoI features from the pyramid level that matches each RoI's size.

Level mapping (mmdetection's ``SingleRoIExtractor.map_roi_levels``)::

    scale = sqrt(w * h)
    level = floor(log2(scale / finest_scale + 1e-6)), clamped to 0 .. num_levels - 1

so with ``finest_scale=56`` RoIs under 112 px go to the first level, 112-224 to the
second, 224-448 to the third and larger ones to the last. Over P2-P5 this is the FPN
paper's ``floor(4 + log2(scale / 224))`` that torchvision's ``MultiScaleRoIAlign`` uses.

RoIs are FloatTensor[K, 5] rows ``(batch_index, x1, y1, x2, y2)`` in input pixels.
Pooling is torchvision's RoIAlign, through :func:`models.common.layers.roi_align.roi_align`, which
on CPU switches to an exact matrix-product form where that is faster.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.common.layers.roi_align import roi_align


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image FloatTensor[K_i, 4] -> FloatTensor[sum K_i, 5] with the image index first."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois) if rois else torch.zeros((0, 5), device="cpu")


def map_roi_levels(rois: Tensor, finest_scale: float, num_levels: int, offset: float = 0.0) -> Tensor:
    """mmdetection's RoI-to-level mapping: ``floor(log2(sqrt(w*h) / finest_scale + 1e-6))``.

    Args:
        rois: FloatTensor[K, 5] (batch index, x1, y1, x2, y2) in input pixels.
        finest_scale: RoIs smaller than ``2 * finest_scale`` go to level 0.
        num_levels: levels are clamped to ``0 .. num_levels - 1``.
        offset: added to widths and heights (1.0 for mmdet v1's "+1" convention).
    Returns:
        LongTensor[K] of 0-based level indices.
    """
    w = rois[:, 3] - rois[:, 1] + offset
    h = rois[:, 4] - rois[:, 2] + offset
    scale = torch.sqrt((w * h).clamp(min=0))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class SingleRoIExtractor(nn.Module):
    """RoIAlign each RoI on one pyramid level chosen by its scale.

    Args:
        featmap_strides: strides of the levels pooled from (the first ``len`` pyramid
            outputs are used), e.g. (4, 8, 16, 32).
        output_size: pooled size S (S x S).
        sampling_ratio: bilinear samples per bin side; 0 = adaptive ``ceil(bin size)``.
        aligned: half-pixel-corrected RoIAlign (Detectron2 / mmdetection v2); ``False`` is
            the original (mmdetection v1) RoIAlign.
        finest_scale: scale mapped to the boundary of the first and second levels / 2.
        legacy_plus_one: mmdetection v1 boxes: ``w = x2 - x1 + 1`` in the level mapping and
            the RoI end extended by one pixel when pooling.

    Forward:
        ``features``: list of FloatTensor[B, C, H_l, W_l] (at least ``len(featmap_strides)``);
        ``rois``: FloatTensor[K, 5] -> FloatTensor[K, C, S, S].
    """

    def __init__(
        self,
        featmap_strides: Sequence[int],
        output_size: int = 7,
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: float = 56.0,
        legacy_plus_one: bool = False,
    ) -> None:
        super().__init__()
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned
        self.finest_scale = float(finest_scale)
        self.offset = 1.0 if legacy_plus_one else 0.0

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        """LongTensor[K]: pyramid level index (0-based) of each RoI."""
        return map_roi_levels(rois, self.finest_scale, self.num_levels, self.offset)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        feats = features[: self.num_levels]
        if len(feats) < self.num_levels:
            raise ValueError(f"SingleRoIExtractor needs {self.num_levels} feature levels, got {len(feats)}")
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], self.output_size, self.output_size))
        levels = self.map_roi_levels(rois)
        if self.offset:
            rois = torch.cat([rois[:, :3], rois[:, 3:5] + self.offset], dim=1)
        rois = rois.float()  # full-precision coordinates even for half-precision features
        for level, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):
            inds = torch.nonzero(levels == level).squeeze(1)
            if inds.numel() > 0:
                out[inds] = roi_align(feat, rois[inds], self.output_size, spatial_scale=1.0 / stride,
                                      sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            elif self.training:
                # Keep every level in the graph so DDP sees gradients for all parameters.
                out = out + feat.sum() * 0.0
        return out
