"""2-D Chamfer distance (``cuda_ops.chamfer_2d``): the PyTorch reference against a brute-force
definition (distances, the lowest-index tie rule, gradients through the matched pairs),
gradcheck, the Chamfer loss built from it, the CUDA kernel against the reference, the
dispatcher's fallback, the loader, and the compile.

- Reference, dispatcher and loss tests run anywhere (CPU).
- Kernel tests need a CUDA device (skipped otherwise) and nvcc; on a GPU machine with nvcc a
  failed build is an error, not a skip.
- The compile test runs wherever nvcc exists, GPU or not (it compiles from scratch into a
  temporary cache, 30-60 s on 2 cores); ``DETLAB_SKIP_CUDA_BUILD_TEST=1`` skips it.
"""
from __future__ import annotations

import os

import pytest
import torch

import cuda_ops._extension as extension
from tests.cuda_checks import built_extension_on_gpu, compile_from_scratch
from cuda_ops import chamfer_2d as chamfer_op
from cuda_ops.chamfer_2d import _Chamfer2DCUDA, chamfer_distance, chamfer_distance_reference
from models.dense_reppoints.chamfer_loss import chamfer_loss_2d

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def _brute(a: torch.Tensor, b: torch.Tensor, g_ab: torch.Tensor, g_ba: torch.Tensor):
    """(dist_ab, dist_ba, idx_ab, idx_ba, d a, d b) by the definition, pair by pair in Python
    floats (IEEE double: exact for float64 input): ``d = dx*dx + dy*dy``, the nearest is the
    lowest index of the minimal distances (a strict ``<`` while scanning upward), and the
    output gradient of a point goes to its matched pair only, ``2 (x - y) g`` to x and
    ``-2 (x - y) g`` to y."""
    P, N, M = a.shape[0], a.shape[1], b.shape[1]
    av, bv, gab, gba = a.tolist(), b.tolist(), g_ab.tolist(), g_ba.tolist()
    ga = [[[0.0, 0.0] for _ in range(N)] for _ in range(P)]
    gb = [[[0.0, 0.0] for _ in range(M)] for _ in range(P)]
    d_ab = [[0.0] * N for _ in range(P)]
    d_ba = [[0.0] * M for _ in range(P)]
    i_ab = [[0] * N for _ in range(P)]
    i_ba = [[0] * M for _ in range(P)]

    def nearest(x, ys):
        best, arg = None, -1
        for k, y in enumerate(ys):
            dx, dy = x[0] - y[0], x[1] - y[1]
            d = dx * dx + dy * dy
            if best is None or d < best:
                best, arg = d, k
        return best, arg

    for p in range(P):
        for n in range(N):
            d_ab[p][n], i_ab[p][n] = nearest(av[p][n], bv[p])
            m = i_ab[p][n]
            for c in range(2):
                t = 2.0 * (av[p][n][c] - bv[p][m][c]) * gab[p][n]
                ga[p][n][c] += t
                gb[p][m][c] -= t
        for m in range(M):
            d_ba[p][m], i_ba[p][m] = nearest(bv[p][m], av[p])
            n = i_ba[p][m]
            for c in range(2):
                t = 2.0 * (bv[p][m][c] - av[p][n][c]) * gba[p][m]
                gb[p][m][c] += t
                ga[p][n][c] -= t
    f = dict(dtype=a.dtype)
    return (torch.tensor(d_ab, **f).reshape(P, N), torch.tensor(d_ba, **f).reshape(P, M),
            torch.tensor(i_ab, dtype=torch.long).reshape(P, N),
            torch.tensor(i_ba, dtype=torch.long).reshape(P, M),
            torch.tensor(ga, **f).reshape(P, N, 2), torch.tensor(gb, **f).reshape(P, M, 2))


