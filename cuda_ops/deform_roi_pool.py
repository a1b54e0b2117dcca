"""Deformable RoI pooling as mmdet v1's ``deform_psroi_pooling`` kernel, with ``group_size=1``
(not position-sensitive), the way D2Det's discriminative RoI pooling uses it (spec d2det.md
§2.2), with autograd to the features and the offsets.

Three implementations of one function:

- :func:`deform_roi_pool_reference`, pure PyTorch (CPU or GPU), the documented ground truth;
- :func:`deform_roi_pool_sampled`, the same sample positions through ``F.grid_sample``
  (equal to the reference up to rounding; see its docstring for the one measure-zero
  gradient difference); kept as a second implementation to test and time against;
- the CUDA kernel (``csrc/deform_roi_pool_cuda.cu``, built on first use by
  :mod:`cuda_ops._extension`), wrapped in an autograd Function and tested against the
  reference.

:func:`deform_roi_pool` (and :class:`DeformRoIPool`) dispatch: the kernel when the features
are on a CUDA device and the extension loads (``DETLAB_DISABLE_CUDA_OPS=1`` disables it),
else the reference (the faster of the two PyTorch forms on CPU, as measured). The kernel and the reference compute in float32 or
float64; float16/bfloat16 features are pooled in float32 and the result cast back to their dtype. The kernel path is differentiable
once (no double backward); the reference's is as differentiable as autograd makes it.

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

Reference implementation: every bin is a bag of ``4*S*S`` (pixel, weight) pairs (corner
pixel index into the flattened channel-last feature map; bilinear weight times validity /
count), and
``F.embedding_bag(mode="sum", per_sample_weights=...)`` reduces them, so the
``[N*P*P*S*S*4, C]`` tensor of gathered corners is never materialised; its backward gives
the feature gradient and the per-weight gradient, from which autograd reaches the offsets.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from cuda_ops._extension import load_deform_roi_pool_ext

__all__ = ["deform_roi_pool", "deform_roi_pool_reference", "deform_roi_pool_sampled", "DeformRoIPool"]


def _round_half_away(x: Tensor) -> Tensor:
    """C/C++ ``round``: halves go away from zero (``torch.round`` rounds half to even)."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _check_args(features: Tensor, rois: Tensor, offsets: Tensor | None, part_size: int) -> None:
    """Shape checks shared by both implementations; raises ``ValueError``."""
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N, 5], got {tuple(rois.shape)}")
    N, Q = rois.shape[0], int(part_size)
    if offsets is not None and (offsets.dim() != 4 or offsets.shape[0] != N
                                or offsets.shape[1] != 2 or offsets.shape[2] != Q
                                or offsets.shape[3] != Q):
        raise ValueError(f"offsets must be [N, 2, {Q}, {Q}], got {tuple(offsets.shape)}")


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

    Runs the CUDA kernel when ``features`` is on a CUDA device and the extension loads (not
    with ``DETLAB_DISABLE_CUDA_OPS=1``), else :func:`deform_roi_pool_reference` (the
    ``embedding_bag`` form: on CPU 1.7x faster than the ``grid_sample`` form at the D2Det CPU
    scale and 5.5x at 256 channels, ``benchmarks/README.md``); arguments,
    result and gradients are those of the reference (see there), equal up to floating-point
    rounding. On the kernel path ``rois`` and ``offsets`` are moved to the features' device.
    """
    _check_args(features, rois, offsets, part_size)
    if features.is_cuda and features.is_floating_point() and rois.shape[0] > 0:
        ext = load_deform_roi_pool_ext()
        if ext is not None:
            return _deform_roi_pool_cuda(ext, features, rois, offsets, spatial_scale,
                                         output_size, part_size, sample_per_part, trans_std)
    return deform_roi_pool_reference(features, rois, offsets, spatial_scale, output_size,
                                     part_size, sample_per_part, trans_std)


def _sample_coordinates(features: Tensor, rois: Tensor, offsets: Tensor | None, spatial_scale: float,
                        P: int, Q: int, S: int, trans_std: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample positions of every bin (module docstring), in feature pixels.

    Returns ``batch`` LongTensor[N], ``ws`` and ``hs`` [N, P, P, S, S] (x and y, before the
    clamp; differentiable w.r.t. ``offsets``) and ``norm`` [N, P, P, S, S] = validity / number
    of valid samples of the bin.
    """
    B, C, H, W = features.shape
    N = rois.shape[0]
    dtype, device = features.dtype, features.device
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

    return batch, ws, hs, norm


