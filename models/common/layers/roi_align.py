"""RoIAlign with a fast CPU path for small feature maps.

torchvision's CPU ``roi_align`` backward is a single-threaded scatter loop: at the CPU
scale (1024 RoIs on a 20x32 P3 map, 64 channels) it costs ~150 ms per training iteration,
about a third of the whole step. This module computes exactly the same function as
``torchvision.ops.roi_align`` (same sample positions, the same border rules, the same
average) as two dense matrix products, whose forward and backward run on BLAS:

Every sample's bilinear weight factorises into a row part and a column part, and so does
the average over a bin's ``gh x gw`` sample grid, so for RoI k the pooled output is::

    out[k, c] = Wy[k] @ F[b_k, c] @ Wx[k].T        Wy[k]: [S, H], Wx[k]: [S, W]

with ``Wy[k, p, r]`` the mean over the bin's samples of their row-interpolation weight on
feature row r (zero for samples outside ``[-1, H]``), likewise ``Wx``. Its cost grows with
the map (``C * S * H * (W + S)`` per RoI) while the kernel's grows with the samples
(``C * S^2 * gh * gw``), so :func:`roi_align` picks the dense form on CPU when a measured
cost model says it is cheaper (small maps, e.g. every level at the CPU scale and the
coarse levels at the paper scale) and torchvision's kernel otherwise (always on GPU).
Matches torchvision to float rounding, forward and gradient (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

# Cost model, calibrated on a 2-core CPU (torch 2.14, torchvision 0.29) over maps of 5x8 ..
# 64x64, 64 and 256 channels and 1 .. 14 samples per bin side: with
#     units = H * (W + S) / (S * mean(gh * gw)),
# the dense form is faster in training (forward + backward) up to ~200 units (at 20 units
# it is 5-15x faster), and in inference for >= 2x2 samples per bin up to ~20 units.
DENSE_UNITS_TRAIN = 200.0
DENSE_UNITS_INFER = 20.0
# Largest intermediate of the dense form, in elements (RoIs are processed in chunks).
DENSE_CHUNK_ELEMENTS = 1 << 24


def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, size: int, output_size: int) -> Tensor:
    """FloatTensor[K, S, size]: per output bin, the mean interpolation weight on each feature
    row (or column), following torchvision's sample placement and border handling.

    ``start``, ``bin_size``: FloatTensor[K] in feature pixels (after the aligned offset);
    ``grid``: LongTensor[K] samples per bin along this axis (0 allowed: no samples).
    """
    k = start.shape[0]
    gmax = max(int(grid.max()) if k else 1, 1)
    p = torch.arange(output_size, device=start.device, dtype=start.dtype)
    i = torch.arange(gmax, device=start.device, dtype=start.dtype)
    g = grid.clamp(min=1).to(start.dtype)
    coord = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
             + (i[None, None, :] + 0.5) * (bin_size / g)[:, None, None])  # [K, S, G]
    weight = ((coord >= -1.0) & (coord <= size) & (i[None, None, :] < grid[:, None, None])).to(start.dtype)
    weight = weight / g[:, None, None]
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    out = start.new_zeros((k, output_size, size))
    out.scatter_add_(2, low, (1.0 - frac) * weight)
    out.scatter_add_(2, high, frac * weight)
    return out


def roi_align_dense(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                    sampling_ratio: int = 0, aligned: bool = True) -> Tensor:
    """``torchvision.ops.roi_align`` computed as matrix products (see module doc).

    ``features``: FloatTensor[B, C, H, W]; ``rois``: FloatTensor[K, 5] (batch index, x1, y1,
    x2, y2) in input pixels -> FloatTensor[K, C, S, S]. Differentiable w.r.t. ``features``
    only (as torchvision's op).
    """
    b, c, h, w = features.shape
    s = int(output_size)
    k = rois.shape[0]
    out = features.new_zeros((k, c, s, s))
    if k == 0:
        return out
    with torch.no_grad():
        r = rois.detach().to(torch.promote_types(rois.dtype, torch.float32))
        offset = 0.5 if aligned else 0.0
        x1 = r[:, 1] * spatial_scale - offset
        y1 = r[:, 2] * spatial_scale - offset
        roi_w = r[:, 3] * spatial_scale - offset - x1
        roi_h = r[:, 4] * spatial_scale - offset - y1
        if not aligned:
            roi_w = roi_w.clamp(min=1.0)
            roi_h = roi_h.clamp(min=1.0)
        bin_w, bin_h = roi_w / s, roi_h / s
        if sampling_ratio > 0:
            grid_w = torch.full((k,), sampling_ratio, dtype=torch.long, device=rois.device)
            grid_h = grid_w
        else:
            grid_w = torch.ceil(roi_w / s).long()
            grid_h = torch.ceil(roi_h / s).long()
        wx = _axis_weights(x1, bin_w, grid_w, w, s).to(features.dtype)  # [K, S, W]
        wy = _axis_weights(y1, bin_h, grid_h, h, s).to(features.dtype)  # [K, S, H]
        image_ids = r[:, 0].long()
    chunk = max(1, DENSE_CHUNK_ELEMENTS // max(c * h * s, 1))
    for i in range(b):
        image_inds = torch.nonzero(image_ids == i).squeeze(1)
        for inds in image_inds.split(chunk):
            n = inds.numel()
            if n == 0:
                continue
            # Columns: [C*H, W] @ [W, n*S] -> [C*H, n*S]; then rows per RoI (batched product).
            t = features[i].reshape(c * h, w) @ wx[inds].reshape(n * s, w).t()
            t = t.reshape(c, h, n, s).permute(2, 1, 0, 3).reshape(n, h, c * s)
            o = torch.bmm(wy[inds], t)  # [n, S(y), C*S(x)]
            out[inds] = o.reshape(n, s, c, s).permute(0, 2, 1, 3)
    return out


def _samples_per_bin(rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> float:
    """Mean ``gh * gw`` over the RoIs (torchvision's adaptive rule when sampling_ratio is 0)."""
    if sampling_ratio > 0:
        return float(sampling_ratio * sampling_ratio)
    wh = (rois[:, 3:5] - rois[:, 1:3]).detach() * spatial_scale / output_size
    return float(torch.ceil(wh.clamp(min=0)).prod(dim=1).mean()) if rois.shape[0] else 1.0


def use_dense(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> bool:
    """Whether the dense form is expected to be faster for this call (CPU only)."""
    if features.device.type != "cpu" or rois.shape[0] == 0:
        return False
    h, w = features.shape[-2:]
    g2 = max(_samples_per_bin(rois, output_size, spatial_scale, sampling_ratio), 1.0)
    units = h * (w + output_size) / (output_size * g2)
    if torch.is_grad_enabled() and features.requires_grad:
        return units <= DENSE_UNITS_TRAIN
    return g2 >= 4.0 and units <= DENSE_UNITS_INFER


def roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int = 0,
              aligned: bool = True) -> Tensor:
    """RoIAlign with torchvision's semantics, on the faster of the two implementations
    (:func:`use_dense`). Shapes as :func:`roi_align_dense`."""
    if use_dense(features, rois, output_size, spatial_scale, sampling_ratio):
        return roi_align_dense(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if features.dtype != rois.dtype:  # half-precision features: pool in float32, as autocast would
        out = tv_roi_align(features.float(), rois.float(), output_size, spatial_scale=spatial_scale,
                           sampling_ratio=sampling_ratio, aligned=aligned)
        return out.to(features.dtype)
    return tv_roi_align(features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                        aligned=aligned)
