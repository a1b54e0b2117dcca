"""Corner pooling (CornerNet's TopPool, BottomPool, LeftPool, RightPool), the directional
max pools of RepPoints V2's corner branch (spec reppoints.md §2.1, §6), with autograd.

For ``x`` of shape ``[B, C, H, W]`` the output has the same shape and, for each direction:

- ``"top"``:    ``out[..., i, w] = max_{j >= i} x[..., j, w]`` (running max from the bottom
  row upward: each cell sees everything below it);
- ``"bottom"``: ``out[..., i, w] = max_{j <= i} x[..., j, w]`` (from the top row downward);
- ``"left"``:   ``out[..., h, i] = max_{j >= i} x[..., h, j]`` (from the right column
  leftward: each cell sees everything to its right);
- ``"right"``:  ``out[..., h, i] = max_{j <= i} x[..., h, j]`` (from the left column
  rightward).

RepPoints V2's ``TLPool`` sums ``top`` and ``left`` pools (of two different 3x3 conv outputs;
the top-left corner of a box looks down and right at the object), ``BRPool`` sums ``bottom``
and ``right``. These are the directions and the ``torch.cummax``-with-flips implementation
of the RPv2 repository's ``CornerPool`` (``cummax_dim_flip``: top = dim 2 flipped, bottom =
dim 2, left = dim 3 flipped, right = dim 3); the values are those of CornerNet's C++ pools
(whose backward's choice among tied maxima was not compared).

Gradient and tie rule (the reference's, which the CUDA kernel reproduces): the whole output
gradient of a position goes to one input element, its argmax, chosen as ``torch.cummax``
chooses it while scanning in the pool's direction (top: rows ``H-1 .. 0``; bottom: rows
``0 .. H-1``; left: columns ``W-1 .. 0``; right: columns ``0 .. W-1``): the element just
scanned replaces the running max ``m`` when ``isnan(v) or (not isnan(m) and v >= m)``. So

- among equal maxima the one scanned **last**, i.e. the one **nearest to the output
  position** (itself if it is one of them), gets the gradient; no splitting among ties
  (``torch.maximum``/``amax`` would split it);
- a NaN propagates to every position scanned after it, and the nearest NaN gets the
  gradient.

Implementations:

- :func:`corner_pool_reference`, pure PyTorch (``torch.cummax`` on flipped tensors, CPU or
  GPU, any dtype ``cummax`` supports, differentiable as autograd makes it): the ground truth;
- the CUDA kernel (``csrc/corner_pool_cuda.cu``, one thread per scan line, built on first use
  by :mod:`cuda_ops._extension`), wrapped in an autograd Function; float32/float64 and
  float16/bfloat16 (compared and accumulated in float32); deterministic backward (no
  atomics), which recomputes the argmax from the saved input; differentiable once (no double
  backward).

:func:`corner_pool` (and :class:`CornerPool`) dispatch: the kernel when ``x`` is a non-empty
floating tensor of one of those dtypes on a CUDA device and the extension loads
(``DETLAB_DISABLE_CUDA_OPS=1`` disables it), else the reference. The kernel output is
contiguous (a non-contiguous input is copied first).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from cuda_ops._extension import load_corner_pool_ext

__all__ = ["DIRECTIONS", "CornerPool", "corner_pool", "corner_pool_reference"]

DIRECTIONS = ("top", "bottom", "left", "right")
# direction -> (dimension of the running max, flip before and after cummax)
_DIM_FLIP = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_args(x: Tensor, direction: str) -> None:
    """Raises ``ValueError`` for a non-4-D ``x`` or an unknown ``direction``."""
    if direction not in _DIM_FLIP:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got {tuple(x.shape)}")


def corner_pool_reference(x: Tensor, direction: str) -> Tensor:
    """Corner pooling in pure PyTorch: ``torch.cummax`` along H (top/bottom) or W
    (left/right), flipping before and after for top and left.

    Args:
        x: ``[B, C, H, W]`` tensor (any device; any dtype ``torch.cummax`` supports).
        direction: ``"top"``, ``"bottom"``, ``"left"`` or ``"right"`` (module docstring).

    Returns:
        ``[B, C, H, W]``, dtype and device of ``x``; differentiable w.r.t. ``x`` (the gradient
        of each output goes to its argmax; ties and NaNs as in the module docstring). A
        running maximum only selects values, so float16/bfloat16 are pooled in their own dtype
        with the result of float32 pooling of the same values, exactly.
    """
    _check_args(x, direction)
    dim, flip = _DIM_FLIP[direction]
    if flip:
        x = x.flip(dim)
    out = torch.cummax(x, dim=dim).values
    return out.flip(dim) if flip else out


def corner_pool(x: Tensor, direction: str) -> Tensor:
    """Corner pooling: the CUDA kernel for a non-empty float32/float64/float16/bfloat16 CUDA
    tensor when the extension loads (not with ``DETLAB_DISABLE_CUDA_OPS=1``), else
    :func:`corner_pool_reference`. Arguments, result (``[B, C, H, W]``, same dtype) and
    gradient are the reference's; the values are equal exactly, the gradients up to the order
    of summation.
    """
    _check_args(x, direction)
    if x.is_cuda and x.dtype in _KERNEL_DTYPES and x.numel() > 0:
        ext = load_corner_pool_ext()
        if ext is not None:
            return _CornerPoolCUDA.apply(x.contiguous(), direction, ext)
    return corner_pool_reference(x, direction)


class _CornerPoolCUDA(torch.autograd.Function):
    """Autograd wrapper of the CUDA kernels. Input: a contiguous ``[B, C, H, W]`` CUDA tensor
    (float32/float64/float16/bfloat16); output of the same shape and dtype. The input is saved
    and the backward rescans it for the argmax positions."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, direction: str, ext: ModuleType) -> Tensor:
        out = ext.forward(x, direction)
        ctx.save_for_backward(x)
        ctx.direction = direction
        ctx.ext = ext
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        g = grad_out.to(x.dtype).contiguous()
        return ctx.ext.backward(x, g, ctx.direction), None, None


class CornerPool(nn.Module):
    """Module form of :func:`corner_pool` (no parameters): ``forward(x [B, C, H, W])`` returns
    ``[B, C, H, W]``, pooled toward ``direction`` (``"top"``, ``"bottom"``, ``"left"`` or
    ``"right"``)."""

    def __init__(self, direction: str) -> None:
        super().__init__()
        if direction not in _DIM_FLIP:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction

    def forward(self, x: Tensor) -> Tensor:
        return corner_pool(x, self.direction)

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}"
