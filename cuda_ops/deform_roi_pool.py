"""Deformable RoI pooling as mmdet v1's ``deform_psroi_pooling`` kernel, with ``group_size=1``
(not position-sensitive), the way D2Det's discriminative RoI pooling uses it (spec d2det.md
§2.2). Pure PyTorch, CPU or GPU, autograd to the features and the offsets.

For RoI ``n = (b, x1, y1, x2, y2)`` (input pixels), scale ``s``, output ``P x P``, part size
``Q``, ``S`` samples per bin side and offsets ``T``, everything in feature-map pixels:

- ``roi_start_w = round(x1)*s - 0.5``, ``roi_end_w = (round(x2)+1)*s - 0.5`` (C ``round``:
  half away from zero), ``roi_w = max(roi_end_w - roi_start_w, 0.1)``; likewise for h;
- ``bin_w = roi_w/P``, ``sub_w = bin_w/S``; ``part_w = floor(pw/P*Q)``;
- ``tx = T[n, 0, part_h, part_w] * trans_std`` (``ty`` from channel 1; 0 without offsets);
- ``wstart = pw*bin_w + roi_start_w + tx*roi_w``; samples ``w = wstart + iw*sub_w``,
  ``iw = 0..S-1`` (the bin's left edge first, not centred);
- a sample with ``w < -0.5``, ``w > W-0.5``, ``h < -0.5`` or ``h > H-0.5`` is skipped;
  otherwise it is clamped to ``[0, W-1] x [0, H-1]`` and bilinearly interpolated between its
  ``floor`` and ``ceil`` neighbours;
- output = mean over the bin's valid samples, 0 if none.

Gradients match the CUDA backward: to the features, the bilinear weights / count; to the
offsets, ``d/dtx = (bilinear x-derivative at the clamped point) * trans_std * roi_w``. The
kernel differentiates as if the clamp were the identity, so this reference uses a
straight-through clamp; a clamped sample sits on an integer row/column, where ``floor ==
ceil`` makes that derivative 0 in the kernel and here alike. None flows to the RoIs.

Implementation: every bin is a bag of ``4*S*S`` (pixel, weight) pairs (corner pixel index
into the flattened channel-last feature map; bilinear weight times validity / count), and
``F.embedding_bag(mode="sum", per_sample_weights=...)`` reduces them, so the
``[N*P*P*S*S*4, C]`` tensor of gathered corners is never materialised; its backward gives
the feature gradient and the per-weight gradient, from which autograd reaches the offsets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["deform_roi_pool", "DeformRoIPool"]


def _round_half_away(x: Tensor) -> Tensor:
    """C/C++ ``round``: halves go away from zero (``torch.round`` rounds half to even)."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def deform_roi_pool(
    features: Tensor,
    rois: Tensor,
    offsets: Tensor | None,
    spatial_scale: float,
    output_size: int,
    part_size: int,
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    """Deformable RoI pooling (mmdet v1 ``deform_psroi_pooling``, ``group_size=1``).

    Args:
        features: ``[B, C, H, W]`` float feature map.
        rois: ``[N, 5]`` rows ``(batch_idx, x1, y1, x2, y2)`` in input-image pixels.
        offsets: ``[N, 2, Q, Q]`` normalised offsets (channel 0: x, channel 1: y; in units of
            RoI width/height divided by ``trans_std``), or ``None`` for no deformation.
        spatial_scale: feature pixels per input pixel (``1/stride``).
        output_size: ``P``, the output is ``P x P`` bins.
        part_size: ``Q``, the offset grid size; bin ``p`` reads part ``floor(p/P*Q)``.
        sample_per_part: ``S``, samples per bin side (``S x S`` per bin).
        trans_std: scale applied to the offsets.

    Returns:
        ``[N, C, P, P]`` pooled features, dtype of ``features``; differentiable w.r.t.
        ``features`` and ``offsets`` (not ``rois``).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N, 5], got {tuple(rois.shape)}")
    B, C, H, W = features.shape
    N = rois.shape[0]
    P, Q, S = int(output_size), int(part_size), int(sample_per_part)
    if offsets is not None and (offsets.dim() != 4 or offsets.shape[0] != N
                                or offsets.shape[1] != 2 or offsets.shape[2] != Q
                                or offsets.shape[3] != Q):
        raise ValueError(f"offsets must be [N, 2, {Q}, {Q}], got {tuple(offsets.shape)}")
    dtype, device = features.dtype, features.device
    if N == 0:
        return features.new_zeros((0, C, P, P))

    r = rois.detach().to(dtype)
    batch = r[:, 0].long()
    scale = torch.tensor(spatial_scale, dtype=dtype, device=device)
    start_w = _round_half_away(r[:, 1]) * scale - 0.5  # [N]
    start_h = _round_half_away(r[:, 2]) * scale - 0.5
    end_w = (_round_half_away(r[:, 3]) + 1.0) * scale - 0.5
    end_h = (_round_half_away(r[:, 4]) + 1.0) * scale - 0.5
    roi_w = torch.clamp(end_w - start_w, min=0.1)
    roi_h = torch.clamp(end_h - start_h, min=0.1)
    bin_w, bin_h = roi_w / P, roi_h / P
    sub_w, sub_h = bin_w / S, bin_h / S

    p = torch.arange(P, device=device, dtype=dtype)  # bin index, as T
    s_idx = torch.arange(S, device=device, dtype=dtype)
    # bin origins [N, P] (before offsets): pw*bin_w + roi_start_w
    wstart = p[None, :] * bin_w[:, None] + start_w[:, None]
    hstart = p[None, :] * bin_h[:, None] + start_h[:, None]
    wstart = wstart[:, None, :].expand(N, P, P)  # [N, ph, pw]
    hstart = hstart[:, :, None].expand(N, P, P)
    if offsets is not None:
        part = torch.floor(p / P * Q).long().clamp(max=Q - 1)  # [P]
        off = offsets.to(dtype)[:, :, part][:, :, :, part]  # [N, 2, ph, pw]
        tx = off[:, 0] * trans_std
        ty = off[:, 1] * trans_std
        wstart = wstart + tx * roi_w[:, None, None]
        hstart = hstart + ty * roi_h[:, None, None]
    # sample coordinates [N, ph, pw, ih, iw]
    ws = wstart[:, :, :, None, None] + (s_idx[None, :] * sub_w[:, None])[:, None, None, None, :]
    hs = hstart[:, :, :, None, None] + (s_idx[None, :] * sub_h[:, None])[:, None, None, :, None]
    ws, hs = torch.broadcast_tensors(ws, hs)

    valid = (ws >= -0.5) & (ws <= W - 0.5) & (hs >= -0.5) & (hs <= H - 0.5)
    count = valid.sum(dim=(3, 4), keepdim=True).to(dtype)
    norm = valid.to(dtype) / count.clamp(min=1.0)  # [N, P, P, S, S]

    # straight-through clamp: forward value clamp(w), gradient as if identity (CUDA kernel)
    wd, hd = ws.detach(), hs.detach()
    wc = wd.clamp(0.0, W - 1.0) + (ws - wd)
    hc = hd.clamp(0.0, H - 1.0) + (hs - hd)
    x0 = torch.floor(wc.detach())
    y0 = torch.floor(hc.detach())
    x1 = torch.ceil(wc.detach())
    y1 = torch.ceil(hc.detach())
    dx = wc - x0
    dy = hc - y0

    base = (batch * (H * W))[:, None, None, None, None]
    x0l, x1l, y0l, y1l = x0.long(), x1.long(), y0.long(), y1.long()
    idx = torch.stack([base + y0l * W + x0l, base + y1l * W + x0l,
                       base + y0l * W + x1l, base + y1l * W + x1l], dim=-1)
    wts = torch.stack([(1 - dx) * (1 - dy), (1 - dx) * dy, dx * (1 - dy), dx * dy], dim=-1)
    wts = wts * norm[..., None]

    table = features.permute(0, 2, 3, 1).reshape(B * H * W, C)
    out = F.embedding_bag(idx.reshape(N * P * P, S * S * 4), table,
                          per_sample_weights=wts.reshape(N * P * P, S * S * 4), mode="sum")
    return out.reshape(N, P, P, C).permute(0, 3, 1, 2).contiguous()


class DeformRoIPool(nn.Module):
    """Module form of :func:`deform_roi_pool` (no parameters).

    ``forward(features [B, C, H, W], rois [N, 5], offsets [N, 2, Q, Q] | None)`` returns
    ``[N, C, P, P]``; ``offsets=None`` is the ``no_trans`` mode.
    """

    def __init__(self, output_size: int, part_size: int, sample_per_part: int,
                 trans_std: float, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.part_size = int(part_size)
        self.sample_per_part = int(sample_per_part)
        self.trans_std = float(trans_std)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: Tensor, rois: Tensor, offsets: Tensor | None = None) -> Tensor:
        return deform_roi_pool(features, rois, offsets, self.spatial_scale, self.output_size,
                               self.part_size, self.sample_per_part, self.trans_std)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, part_size={self.part_size}, "
                f"sample_per_part={self.sample_per_part}, trans_std={self.trans_std}, "
                f"spatial_scale={self.spatial_scale}")
