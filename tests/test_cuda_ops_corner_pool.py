"""Corner pooling (``cuda_ops.corner_pool``): the ``torch.cummax`` reference against a
brute-force definition (values, the tie rule of the gradient, NaNs), gradcheck, the CUDA
kernel against the reference, the dispatcher's fallback, the loader, and the compile.

- Reference and dispatcher tests run anywhere (CPU).
- Kernel tests need a CUDA device (skipped otherwise) and nvcc; on a GPU machine with nvcc a
  failed build is an error, not a skip.
- The compile test runs wherever nvcc exists, GPU or not (it compiles from scratch into a
  temporary cache, 30-60 s on 2 cores); ``DETLAB_SKIP_CUDA_BUILD_TEST=1`` skips it.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import cuda_ops._extension as extension
from tests.cuda_checks import built_extension_on_gpu, compile_from_scratch
from cuda_ops.corner_pool import (
    DIRECTIONS,
    CornerPool,
    _CornerPoolCUDA,
    corner_pool,
    corner_pool_reference,
)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def _brute(x: torch.Tensor, grad_out: torch.Tensor, direction: str
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, d x) of corner pooling by the definition, element by element in Python.

    Each output position looks at its window (top: rows >= i, bottom: rows <= i, left:
    columns >= i, right: columns <= i), walked from the position outward; its argmax is the
    nearest NaN if the window has one, else the nearest element equal to the window's max;
    the position's output gradient goes entirely to that argmax.
    """
    B, C, H, W = x.shape
    xv, gv = x.tolist(), grad_out.tolist()
    out = [[[[0.0] * W for _ in range(H)] for _ in range(C)] for _ in range(B)]
    grad = [[[[0.0] * W for _ in range(H)] for _ in range(C)] for _ in range(B)]
    for b in range(B):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    if direction == "top":
                        cells = [(j, w) for j in range(h, H)]
                    elif direction == "bottom":
                        cells = [(j, w) for j in range(h, -1, -1)]
                    elif direction == "left":
                        cells = [(h, j) for j in range(w, W)]
                    else:
                        cells = [(h, j) for j in range(w, -1, -1)]
                    vals = [xv[b][c][p][q] for p, q in cells]
                    nans = [k for k, v in enumerate(vals) if math.isnan(v)]
                    if nans:
                        k = nans[0]
                    else:
                        m = max(vals)
                        k = next(k for k, v in enumerate(vals) if v == m)
                    p, q = cells[k]
                    out[b][c][h][w] = vals[k]
                    grad[b][c][p][q] += gv[b][c][h][w]
    return (torch.tensor(out, dtype=x.dtype), torch.tensor(grad, dtype=x.dtype))


