"""The CUDA kernel of ``cuda_ops.deform_roi_pool`` against the PyTorch reference, the
dispatcher's fallback, and the extension's compile.

- Kernel tests need a CUDA device (skipped otherwise) and nvcc; on a GPU machine with nvcc a
  failed build is an error, not a skip.
- Dispatcher tests run anywhere (CPU: the reference; the grid_sample form equals it;
  DETLAB_DISABLE_CUDA_OPS).
- The compile test runs wherever nvcc exists, GPU or not (it compiles from scratch into a
  temporary cache, about 40 s on 2 cores); ``DETLAB_SKIP_CUDA_BUILD_TEST=1`` skips it.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

import cuda_ops._extension as extension
from tests.cuda_checks import built_extension_on_gpu, compile_from_scratch
from cuda_ops.deform_roi_pool import (
    DeformRoIPool,
    _deform_roi_pool_cuda,
    deform_roi_pool,
    deform_roi_pool_reference,
)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def _case(seed: int, n_rois: int = 12, B: int = 3, C: int = 5, H: int = 9, W: int = 11,
          stride: int = 4, Q: int = 3, dtype: torch.dtype = torch.float64
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """features [B, C, H, W], rois [N, 5] (input pixels, spilling past every border, with
    exact .5 corners for round()), offsets [N, 2, Q, Q]; CPU."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    img_w, img_h = W * stride, H * stride
    x1 = torch.rand(n_rois, generator=g, dtype=torch.float64) * (img_w + 20) - 20
    y1 = torch.rand(n_rois, generator=g, dtype=torch.float64) * (img_h + 20) - 20
    bw = torch.rand(n_rois, generator=g, dtype=torch.float64) * img_w * 0.8
    bh = torch.rand(n_rois, generator=g, dtype=torch.float64) * img_h * 0.8
    b = torch.randint(0, B, (n_rois,), generator=g).double()
    rois = torch.stack([b, x1, y1, x1 + bw, y1 + bh], dim=1)
    rois[0, 1:] = torch.tensor([2.5, 3.5, 20.5, 17.5], dtype=torch.float64)
    rois[1, 1:] = torch.tensor([-2.5, -6.5, 10.5, 30.5], dtype=torch.float64)
    rois[2, 1:] = torch.tensor([200.0, 150.0, 260.0, 190.0], dtype=torch.float64)  # off the map
    rois[3, 1:] = torch.tensor([7.0, 7.0, 7.0, 7.0], dtype=torch.float64)  # degenerate
    offsets = torch.randn(n_rois, 2, Q, Q, generator=g, dtype=torch.float64) * 2.0
    return feats.to(dtype), rois.to(dtype), offsets.to(dtype)


