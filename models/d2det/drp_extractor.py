"""D2Det's discriminative RoI pooling (DRP, spec d2det.md §2): per-level deformable RoI
pooling with a light-weight offset predictor followed by adaptive weighted pooling.

Reproduced mmdet v1 / official D2Det behaviours:

- RoIs are FloatTensor[K, 5] rows ``(batch_index, x1, y1, x2, y2)`` in input pixels; they
  reach the pooling op unmodified (no ``roi_scale_factor``), and the op applies the v1
  ``deform_psroi_pooling`` conventions itself (``round(x)*s - 0.5``, end ``+1``, bin-start
  sampling, see :mod:`cuda_ops.deform_roi_pool`).
- Level mapping as ``SingleRoIExtractor.map_roi_levels`` in v1: ``scale =
  sqrt((x2 - x1 + 1) * (y2 - y1 + 1))``, ``level = floor(log2(scale / finest_scale + 1e-6))``
  clamped to ``0 .. num_levels - 1``.
- One ``DeformRoIPoolingPack`` (offset FCs + AWPool) per FPN level; weights not shared.
- Coarse pooling without offsets (``no_trans``): 3x3 bins, ``part_size=3``; flattened
  channel-major to ``C*9``.
- ``offset_fc``: Linear(C*9 -> 1024) -> ReLU -> Linear(1024 -> 1024) -> ReLU ->
  Linear(1024 -> 98); the last Linear's weight and bias are zero, the others keep PyTorch's
  default init (v1's ``SingleRoIExtractor.init_weights`` is a no-op).
- The 98 outputs are reshaped to (N, 2, 7, 7) (channel 0 = x, 1 = y) and nearest-upsampled
  x2 to (N, 2, 14, 14); fine deformable pooling 14x14, ``part_size=14``, ``trans_std``.
- AWPool: ``W = exp(12 * sigmoid(IN(conv3x3(F))))`` (conv bias-free, zero-initialised;
  InstanceNorm2d affine), ``out = avg_pool3x3,s2,p1(F*W) / avg_pool3x3,s2,p1(W)``.
- Output allocated as (K, C, out_size, out_size); RoIs of a level are written in place.

Deviation (not in v1): in training, a level that receives no RoI adds ``0 * sum`` of its
feature map and its parameters to the output so every parameter stays in the graph (DDP).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cuda_ops.deform_roi_pool import deform_roi_pool
from models.common.roi_heads.roi_extractor import map_roi_levels

__all__ = ["AdaptiveWeightedPool", "DeformRoIPoolingPack", "DiscriminativeRoIExtractor"]

AWPOOL_COEFF = 12.0  # "SoftGate" coefficient of the official code


class AdaptiveWeightedPool(nn.Module):
    """AWPool: normalised, learned-weight 3x3 / stride-2 pooling (LIP-style).

    ``W = exp(12 * sigmoid(InstanceNorm2d(conv3x3(F))))`` (per channel and position), then
    ``out = avg_pool2d(F * W, 3, 2, 1) / avg_pool2d(W, 3, 2, 1)``.

    At initialisation the conv is zero, so W is uniform and the layer is a plain 3x3/s2/p1
    mean over the *valid* (in-image) positions of each window: the zero padding enters
    numerator and denominator alike, which equals ``avg_pool2d(..., count_include_pad=False)``.

    Args:
        channels: C.

    Forward:
        FloatTensor[N, C, H, W] (D2Det: 14x14) -> FloatTensor[N, C, ceil(H/2), ceil(W/2)]
        (7x7); same units as the input.
    """

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.logit = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        nn.init.zeros_(self.logit.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:
            return F.avg_pool2d(x, 3, 2, 1) + 0.0 * sum(p.sum() for p in self.parameters())
        weight = torch.exp(AWPOOL_COEFF * torch.sigmoid(self.norm(self.logit(x))))
        return F.avg_pool2d(x * weight, 3, 2, 1) / F.avg_pool2d(weight, 3, 2, 1)


class DeformRoIPoolingPack(nn.Module):
    """One FPN level of DRP: coarse pool -> offset FCs -> fine deformable pool -> AWPool.

    Args:
        spatial_scale: ``1 / stride`` of the level.
        in_channels: C.
        out_size: final output size (7); the fine pool is ``2 * out_size``.
        sample_per_part: samples per bin side (2 for R50, 1 for R101 presets).
        trans_std: offset scale of the fine pool.
        offset_fc_channels: width of the hidden offset FCs.
        coarse_size: size of the offset-free coarse pool (3).

    Forward:
        ``features`` FloatTensor[B, C, H, W], ``rois`` FloatTensor[N, 5] (input pixels) ->
        FloatTensor[N, C, out_size, out_size].
    """

    def __init__(self, spatial_scale: float, in_channels: int = 256, out_size: int = 7,
                 sample_per_part: int = 2, trans_std: float = 0.1, offset_fc_channels: int = 1024,
                 coarse_size: int = 3) -> None:
        super().__init__()
        self.spatial_scale = float(spatial_scale)
        self.out_size = int(out_size)
        self.fine_size = 2 * self.out_size
        self.coarse_size = int(coarse_size)
        self.sample_per_part = int(sample_per_part)
        self.trans_std = float(trans_std)
        last = nn.Linear(offset_fc_channels, 2 * self.out_size * self.out_size)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.offset_fc = nn.Sequential(
            nn.Linear(in_channels * self.coarse_size * self.coarse_size, offset_fc_channels),
            nn.ReLU(inplace=True),
            nn.Linear(offset_fc_channels, offset_fc_channels),
            nn.ReLU(inplace=True),
            last,
        )
        self.awpool = AdaptiveWeightedPool(in_channels)

    def predict_offsets(self, features: Tensor, rois: Tensor) -> Tensor:
        """FloatTensor[N, 2, 2*out_size, 2*out_size] normalised offsets (x, y) of the fine pool."""
        n = rois.shape[0]
        coarse = deform_roi_pool(features, rois, None, self.spatial_scale, self.coarse_size,
                                 self.coarse_size, self.sample_per_part, self.trans_std)
        offsets = self.offset_fc(coarse.reshape(n, -1)).reshape(n, 2, self.out_size, self.out_size)
        return F.interpolate(offsets, scale_factor=2, mode="nearest")

    def fine_pool(self, features: Tensor, rois: Tensor) -> Tensor:
        """FloatTensor[N, C, 2*out_size, 2*out_size]: the deformable pool before AWPool."""
        offsets = self.predict_offsets(features, rois)
        return deform_roi_pool(features, rois, offsets, self.spatial_scale, self.fine_size,
                               self.fine_size, self.sample_per_part, self.trans_std)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return self.awpool(self.fine_pool(features, rois))


class DiscriminativeRoIExtractor(nn.Module):
    """DRP over an FPN: each RoI is pooled by the :class:`DeformRoIPoolingPack` of its level.

    Args:
        featmap_strides: strides of the levels used, e.g. (4, 8, 16, 32).
        in_channels: C of every level (256).
        out_size: output size (7).
        sample_per_part: 2 (R50 preset) or 1 (R101 / instance presets).
        trans_std: fine-pool offset scale (0.1).
        finest_scale: level-mapping scale (56).
        offset_fc_channels: hidden width of the offset FCs (1024).

    Forward:
        ``features``: list of FloatTensor[B, C, H_l, W_l] (at least ``len(featmap_strides)``);
        ``rois``: FloatTensor[K, 5] ``(batch_index, x1, y1, x2, y2)`` in input pixels ->
        FloatTensor[K, C, out_size, out_size].
    """

    def __init__(self, featmap_strides: Sequence[int], in_channels: int = 256, out_size: int = 7,
                 sample_per_part: int = 2, trans_std: float = 0.1, finest_scale: float = 56.0,
                 offset_fc_channels: int = 1024) -> None:
        super().__init__()
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.in_channels = int(in_channels)
        self.out_size = int(out_size)
        self.finest_scale = float(finest_scale)
        self.levels = nn.ModuleList([
            DeformRoIPoolingPack(1.0 / s, in_channels, out_size, sample_per_part, trans_std,
                                 offset_fc_channels)
            for s in self.featmap_strides
        ])

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        """LongTensor[K]: 0-based level of each RoI (mmdet v1 mapping with the legacy +1)."""
        return map_roi_levels(rois, self.finest_scale, self.num_levels, offset=1.0)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        feats = features[: self.num_levels]
        if len(feats) < self.num_levels:
            raise ValueError(f"DiscriminativeRoIExtractor needs {self.num_levels} levels, got {len(feats)}")
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], self.out_size, self.out_size))
        levels = self.map_roi_levels(rois)
        rois = rois.float()
        for level, (feat, module) in enumerate(zip(feats, self.levels)):
            inds = torch.nonzero(levels == level).squeeze(1)
            if inds.numel() > 0:
                out[inds] = module(feat, rois[inds]).to(out.dtype)
            elif self.training:
                # keep this level's features and parameters in the graph (DDP)
                out = out + 0.0 * (feat.sum() + sum(p.sum() for p in module.parameters()))
        return out