def deform_roi_pool_reference(
    features: Tensor,
    rois: Tensor,
    offsets: Tensor | None,
    spatial_scale: float,
    output_size: int,
    part_size: int,
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    """Deformable RoI pooling (mmdet v1 ``deform_psroi_pooling``, ``group_size=1``), pure
    PyTorch: the ground truth the CUDA kernel is tested against.

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
        ``features`` and ``offsets`` (not ``rois``). float16/bfloat16 features (or offsets)
        are pooled in float32 (sample coordinates in bfloat16 would be off by whole pixels
        past 256) and the result cast back to the dtype of ``features``.
    """
    _check_args(features, rois, offsets, part_size)
    low = (torch.float16, torch.bfloat16)
    if features.dtype in low or (offsets is not None and offsets.dtype in low):
        work = features.float() if features.dtype in low else features
        off = None if offsets is None else offsets.to(work.dtype)
        return deform_roi_pool_reference(work, rois, off, spatial_scale, output_size, part_size,
                                         sample_per_part, trans_std).to(features.dtype)
    B, C, H, W = features.shape
    N = rois.shape[0]
    P, Q, S = int(output_size), int(part_size), int(sample_per_part)
    dtype, device = features.dtype, features.device
    if N == 0:
        return features.new_zeros((0, C, P, P))

    batch, ws, hs, norm = _sample_coordinates(features, rois, offsets, spatial_scale, P, Q, S, trans_std)

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


def deform_roi_pool_sampled(
    features: Tensor,
    rois: Tensor,
    offsets: Tensor | None,
    spatial_scale: float,
    output_size: int,
    part_size: int,
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    """The same pooling through ``F.grid_sample`` (one call per image); not dispatched.

    The dispatcher uses :func:`deform_roi_pool_reference` where no kernel runs: measured on 2 idle
    cores (``benchmarks/README.md``), this path is 1.7x slower there at the D2Det CPU scale
    (64 channels, 600 RoIs, 1 sample per bin side) and 5.5x at 256 channels.

    Same sample positions (:func:`_sample_coordinates`), validity and mean as the reference;
    ``grid_sample(align_corners=True, padding_mode="border")`` clamps to ``[0, W-1] x [0,
    H-1]`` and interpolates bilinearly, so the output equals the reference's up to rounding.
    Gradients equal too, except for a sample sitting exactly on an integer row or column
    (a kink of the bilinear interpolation), where the kernel's ``floor == ceil`` gives a zero
    offset derivative and ``grid_sample`` a one-sided one; a clamped sample gets 0 in both.
    Arguments and result as :func:`deform_roi_pool_reference`.
    """
    _check_args(features, rois, offsets, part_size)
    B, C, H, W = features.shape
    N = rois.shape[0]
    P, Q, S = int(output_size), int(part_size), int(sample_per_part)
    if N == 0:
        return features.new_zeros((0, C, P, P))
    batch, ws, hs, norm = _sample_coordinates(features, rois, offsets, spatial_scale, P, Q, S, trans_std)
    gx = ws * (2.0 / max(W - 1, 1)) - 1.0
    gy = hs * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(N, P * P * S * S, 2)
    norm = norm.reshape(N, P * P, S * S)
    pieces, order = [], []
    for b in torch.unique(batch).tolist():
        idx = torch.nonzero(batch == b).squeeze(1)
        k = idx.numel()
        sampled = F.grid_sample(features[b:b + 1], grid[idx].reshape(1, k * P * P * S * S, 1, 2),
                                mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled.reshape(C, k, P * P, S * S)
        pieces.append((sampled * norm[idx][None]).sum(-1).permute(1, 0, 2))  # [k, C, P*P]
        order.append(idx)
    out = torch.cat(pieces)
    perm = torch.cat(order)
    if not torch.equal(perm, torch.arange(N, device=perm.device)):
        out = out[torch.argsort(perm)]
    return out.reshape(N, C, P, P)


class _DeformRoIPoolCUDA(torch.autograd.Function):
    """Autograd wrapper of the CUDA kernels. Inputs: contiguous ``features [B, C, H, W]``,
    ``rois [N, 5]`` and ``offsets [N, 2, Q, Q] | None``, one float32/float64 dtype, one CUDA
    device; output ``[N, C, P, P]``. The forward also returns each bin's valid-sample count
    ``[N, P, P]``, kept for the backward. No gradient to the RoIs."""

    @staticmethod
    def forward(ctx: FunctionCtx, features: Tensor, rois: Tensor, offsets: Tensor | None,
                spatial_scale: float, output_size: int, part_size: int, sample_per_part: int,
                trans_std: float, ext: ModuleType) -> Tensor:
        out, count = ext.forward(features, rois, offsets, spatial_scale, output_size,
                                 part_size, sample_per_part, trans_std)
        # the feature values are needed only for the offsets' gradient
        ctx.save_for_backward(features if offsets is not None else None, rois, offsets, count)
        ctx.shape = tuple(features.shape)
        ctx.params = (spatial_scale, output_size, part_size, sample_per_part, trans_std)
        ctx.ext = ext
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor
                 ) -> tuple[Tensor | None, None, Tensor | None, None, None, None, None, None,
                            None]:
        features, rois, offsets, count = ctx.saved_tensors
        scale, P, Q, S, trans_std = ctx.params
        g = grad_out.contiguous()
        grad_features = grad_offsets = None
        if ctx.needs_input_grad[0]:
            B, _, H, W = ctx.shape
            grad_features = ctx.ext.backward_features(g, rois, offsets, count, B, H, W, scale,
                                                      P, Q, S, trans_std)
        if offsets is not None and ctx.needs_input_grad[2]:
            grad_offsets = ctx.ext.backward_offsets(g, features, rois, offsets, count, scale,
                                                    P, Q, S, trans_std)
        return grad_features, None, grad_offsets, None, None, None, None, None, None


def _deform_roi_pool_cuda(ext: ModuleType, features: Tensor, rois: Tensor,
                          offsets: Tensor | None, spatial_scale: float, output_size: int,
                          part_size: int, sample_per_part: int, trans_std: float) -> Tensor:
    """The kernel path of :func:`deform_roi_pool` (``features`` on CUDA, ``N > 0``):
    float16/bfloat16 computed in float32; ``rois``/``offsets`` cast and moved to the
    features' dtype and device (autograd casts the offsets' gradient back)."""
    work = features if features.dtype in (torch.float32, torch.float64) else features.float()
    r = rois.detach().to(device=work.device, dtype=work.dtype).contiguous()
    o = None if offsets is None else offsets.to(device=work.device, dtype=work.dtype).contiguous()
    out = _DeformRoIPoolCUDA.apply(work.contiguous(), r, o, float(spatial_scale),
                                   int(output_size), int(part_size), int(sample_per_part),
                                   float(trans_std), ext)
    return out.to(features.dtype)


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