def _grads(fn, feats: torch.Tensor, offsets: torch.Tensor | None, grad_out: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(output, d features, d offsets) of ``fn(features, offsets)`` for ``grad_out``."""
    f = feats.detach().clone().requires_grad_(True)
    o = None if offsets is None else offsets.detach().clone().requires_grad_(True)
    out = fn(f, o)
    out.backward(grad_out)
    return out.detach(), f.grad, None if o is None else o.grad


@pytest.fixture(scope="module")
def ext():
    """The compiled extension (built or taken from the cache) on a CUDA machine."""
    return built_extension_on_gpu("deform_roi_pool")


# --------------------------------------------------------------------------- kernel (CUDA)

@needs_cuda
@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("P,Q", [(3, 3), (4, 2), (14, 7)])
@pytest.mark.parametrize("with_offsets", [True, False])
def test_kernel_matches_reference_float64(ext, S, P, Q, with_offsets):
    feats, rois, offsets = _case(seed=100 * S + 10 * P + Q, Q=Q)
    off = offsets if with_offsets else None
    args = (0.25, P, Q, S, 0.1)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(rois.shape[0], feats.shape[1], P, P, generator=g, dtype=torch.float64)

    ref, ref_gf, ref_go = _grads(lambda f, o: deform_roi_pool_reference(f, rois, o, *args),
                                 feats, off, grad_out)
    dev = torch.device("cuda")
    rois_d = rois.to(dev)
    out, gf, go = _grads(lambda f, o: _deform_roi_pool_cuda(ext, f, rois_d, o, *args),
                         feats.to(dev), None if off is None else off.to(dev), grad_out.to(dev))
    assert out.shape == (rois.shape[0], feats.shape[1], P, P)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gf.cpu(), ref_gf, rtol=1e-10, atol=1e-10)
    if with_offsets:
        torch.testing.assert_close(go.cpu(), ref_go, rtol=1e-9, atol=1e-9)
    assert (ref != 0).any() and (ref_gf != 0).any()
    assert (ref[2] == 0).all(), "the off-map RoI pools to 0"


@needs_cuda
def test_dispatcher_uses_kernel_on_cuda_and_disable_env(ext, monkeypatch):
    feats, rois, offsets = _case(seed=5, Q=7)
    dev = torch.device("cuda")
    f, r, o = feats.to(dev), rois.to(dev), offsets.to(dev)
    kernel = _deform_roi_pool_cuda(ext, f, r, o, 0.25, 14, 7, 2, 0.1)
    assert torch.equal(deform_roi_pool(f, r, o, 0.25, 14, 7, 2, 0.1), kernel)
    mod = DeformRoIPool(14, 7, 2, 0.1, 0.25)
    assert torch.equal(mod(f, r, o), kernel)
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", "1")
    ref = deform_roi_pool_reference(f, r, o, 0.25, 14, 7, 2, 0.1)
    assert torch.equal(deform_roi_pool(f, r, o, 0.25, 14, 7, 2, 0.1), ref)


@needs_cuda
def test_kernel_large_offsets_float32_and_half(ext):
    feats, rois, offsets = _case(seed=3, Q=7)
    offsets = offsets * 10.0  # pushes many samples off the map: all-skipped bins
    ref = deform_roi_pool_reference(feats, rois, offsets, 0.25, 7, 7, 2, 0.1)
    assert (ref == 0).all(dim=1).any()
    dev = torch.device("cuda")
    out32 = _deform_roi_pool_cuda(ext, feats.float().to(dev), rois.float().to(dev),
                                  offsets.float().to(dev), 0.25, 7, 7, 2, 0.1)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double().cpu(), ref, rtol=1e-4, atol=1e-5)
    out16 = deform_roi_pool(feats.half().to(dev), rois.to(dev), offsets.to(dev),
                            0.25, 7, 7, 2, 0.1)
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.double().cpu(), ref, rtol=1e-2, atol=1e-2)
    # all-skipped bins get no gradient either
    f = feats.to(dev).requires_grad_(True)
    o = offsets.to(dev).requires_grad_(True)
    out = _deform_roi_pool_cuda(ext, f, rois.to(dev), o, 0.25, 7, 7, 2, 0.1)
    out.sum().backward()
    _, ref_gf, ref_go = _grads(lambda a, b: deform_roi_pool_reference(a, rois, b, 0.25, 7, 7, 2,
                                                                      0.1),
                               feats, offsets, torch.ones_like(ref))
    torch.testing.assert_close(f.grad.cpu(), ref_gf, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o.grad.cpu(), ref_go, rtol=1e-9, atol=1e-9)


@needs_cuda
def test_kernel_gradcheck(ext):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64).to(dev)
    rois = torch.tensor([[0, 3.0, 2.0, 17.0, 14.0],
                         [1, -4.0, 5.0, 11.0, 25.0],
                         [1, 10.0, 1.0, 22.0, 9.0]], dtype=torch.float64, device=dev)
    offsets = (torch.rand(3, 2, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.05).to(dev)
    feats.requires_grad_(True)
    offsets.requires_grad_(True)

    def fn(f: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return _deform_roi_pool_cuda(ext, f, rois, o, 1.0 / 3.0, 3, 3, 2, 0.1)

    # samples at thirds/sixths of a pixel plus small offsets stay off the integer grid
    assert torch.autograd.gradcheck(fn, (feats, offsets), eps=1e-6, atol=1e-7)


@needs_cuda
def test_kernel_empty_rois_and_no_offsets_grad(ext):
    dev = torch.device("cuda")
    feats = torch.randn(1, 5, 4, 4, device=dev)
    assert deform_roi_pool(feats, torch.zeros(0, 5, device=dev), None, 0.25, 7, 7, 2,
                           0.1).shape == (0, 5, 7, 7)
    _, rois, offsets = _case(seed=2, Q=3, dtype=torch.float32)
    f = torch.randn(3, 5, 9, 11, device=dev, requires_grad=True)
    out = deform_roi_pool(f, rois.to(dev), offsets.to(dev), 0.25, 3, 3, 2, 0.1)  # no grad to o
    out.sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


# --------------------------------------------------------------------------- dispatcher

def test_dispatcher_on_cpu_is_the_reference_and_the_grid_sample_form_equals_it(monkeypatch):
    """Without a kernel the dispatcher pools through the reference; with random offsets no
    sample sits on an integer row/column, so the ``grid_sample`` form's values and both
    gradients equal it."""
    import cuda_ops.deform_roi_pool as drp

    def no_load():
        raise AssertionError("the extension must not be loaded for CPU tensors")

    monkeypatch.setattr(drp, "load_deform_roi_pool_ext", no_load)
    feats, rois, offsets = _case(seed=11, Q=7)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(rois.shape[0], feats.shape[1], 14, 14, generator=g,
                           dtype=torch.float64)
    for off in (offsets, None):
        a = _grads(lambda f, o: deform_roi_pool(f, rois, o, 0.25, 14, 7, 2, 0.1), feats, off,
                   grad_out)
        b = _grads(lambda f, o: deform_roi_pool_reference(f, rois, o, 0.25, 14, 7, 2, 0.1),
                   feats, off, grad_out)
        c = _grads(lambda f, o: drp.deform_roi_pool_sampled(f, rois, o, 0.25, 14, 7, 2, 0.1),
                   feats, off, grad_out)
        for x, y, z in zip(a, b, c):
            assert (x is None and y is None and z is None) or (
                torch.equal(x, y) and torch.allclose(z, y, rtol=1e-9, atol=1e-10))
    mod = DeformRoIPool(14, 7, 2, 0.1, 0.25)
    assert torch.allclose(mod(feats, rois, offsets),
                          deform_roi_pool_reference(feats, rois, offsets, 0.25, 14, 7, 2, 0.1), atol=1e-10)
    with pytest.raises(ValueError, match="offsets must be"):
        deform_roi_pool(feats, rois, offsets[:, :, :2], 0.25, 14, 7, 2, 0.1)


@pytest.mark.parametrize("value,disabled", [("1", True), ("true", True), ("0", False),
                                            ("", False)])
def test_disable_env_values(monkeypatch, value, disabled):
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", value)
    assert extension.cuda_ops_disabled() is disabled


def test_disable_env_is_honoured_and_not_remembered(monkeypatch, fresh_loader, caplog):
    calls: list[int] = []

    def fake_build(*a, **k):
        calls.append(1)
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(extension, "build_deform_roi_pool_ext", fake_build)
    monkeypatch.setattr(extension.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extension, "find_cuda_home", lambda: "/fake/cuda")
    monkeypatch.setattr(extension.torch.version, "cuda", "13.0")
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", "1")
    assert extension.load_deform_roi_pool_ext() is None
    assert calls == [], "disabled: no build attempted"
    monkeypatch.delenv("DETLAB_DISABLE_CUDA_OPS")
    with caplog.at_level(logging.WARNING, logger=extension.__name__):
        assert extension.load_deform_roi_pool_ext() is None
        assert extension.load_deform_roi_pool_ext() is None
    assert calls == [1], "the failed build is remembered, not retried"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "simulated compiler failure" in warnings[0].getMessage()


def test_build_dir_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("DETLAB_CUDA_CACHE", str(tmp_path))
    d = extension.build_dir_for("8.0;9.0+PTX")
    assert d.parent.name == "sm_80-sm_90ptx"
    assert d.is_relative_to(tmp_path) and torch.__version__.split("+")[0] in str(d)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert extension.resolve_arch_list() == "8.6"
    assert extension.resolve_arch_list("9.0") == "9.0"


# --------------------------------------------------------------------------- compile

@pytest.mark.skipif(os.environ.get("DETLAB_SKIP_CUDA_BUILD_TEST") == "1",
                    reason="DETLAB_SKIP_CUDA_BUILD_TEST=1 (the compile takes ~40 s on 2 cores)")
def test_extension_compiles(monkeypatch, tmp_path):
    """Where nvcc exists (also without a GPU) the kernel must compile and load."""
    res = compile_from_scratch(monkeypatch, tmp_path, "deform_roi_pool")
    for name in ("forward", "backward_features", "backward_offsets"):
        assert callable(getattr(res.module, name))
    # the binding's argument checks run without a GPU
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        res.module.forward(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), None, 1.0, 2, 2, 1, 0.1)
