"""2-D Chamfer distance op: nearest-neighbour squared distances and indices between the point
sets of ``P`` instances, with autograd (Dense RepPoints, spec reppoints.md §3.4 and §6; the
RPv2 repository's ``chamfer_2d`` CUDA extension).

For ``a [P, N, 2]`` and ``b [P, M, 2]`` (one instance per leading index)::

    dist_ab[p, n] = min_m d(p, n, m),   idx_ab[p, n] = argmin_m d(p, n, m)
    dist_ba[p, m] = min_n d(p, n, m),   idx_ba[p, m] = argmin_n d(p, n, m)
    d(p, n, m)    = (a[p,n,0] - b[p,m,0])**2 + (a[p,n,1] - b[p,m,1])**2

with the distances squared (no ``sqrt``) and computed from exact coordinate differences,
``dx*dx + dy*dy`` rounded as written (each product and the sum rounded once, no fused
multiply-add), never through the ``|a|^2 + |b|^2 - 2ab`` expansion, which cancels badly in
float32 at nearby points (``torch.cdist``'s matrix-product mode does that).

Tie rule (the reference's, which the CUDA kernel reproduces): among equal distances the
**lowest index** is the nearest neighbour (``torch.argmin`` returns the first minimal index);
a NaN distance (a NaN coordinate) counts as smaller than every number, as in
``torch.argmin``, so the first NaN wins. Since both implementations round ``d`` identically,
their indices and distances are equal exactly, ties included.

Gradient (as a ``min``: through the matched pair only, no splitting among ties)::

    d dist_ab[p, n] / d a[p, n]          =  2 (a[p, n] - b[p, idx_ab[p, n]])
    d dist_ab[p, n] / d b[p, idx_ab[p, n]] = -2 (a[p, n] - b[p, idx_ab[p, n]])

and symmetrically for ``dist_ba``. The indices carry no gradient.

Implementations:

- :func:`chamfer_distance_reference`, pure PyTorch (CPU or GPU, any floating dtype): the
  nearest-neighbour search runs under ``torch.no_grad`` on an explicit ``[p, N, M]`` block of
  squared distances, in chunks of instances of at most :data:`CHUNK_ELEMS` elements (64 MiB
  of float32; ~31 instances of 729 x 729 points per chunk), then the distances of the matched
  pairs are recomputed differentiably (``[P, N]`` and ``[P, M]``), so autograd never holds a
  ``[P, N, M]`` graph. This is the ground truth;
- the CUDA kernel (``csrc/chamfer_2d_cuda.cu``: one thread per query point, the other set
  read through shared-memory tiles; built on first use by :mod:`cuda_ops._extension`),
  wrapped in an autograd Function; float32 and float64; the forward returns the distances
  and the indices, the backward works from the saved indices and is deterministic (no
  atomics: each gradient element is summed by one thread in a fixed order); differentiable
  once (no double backward). Any number of points works (the RPv2 kernel produced NaN below
  441 points, Dense-RepPoints#4).

:func:`chamfer_distance` dispatches: the kernel when ``a`` and ``b`` are non-empty float32 or
float64 CUDA tensors and the extension loads (``DETLAB_DISABLE_CUDA_OPS=1`` disables it),
else the reference.

Shapes: ``P == 0`` gives empty results; with ``P > 0`` both sets must be non-empty
(``N, M >= 1``). ``a`` and ``b`` must share dtype and device.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from cuda_ops._extension import load_chamfer_2d_ext

__all__ = ["CHUNK_ELEMS", "chamfer_distance", "chamfer_distance_reference"]

CHUNK_ELEMS = 1 << 24  # max elements of the reference's no-grad [p, N, M] distance block
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check_args(a: Tensor, b: Tensor) -> None:
    """Raises ``ValueError`` unless ``a [P, N, 2]`` and ``b [P, M, 2]`` are floating tensors of
    one dtype and device, with ``N, M >= 1`` when ``P > 0``."""
    if a.dim() != 3 or a.shape[-1] != 2 or b.dim() != 3 or b.shape[-1] != 2:
        raise ValueError(f"expected a [P, N, 2] and b [P, M, 2], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"instance counts differ: {a.shape[0]} vs {b.shape[0]}")
    if not a.is_floating_point() or a.dtype != b.dtype:
        raise ValueError(f"a and b must have one floating dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    if a.shape[0] > 0 and (a.shape[1] == 0 or b.shape[1] == 0):
        raise ValueError(f"point sets must be non-empty, got N={a.shape[1]}, M={b.shape[1]}")


@torch.no_grad()
def _nearest(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(idx_ab [P, N], idx_ba [P, M])`` by ``argmin`` over chunks of the exact ``[p, N, M]``
    squared-distance block (first minimal index on ties)."""
    num, n, m = a.shape[0], a.shape[1], b.shape[1]
    chunk = max(1, CHUNK_ELEMS // max(n * m, 1))
    idx_ab = torch.empty((num, n), dtype=torch.long, device=a.device)
    idx_ba = torch.empty((num, m), dtype=torch.long, device=a.device)
    for s in range(0, num, chunk):
        p = a[s:s + chunk]
        q = b[s:s + chunk]
        d2 = (p[:, :, None, 0] - q[:, None, :, 0]).square_()
        d2 += (p[:, :, None, 1] - q[:, None, :, 1]).square_()  # [p, N, M], dx*dx + dy*dy
        idx_ab[s:s + chunk] = d2.argmin(dim=2)
        idx_ba[s:s + chunk] = d2.argmin(dim=1)
    return idx_ab, idx_ba


def _pair_dist(x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
    """``|x[p, i] - y[p, idx[p, i]]|^2`` as ``dx*dx + dy*dy``, differentiable: ``[P, K]``."""
    nn = torch.gather(y, 1, idx[..., None].expand(-1, -1, 2))
    return (x - nn).square().sum(-1)


def chamfer_distance_reference(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chamfer nearest neighbours in pure PyTorch (module docstring).

    Args:
        a: ``[P, N, 2]`` floating tensor (any device).
        b: ``[P, M, 2]``, same dtype and device.

    Returns:
        ``(dist_ab [P, N], dist_ba [P, M], idx_ab [P, N], idx_ba [P, M])``: squared distances
        (dtype of ``a``, differentiable w.r.t. ``a`` and ``b`` through the matched pairs) and
        int64 indices of the nearest point in the other set (lowest index on ties).
        float16/bfloat16 points are matched and measured in float32 (a bfloat16 ``d`` has too
        few bits to rank nearby points) and the distances returned in the dtype of ``a``.
    """
    _check_args(a, b)
    if a.dtype in (torch.float16, torch.bfloat16):
        d_ab, d_ba, idx_ab, idx_ba = chamfer_distance_reference(a.float(), b.float())
        return d_ab.to(a.dtype), d_ba.to(a.dtype), idx_ab, idx_ba
    idx_ab, idx_ba = _nearest(a.detach(), b.detach())
    return _pair_dist(a, b, idx_ab), _pair_dist(b, a, idx_ba), idx_ab, idx_ba


def chamfer_distance(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chamfer nearest neighbours: the CUDA kernel for non-empty float32/float64 CUDA tensors
    when the extension loads (not with ``DETLAB_DISABLE_CUDA_OPS=1``), else
    :func:`chamfer_distance_reference`. Arguments, results and gradient are the reference's;
    distances and indices are equal exactly, the gradients up to the order of summation.
    """
    _check_args(a, b)
    if a.is_cuda and a.dtype in _KERNEL_DTYPES and a.numel() > 0 and b.numel() > 0:
        ext = load_chamfer_2d_ext()
        if ext is not None:
            return _Chamfer2DCUDA.apply(a.contiguous(), b.contiguous(), ext)
    return chamfer_distance_reference(a, b)


class _Chamfer2DCUDA(torch.autograd.Function):
    """Autograd wrapper of the CUDA kernels. Inputs: contiguous ``[P, N, 2]`` and ``[P, M, 2]``
    CUDA tensors of one dtype (float32/float64); outputs as the reference's. The points and the
    indices are saved; the backward needs no distance matrix."""

    @staticmethod
    def forward(ctx: FunctionCtx, a: Tensor, b: Tensor, ext: ModuleType
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dist_ab, dist_ba, idx_ab, idx_ba = ext.forward(a, b)
        ctx.save_for_backward(a, b, idx_ab, idx_ba)
        ctx.mark_non_differentiable(idx_ab, idx_ba)
        ctx.ext = ext
        return dist_ab, dist_ba, idx_ab, idx_ba

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_ab: Tensor | None, g_ba: Tensor | None,
                 _g_idx_ab: object, _g_idx_ba: object) -> tuple[Tensor | None, Tensor | None, None]:
        a, b, idx_ab, idx_ba = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None
        g_ab = torch.zeros_like(idx_ab, dtype=a.dtype) if g_ab is None else g_ab
        g_ba = torch.zeros_like(idx_ba, dtype=a.dtype) if g_ba is None else g_ba
        grad_a, grad_b = ctx.ext.backward(a, b, idx_ab, idx_ba, g_ab.to(a.dtype).contiguous(),
                                          g_ba.to(a.dtype).contiguous())
        return (grad_a if ctx.needs_input_grad[0] else None,
                grad_b if ctx.needs_input_grad[1] else None, None)