def _grads(fn, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, d x) of ``fn(x)`` for ``grad_out``."""
    xr = x.detach().clone().requires_grad_(True)
    out = fn(xr)
    out.backward(grad_out)
    return out.detach(), xr.grad


def _int_case(seed: int, shape: tuple[int, int, int, int] = (2, 3, 6, 7),
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued input in [-2, 2] (many ties) and integer-valued output gradient, so
    that every sum is exact in any float dtype."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)
    grad_out = torch.randint(-4, 5, shape, generator=g).to(dtype)
    return x, grad_out


# --------------------------------------------------------------------------- reference (CPU)

@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_brute_force_with_ties(direction, seed):
    x, grad_out = _int_case(seed)
    out, grad = _grads(lambda t: corner_pool_reference(t, direction), x, grad_out)
    bout, bgrad = _brute(x, grad_out, direction)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, bout)
    assert torch.equal(grad, bgrad), "gradient must go to the nearest of tied maxima"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_reference_random_float_and_nan(direction):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    out, grad = _grads(lambda t: corner_pool_reference(t, direction), x, grad_out)
    bout, bgrad = _brute(x, grad_out, direction)
    assert torch.equal(out, bout)
    torch.testing.assert_close(grad, bgrad, rtol=1e-12, atol=1e-12)
    # NaNs propagate in the scan direction; the nearest NaN takes the gradient
    x[0, 0, 2, 3] = float("nan")
    x[1, 1, 4, 0] = float("nan")
    x[1, 1, 0, 5] = float("nan")
    out, grad = _grads(lambda t: corner_pool_reference(t, direction), x, grad_out)
    bout, bgrad = _brute(x, grad_out, direction)
    assert torch.equal(out.isnan(), bout.isnan()) and out.isnan().sum() > 1
    assert torch.equal(out.nan_to_num(), bout.nan_to_num())
    torch.testing.assert_close(grad, bgrad, rtol=1e-12, atol=1e-12)


def test_reference_directions_small_example():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 0.0], [2.0, 5.0]]]])
    assert corner_pool_reference(x, "top").tolist() == [[[[2.0, 5.0], [2.0, 5.0], [2.0, 5.0]]]]
    assert corner_pool_reference(x, "bottom").tolist() == [[[[1.0, 3.0], [2.0, 3.0], [2.0, 5.0]]]]
    assert corner_pool_reference(x, "left").tolist() == [[[[3.0, 3.0], [2.0, 0.0], [5.0, 5.0]]]]
    assert corner_pool_reference(x, "right").tolist() == [[[[1.0, 3.0], [2.0, 2.0], [2.0, 5.0]]]]
    # the tie in column 0 (rows 1 and 2 hold 2): top's row 0 and row 1 take row 1's
    x.requires_grad_(True)
    corner_pool_reference(x, "top").sum().backward()
    assert x.grad[0, 0, :, 0].tolist() == [0.0, 2.0, 1.0]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_reference_gradcheck_float64(direction):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)  # tie-free
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: corner_pool_reference(t, direction), (x,),
                                    eps=1e-6, atol=1e-8)


def test_shapes_empty_and_errors():
    for shape in [(0, 2, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0), (1, 1, 1, 1)]:
        x = torch.randn(shape)
        for d in DIRECTIONS:
            assert corner_pool(x, d).shape == shape
    with pytest.raises(ValueError, match="direction"):
        corner_pool(torch.zeros(1, 1, 2, 2), "up")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        corner_pool_reference(torch.zeros(2, 2, 2), "top")
    with pytest.raises(ValueError, match="direction"):
        CornerPool("diagonal")


# --------------------------------------------------------------------------- dispatcher

def test_dispatcher_on_cpu_is_the_reference(monkeypatch):
    import cuda_ops.corner_pool as cp

    def no_load():
        raise AssertionError("the extension must not be loaded for CPU tensors")

    monkeypatch.setattr(cp, "load_corner_pool_ext", no_load)
    x, grad_out = _int_case(5)
    for d in DIRECTIONS:
        a = _grads(lambda t: corner_pool(t, d), x, grad_out)
        b = _grads(lambda t: corner_pool_reference(t, d), x, grad_out)
        c = _grads(CornerPool(d), x, grad_out)
        assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(a, b, c))
    assert repr(CornerPool("left")) == "CornerPool(direction='left')"


def test_build_dir_layout_and_unknown_op(monkeypatch, tmp_path):
    monkeypatch.setenv("DETLAB_CUDA_CACHE", str(tmp_path))
    d = extension.build_dir_for("9.0", "corner_pool")
    assert d.name == "corner_pool" and d.parent.name == "sm_90" and d.is_relative_to(tmp_path)
    assert extension.build_dir_for("9.0").name == "deform_roi_pool"
    with pytest.raises(ValueError, match="unknown op"):
        extension.build_dir_for("9.0", "chamfer")
    with pytest.raises(ValueError, match="unknown op"):
        extension.build_ext("chamfer")


# --------------------------------------------------------------------------- kernel (CUDA)

@pytest.fixture(scope="module")
def ext():
    """The compiled extension (built or taken from the cache) on a CUDA machine."""
    return built_extension_on_gpu("corner_pool")


def _kernel(ext, direction: str):
    return lambda t: _CornerPoolCUDA.apply(t.contiguous(), direction, ext)


@needs_cuda
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_with_ties(ext, direction, dtype):
    dev = torch.device("cuda")
    for seed, shape in [(0, (2, 3, 6, 7)), (1, (1, 4, 1, 9)), (2, (3, 2, 33, 1)),
                        (3, (2, 5, 40, 37))]:
        x, grad_out = _int_case(seed, shape, dtype)
        ref, ref_g = _grads(lambda t: corner_pool_reference(t, direction), x, grad_out)
        out, g = _grads(_kernel(ext, direction), x.to(dev), grad_out.to(dev))
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.equal(out.cpu(), ref)
        assert torch.equal(g.cpu(), ref_g), "integer sums are exact: same argmax everywhere"


@needs_cuda
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_kernel_random_large_and_nan(ext, direction):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 100, 152, generator=g, dtype=torch.float64)
    grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x[0, 1, 50, 70] = float("nan")
    x[1, 7, 3, 151] = float("nan")
    x[1, 7, 99, 0] = float("nan")
    ref, ref_g = _grads(lambda t: corner_pool_reference(t, direction), x, grad_out)
    out, gr = _grads(_kernel(ext, direction), x.to(dev), grad_out.to(dev))
    assert torch.equal(out.cpu().isnan(), ref.isnan())
    assert torch.equal(out.cpu().nan_to_num(), ref.nan_to_num())
    torch.testing.assert_close(gr.cpu(), ref_g, rtol=1e-12, atol=1e-12)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_types(ext, dtype):
    dev = torch.device("cuda")
    x, grad_out = _int_case(4, (2, 3, 17, 19), torch.float32)
    for d in DIRECTIONS:
        ref, ref_g = _grads(lambda t: corner_pool_reference(t, d), x, grad_out)
        out, g = _grads(lambda t: corner_pool(t, d), x.to(dev, dtype), grad_out.to(dev, dtype))
        assert out.dtype == dtype and g.dtype == dtype
        assert torch.equal(out.float().cpu(), ref)
        assert torch.equal(g.float().cpu(), ref_g)


@needs_cuda
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_kernel_gradcheck(ext, direction):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64).cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(_kernel(ext, direction), (x,), eps=1e-6, atol=1e-8)


@needs_cuda
def test_dispatcher_uses_kernel_on_cuda_noncontiguous_and_disable_env(ext, monkeypatch):
    import cuda_ops.corner_pool as cp

    x, grad_out = _int_case(6, (2, 4, 9, 11), torch.float32)
    dev = torch.device("cuda")
    xc = x.to(dev).to(memory_format=torch.channels_last)  # not contiguous
    calls: list[int] = []
    real_apply = cp._CornerPoolCUDA.apply

    def spy(*args):
        calls.append(1)
        return real_apply(*args)

    monkeypatch.setattr(cp._CornerPoolCUDA, "apply", spy)
    for d in DIRECTIONS:
        out, g = _grads(lambda t: CornerPool(d)(t), xc, grad_out.to(dev))
        ref, ref_g = _grads(lambda t: corner_pool_reference(t, d), x, grad_out)
        assert torch.equal(out.cpu(), ref) and torch.equal(g.cpu(), ref_g)
    assert len(calls) == len(DIRECTIONS)
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", "1")
    assert torch.equal(corner_pool(xc, "top").cpu(), corner_pool_reference(x, "top"))
    assert len(calls) == len(DIRECTIONS), "disabled: the reference runs"


# --------------------------------------------------------------------------- compile

@pytest.mark.skipif(os.environ.get("DETLAB_SKIP_CUDA_BUILD_TEST") == "1",
                    reason="DETLAB_SKIP_CUDA_BUILD_TEST=1 (the compile takes 30-60 s on 2 cores)")
def test_extension_compiles(monkeypatch, tmp_path):
    """Where nvcc exists (also without a GPU) the kernels must compile and load."""
    res = compile_from_scratch(monkeypatch, tmp_path, "corner_pool")
    for name in ("forward", "backward"):
        assert callable(getattr(res.module, name))
    # the binding's argument checks run without a GPU
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        res.module.forward(torch.zeros(1, 1, 2, 2), "top")
    with pytest.raises(RuntimeError, match="direction must be"):
        res.module.forward(torch.zeros(1, 1, 2, 2), "up")
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        res.module.backward(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "left")
