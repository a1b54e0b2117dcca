"""The custom ops accept float16 and bfloat16 on the CPU (their reference paths) and agree with
float32 on the same values.

Inputs are drawn in float32, rounded to the low-precision dtype, and the float32 result is
computed from the rounded values upcast, so the only difference left is the op's own
arithmetic. Result dtypes (documented in each op): deformable RoI pool, Chamfer distances and
Soft-NMS scores compute in float32 internally and return the input dtype (Chamfer indices
int64); corner pooling works in the input dtype (a running max is exact).
"""
from __future__ import annotations

import pytest
import torch

from cuda_ops.chamfer_2d import chamfer_distance
from cuda_ops.corner_pool import corner_pool
from cuda_ops.deform_roi_pool import deform_roi_pool
from cuda_ops.soft_nms import batched_soft_nms, soft_nms

DTYPES = [torch.float16, torch.bfloat16]
# one rounding of a float32 result into the dtype (plus a little for the gradient sums)
TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def _low(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x rounded to ``dtype``, requiring grad; the same values in float32, requiring grad)."""
    lo = x.to(dtype).detach().requires_grad_(x.requires_grad)
    return lo, lo.detach().float().requires_grad_(x.requires_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_roi_pool_low_precision(dtype):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 40, 48, generator=gen).requires_grad_()
    offsets = (torch.randn(3, 2, 7, 7, generator=gen) * 0.5).requires_grad_()
    rois = torch.tensor([[0, 10.0, 20.0, 150.0, 130.0], [1, 40.0, 8.0, 90.0, 60.0], [0, 100.0, 90.0, 180.0, 150.0]])
    f_lo, f32 = _low(feats, dtype)
    o_lo, o32 = _low(offsets, dtype)
    out = deform_roi_pool(f_lo, rois, o_lo, 0.25, 7, 7, 2, 0.1)
    ref = deform_roi_pool(f32, rois, o32, 0.25, 7, 7, 2, 0.1)
    assert out.dtype == dtype and out.shape == (3, 8, 7, 7)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    g = torch.randn(out.shape, generator=gen)
    out.backward(g.to(dtype))
    ref.backward(g.to(dtype).float())
    assert f_lo.grad.dtype == dtype and o_lo.grad.dtype == dtype
    torch.testing.assert_close(f_lo.grad.float(), f32.grad, **TOL[dtype])
    # the offsets' gradient is a sum over 2 x 2 samples x 8 channels of products: relative to its scale
    scale = o32.grad.abs().max()
    torch.testing.assert_close(o_lo.grad.float() / scale, o32.grad / scale, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["top", "bottom", "left", "right"])
def test_corner_pool_low_precision(dtype, direction):
    gen = torch.Generator().manual_seed(1)
    x_lo, x32 = _low(torch.randn(2, 3, 9, 11, generator=gen).requires_grad_(), dtype)
    out, ref = corner_pool(x_lo, direction), corner_pool(x32, direction)
    assert out.dtype == dtype
    assert torch.equal(out.float(), ref)  # a running max selects values: exact
    g = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(g)
    ref.backward(g.float())
    assert x_lo.grad.dtype == dtype
    torch.testing.assert_close(x_lo.grad.float(), x32.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_chamfer_low_precision(dtype):
    gen = torch.Generator().manual_seed(2)
    a_lo, a32 = _low((torch.rand(3, 50, 2, generator=gen) * 300).requires_grad_(), dtype)
    b_lo, b32 = _low((torch.rand(3, 40, 2, generator=gen) * 300).requires_grad_(), dtype)
    d_ab, d_ba, i_ab, i_ba = chamfer_distance(a_lo, b_lo)
    r_ab, r_ba, j_ab, j_ba = chamfer_distance(a32, b32)
    assert d_ab.dtype == dtype and d_ba.dtype == dtype and i_ab.dtype == torch.int64
    assert torch.equal(i_ab, j_ab) and torch.equal(i_ba, j_ba)  # matched in float32 on the same values
    torch.testing.assert_close(d_ab.float(), r_ab, **TOL[dtype])
    torch.testing.assert_close(d_ba.float(), r_ba, **TOL[dtype])
    (d_ab.float().sum() + d_ba.float().sum()).backward()
    (r_ab.sum() + r_ba.sum()).backward()
    assert a_lo.grad.dtype == dtype
    torch.testing.assert_close(a_lo.grad.float(), a32.grad, **TOL[dtype])
    torch.testing.assert_close(b_lo.grad.float(), b32.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_nms_low_precision(dtype):
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=gen) * 200
    wh = torch.rand(60, 2, generator=gen) * 60 + 10
    b_lo, b32 = _low(torch.cat([xy, xy + wh], 1), dtype)
    s_lo, s32 = _low(torch.rand(60, generator=gen), dtype)
    labels = torch.randint(0, 3, (60,), generator=gen)
    keep, scores = soft_nms(b_lo, s_lo)
    keep32, scores32 = soft_nms(b32, s32)
    assert scores.dtype == dtype and torch.equal(keep, keep32)
    torch.testing.assert_close(scores.float(), scores32, **TOL[dtype])
    keep, scores = batched_soft_nms(b_lo, s_lo, labels)
    keep32, scores32 = batched_soft_nms(b32, s32, labels)
    assert scores.dtype == dtype and torch.equal(keep, keep32)
    torch.testing.assert_close(scores.float(), scores32, **TOL[dtype])