def _run(fn, a: torch.Tensor, b: torch.Tensor, g_ab: torch.Tensor, g_ba: torch.Tensor):
    """(dist_ab, dist_ba, idx_ab, idx_ba, d a, d b) of ``fn(a, b)`` for the output gradients
    ``g_ab``, ``g_ba``."""
    ar = a.detach().clone().requires_grad_(True)
    br = b.detach().clone().requires_grad_(True)
    d_ab, d_ba, i_ab, i_ba = fn(ar, br)
    ga, gb = torch.autograd.grad((d_ab * g_ab).sum() + (d_ba * g_ba).sum(), (ar, br))
    return d_ab.detach(), d_ba.detach(), i_ab, i_ba, ga, gb


def _int_case(seed: int, P: int, N: int, M: int, hi: int = 4,
              dtype: torch.dtype = torch.float64):
    """Integer coordinates in [0, hi) (duplicates and equidistant neighbours galore) and
    integer output gradients, so that every value and sum is exact in any float dtype."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, hi, (P, N, 2), generator=g).to(dtype)
    b = torch.randint(0, hi, (P, M, 2), generator=g).to(dtype)
    g_ab = torch.randint(-3, 4, (P, N), generator=g).to(dtype)
    g_ba = torch.randint(-3, 4, (P, M), generator=g).to(dtype)
    return a, b, g_ab, g_ba


def _float_case(seed: int, P: int, N: int, M: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(P, N, 2, generator=g, dtype=torch.float64) * 20 - 10).to(dtype)
    b = (torch.rand(P, M, 2, generator=g, dtype=torch.float64) * 20 - 10).to(dtype)
    g_ab = torch.randn(P, N, generator=g, dtype=torch.float64).to(dtype)
    g_ba = torch.randn(P, M, generator=g, dtype=torch.float64).to(dtype)
    return a, b, g_ab, g_ba


def _assert_same(got, want, grad_tol: float = 0.0):
    """Distances and indices equal exactly; gradients within ``grad_tol`` (0: exactly)."""
    for name, x, y in zip(("dist_ab", "dist_ba", "idx_ab", "idx_ba"), got[:4], want[:4]):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.equal(x.cpu(), y.cpu()), name
    for name, x, y in zip(("grad_a", "grad_b"), got[4:], want[4:]):
        if grad_tol == 0.0:
            assert torch.equal(x.cpu(), y.cpu()), name
        else:
            torch.testing.assert_close(x.cpu(), y.cpu(), rtol=grad_tol, atol=grad_tol)


# --------------------------------------------------------------------------- reference (CPU)

@pytest.mark.parametrize("seed,P,N,M", [(0, 3, 7, 5), (1, 2, 5, 9), (2, 1, 1, 6), (3, 2, 8, 1),
                                        (4, 4, 12, 12)])
def test_reference_matches_brute_force_with_ties(seed, P, N, M):
    case = _int_case(seed, P, N, M)
    case[1][:, -1] = case[0][:, 0]  # a coincident pair in every instance
    got = _run(chamfer_distance_reference, *case)
    want = _brute(*case)
    _assert_same(got, want)  # integer-valued: gradient sums are exact in any order
    assert (got[0][:, 0] == 0).all() and (got[1][:, -1] == 0).all()


def test_reference_random_float64_and_float32():
    case = _float_case(5, 3, 11, 17)
    _assert_same(_run(chamfer_distance_reference, *case), _brute(*case), grad_tol=1e-12)
    a, b, g_ab, g_ba = _float_case(6, 2, 13, 7, torch.float32)
    got = _run(chamfer_distance_reference, a, b, g_ab, g_ba)
    want = _brute(a.double(), b.double(), g_ab.double(), g_ba.double())
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[4].double(), want[4], rtol=1e-5, atol=1e-5)


def test_reference_tie_rule_is_the_lowest_index():
    a = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0], [5.0, 5.0]]])
    d_ab, d_ba, i_ab, i_ba = chamfer_distance_reference(a, b)
    assert i_ab.tolist() == [[0, 3]]  # (0,0): b0, b1, b2 all at distance 1; (5,5): b3 = b4
    assert d_ab.tolist() == [[1.0, 0.0]]
    assert i_ba.tolist() == [[0, 0, 0, 1, 1]] and d_ba.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    # duplicated a points: every b point matches the first copy
    a2 = torch.tensor([[[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]])
    assert chamfer_distance_reference(a2, b)[3].tolist() == [[0, 0, 0, 0, 0]]


def test_reference_nan_counts_as_smallest():
    a = torch.tensor([[[0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0], [float("nan"), 1.0], [3.0, float("nan")]]])
    d_ab, d_ba, i_ab, i_ba = chamfer_distance_reference(a, b)
    assert i_ab.tolist() == [[1]] and d_ab.isnan().all()  # the first NaN distance wins
    assert i_ba.tolist() == [[0, 0, 0]]


def test_reference_gradcheck_float64():
    a, b, _, _ = _float_case(7, 2, 6, 9)  # continuous: no ties
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: chamfer_distance_reference(x, y)[:2], (a, b),
                                    eps=1e-6, atol=1e-8)


def test_reference_chunking_and_large_sets(monkeypatch):
    a, b, g_ab, g_ba = _int_case(8, 5, 60, 45, hi=9)
    full = _run(chamfer_distance_reference, a, b, g_ab, g_ba)
    monkeypatch.setattr(chamfer_op, "CHUNK_ELEMS", 1)  # one instance per chunk
    _assert_same(_run(chamfer_distance_reference, a, b, g_ab, g_ba), full)
    monkeypatch.setattr(chamfer_op, "CHUNK_ELEMS", 60 * 45 * 2)  # two per chunk, 5 = 2+2+1
    _assert_same(_run(chamfer_distance_reference, a, b, g_ab, g_ba), full)
    # against an explicit full distance matrix (dx*dx + dy*dy, argmin = first minimum)
    d = (a[:, :, None, 0] - b[:, None, :, 0]) ** 2 + (a[:, :, None, 1] - b[:, None, :, 1]) ** 2
    assert torch.equal(full[0], d.amin(2)) and torch.equal(full[2], d.argmin(2))
    assert torch.equal(full[1], d.amin(1)) and torch.equal(full[3], d.argmin(1))


def test_empty_shapes_dtypes_and_errors():
    for N, M in [(4, 3), (0, 0), (0, 5)]:
        a = torch.zeros(0, N, 2, requires_grad=True)
        b = torch.zeros(0, M, 2)
        d_ab, d_ba, i_ab, i_ba = chamfer_distance(a, b)
        assert d_ab.shape == (0, N) and d_ba.shape == (0, M)
        assert i_ab.shape == (0, N) and i_ab.dtype == torch.long and i_ba.shape == (0, M)
        (d_ab.sum() + d_ba.sum()).backward()
        assert a.grad.shape == a.shape
    out = chamfer_distance(torch.rand(2, 3, 2, dtype=torch.float64),
                           torch.rand(2, 4, 2, dtype=torch.float64))
    assert out[0].dtype == torch.float64 and out[2].dtype == torch.long
    with pytest.raises(ValueError, match=r"\[P, N, 2\]"):
        chamfer_distance(torch.zeros(2, 3, 3), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="instance counts"):
        chamfer_distance(torch.zeros(2, 3, 2), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(torch.zeros(2, 0, 2), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="dtype"):
        chamfer_distance(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        chamfer_distance(torch.zeros(1, 3, 2, dtype=torch.long),
                         torch.zeros(1, 3, 2, dtype=torch.long))


def test_chamfer_loss_from_the_reference_equals_chamfer_loss_2d():
    """``chamfer_loss_2d``'s value and gradients from the op's distances:
    ``(mean_n sqrt(clamp(dist_ab, eps)) + mean_m sqrt(clamp(dist_ba, eps))) / 2``."""
    g = torch.Generator().manual_seed(9)
    pred = torch.rand(4, 30, 2, generator=g) * 10
    tgt = torch.rand(4, 23, 2, generator=g) * 10
    tgt[1, :5] = pred[1, 3]  # coincident points and duplicated targets
    eps = 1e-12

    def from_op(p, t):
        d_ab, d_ba, _, _ = chamfer_distance_reference(p, t)
        return (d_ab.clamp(min=eps).sqrt().mean(1) + d_ba.clamp(min=eps).sqrt().mean(1)) * 0.5

    pa, ta = pred.clone().requires_grad_(True), tgt.clone().requires_grad_(True)
    pb, tb = pred.clone().requires_grad_(True), tgt.clone().requires_grad_(True)
    la, lb = from_op(pa, ta), chamfer_loss_2d(pb, tb, eps=eps)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-7)
    w = torch.arange(1.0, 5.0)
    ga = torch.autograd.grad((la * w).sum(), (pa, ta))
    gb = torch.autograd.grad((lb * w).sum(), (pb, tb))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- dispatcher

def test_dispatcher_and_loss_on_cpu_do_not_load_the_extension(monkeypatch):
    def no_load():
        raise AssertionError("the extension must not be loaded for CPU tensors")

    monkeypatch.setattr(chamfer_op, "load_chamfer_2d_ext", no_load)
    case = _int_case(10, 3, 9, 6)
    _assert_same(_run(chamfer_distance, *case), _run(chamfer_distance_reference, *case))
    assert chamfer_loss_2d(case[0].float(), case[1].float()).shape == (3,)


def test_build_dir_layout_and_build_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("DETLAB_CUDA_CACHE", str(tmp_path))
    d = extension.build_dir_for("9.0", "chamfer_2d")
    assert d.name == "chamfer_2d" and d.parent.name == "sm_90" and d.is_relative_to(tmp_path)
    assert [s.name for s in extension.OPS["chamfer_2d"].sources] == ["chamfer_2d.cpp",
                                                                     "chamfer_2d_cuda.cu"]
    assert all(s.is_file() for s in extension.OPS["chamfer_2d"].sources)
    from cuda_ops import build

    assert build.FUNCTIONS["chamfer_2d"] == ("forward", "backward")
    with pytest.raises(SystemExit):
        build.main(["--op", "chamfer"])  # argparse: not a choice


# --------------------------------------------------------------------------- kernel (CUDA)

@pytest.fixture(scope="module")
def ext():
    """The compiled extension (built or taken from the cache) on a CUDA machine."""
    return built_extension_on_gpu("chamfer_2d")


def _kernel(ext):
    return lambda x, y: _Chamfer2DCUDA.apply(x.contiguous(), y.contiguous(), ext)


def _on(case, dev):
    return tuple(t.to(dev) for t in case)


# sizes around the kernel's 256-point tiles and below the 441 points at which the RPv2 kernel
# gave NaN (Dense-RepPoints#4)
_SIZES = [(3, 1, 1), (2, 1, 7), (2, 9, 1), (4, 17, 33), (2, 255, 256), (2, 257, 100),
          (3, 440, 81), (2, 441, 441), (1, 600, 513)]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_with_ties(ext, dtype):
    dev = torch.device("cuda")
    for seed, (P, N, M) in enumerate(_SIZES):
        case = _int_case(seed, P, N, M, hi=6, dtype=dtype)
        want = _run(chamfer_distance_reference, *case)
        got = _run(_kernel(ext), *_on(case, dev))
        _assert_same(got, want)  # integer-valued: sums exact, same argmin everywhere
        assert all(torch.isfinite(t).all() for t in got[:2] + got[4:])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_random_below_441_points(ext, dtype):
    """Continuous coordinates, every size from 1 to 440 in steps: same distances and indices
    as the reference (the same rounding), finite gradients equal up to summation order."""
    dev = torch.device("cuda")
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for k, n in enumerate([1, 2, 5, 31, 32, 63, 100, 200, 255, 256, 300, 399, 440]):
        case = _float_case(100 + k, 3, n, max(1, 441 - n - 1), dtype)
        want = _run(chamfer_distance_reference, *case)
        got = _run(_kernel(ext), *_on(case, dev))
        _assert_same(got, want, grad_tol=tol)
        assert all(torch.isfinite(t).all() for t in got[:2] + got[4:])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_large_729_points_40_instances(ext, dtype):
    dev = torch.device("cuda")
    case = _float_case(11, 40, 729, 729, dtype)
    want = _run(chamfer_distance_reference, *_on(case, dev))  # the reference on the GPU
    got = _run(_kernel(ext), *_on(case, dev))
    _assert_same(got, want, grad_tol=1e-12 if dtype == torch.float64 else 1e-5)
    want_cpu = _run(chamfer_distance_reference, *case)
    for x, y in zip(got[:4], want_cpu[:4]):
        assert torch.equal(x.cpu(), y)


@needs_cuda
def test_kernel_nan_rule_and_gradcheck(ext):
    dev = torch.device("cuda")
    a = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.0, 0.0], [float("nan"), 1.0], [3.0, float("nan")]]],
                     dtype=torch.float64)
    want = chamfer_distance_reference(a, b)
    got = _kernel(ext)(a.to(dev), b.to(dev))
    for x, y in zip(got, want):
        assert torch.equal(x.cpu().isnan(), y.isnan())
        assert torch.equal(x.cpu().nan_to_num(), y.nan_to_num())
    x, y, _, _ = _float_case(12, 2, 7, 5)
    x = x.to(dev).requires_grad_(True)
    y = y.to(dev).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: _kernel(ext)(p, q)[:2], (x, y),
                                    eps=1e-6, atol=1e-8)


@needs_cuda
def test_dispatcher_and_loss_use_kernel_on_cuda_and_disable_env(ext, monkeypatch):
    dev = torch.device("cuda")
    calls: list[int] = []
    real_apply = chamfer_op._Chamfer2DCUDA.apply

    def spy(*args):
        calls.append(1)
        return real_apply(*args)

    monkeypatch.setattr(chamfer_op._Chamfer2DCUDA, "apply", spy)
    case = _int_case(13, 3, 20, 30, dtype=torch.float32)
    a_nc = case[0].to(dev).transpose(1, 2).contiguous().transpose(1, 2)  # not contiguous
    assert not a_nc.is_contiguous()
    got = _run(chamfer_distance, a_nc, *_on(case[1:], dev))
    _assert_same(got, _run(chamfer_distance_reference, *case))
    assert len(calls) == 1
    # the loss on CUDA takes the op's indices and equals the CPU loss
    pred, tgt = _float_case(14, 5, 729, 500, torch.float32)[:2]
    loss_gpu = chamfer_loss_2d(pred.to(dev), tgt.to(dev))
    assert len(calls) == 2
    torch.testing.assert_close(loss_gpu.cpu(), chamfer_loss_2d(pred, tgt), rtol=1e-6, atol=1e-7)
    # P == 0 on CUDA goes to the reference
    empty = chamfer_distance(torch.zeros(0, 4, 2, device=dev), torch.zeros(0, 3, 2, device=dev))
    assert empty[0].shape == (0, 4) and len(calls) == 2
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", "1")
    _assert_same(_run(chamfer_distance, *_on(case, dev)), _run(chamfer_distance_reference, *case))
    assert len(calls) == 2, "disabled: the reference runs"


# --------------------------------------------------------------------------- compile

@pytest.mark.skipif(os.environ.get("DETLAB_SKIP_CUDA_BUILD_TEST") == "1",
                    reason="DETLAB_SKIP_CUDA_BUILD_TEST=1 (the compile takes 30-60 s on 2 cores)")
def test_extension_compiles(monkeypatch, tmp_path):
    """Where nvcc exists (also without a GPU) the kernels must compile and load."""
    res = compile_from_scratch(monkeypatch, tmp_path, "chamfer_2d")
    for name in ("forward", "backward"):
        assert callable(getattr(res.module, name))
    # the binding's argument checks run without a GPU
    pts = torch.zeros(1, 3, 2)
    idx = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        res.module.forward(pts, pts)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        res.module.backward(pts, pts, idx, idx, torch.zeros(1, 3), torch.zeros(1, 3))
