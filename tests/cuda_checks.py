"""Shared checks of the CUDA extensions of ``cuda_ops`` (used by the per-op test files)."""
from __future__ import annotations

import time

import pytest
import torch

import cuda_ops._extension as extension


def compile_from_scratch(monkeypatch: pytest.MonkeyPatch, tmp_path, op: str) -> extension.BuildResult:
    """Build ``op``'s extension into ``tmp_path`` (not the user cache), print the time it took,
    and check that a shared library landed in ``<cache>/.../<op>``; skips where there is no
    nvcc or torch is not a CUDA build (a GPU is not needed)."""
    if extension.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc)")
    if torch.version.cuda is None:
        pytest.skip("torch is not a CUDA build")
    monkeypatch.setenv("DETLAB_CUDA_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    res = extension.build_ext(op)  # archs: env, visible GPUs, else 9.0
    print(f"\n[cuda_ops] {op} extension compiled in {time.perf_counter() - t0:.1f} s "
          f"(archs {res.arch_list}) -> {res.build_dir}")
    assert res.build_dir.is_relative_to(tmp_path) and res.build_dir.name == op
    assert list(res.build_dir.glob("*.so"))
    return res


def built_extension_on_gpu(op: str):
    """``op``'s compiled extension module (built or taken from the cache) for the kernel tests;
    skips without a CUDA device or nvcc (the kernels are then tested wherever both exist)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if extension.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc)")
    return extension.build_ext(op).module
