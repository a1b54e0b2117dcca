"""The on-first-use loaders of every CUDA extension of ``cuda_ops`` (deformable RoI pooling,
corner pooling, Chamfer distance): without CUDA they return None with one warning; a failed
build is remembered per op (one warning, no second attempt) and does not block the other ops;
``DETLAB_DISABLE_CUDA_OPS`` is checked on every call. The kernels themselves are tested in
the per-op files."""
from __future__ import annotations

import logging

import pytest

import cuda_ops._extension as extension

OPS = sorted(extension.OPS)


def _loader(op: str):
    return getattr(extension, f"load_{op}_ext")


def test_every_op_has_a_loader_and_a_builder():
    assert OPS == ["chamfer_2d", "corner_pool", "deform_roi_pool"]
    for op in OPS:
        assert callable(_loader(op)) and callable(getattr(extension, f"build_{op}_ext"))


@pytest.mark.parametrize("op", OPS)
def test_loader_without_cuda_returns_none_once(op, monkeypatch, fresh_loader, caplog):
    monkeypatch.delenv("DETLAB_DISABLE_CUDA_OPS", raising=False)
    monkeypatch.setattr(extension.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=extension.__name__):
        assert _loader(op)() is None
        assert _loader(op)() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and op in warnings[0] and "CUDA is not available" in warnings[0]


@pytest.mark.parametrize("op", OPS)
def test_failed_build_is_remembered_per_op_and_disable_is_honoured(op, monkeypatch, fresh_loader, caplog):
    other = OPS[(OPS.index(op) + 1) % len(OPS)]
    calls: list[str] = []

    def failing(name: str):
        def build(*a, **k):
            calls.append(name)
            raise RuntimeError(f"simulated {name} compiler failure")
        return build

    for name in (op, other):
        monkeypatch.setattr(extension, f"build_{name}_ext", failing(name))
    monkeypatch.setattr(extension.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extension, "find_cuda_home", lambda: "/fake/cuda")
    monkeypatch.setattr(extension.torch.version, "cuda", "13.0")
    monkeypatch.setenv("DETLAB_DISABLE_CUDA_OPS", "1")
    assert _loader(op)() is None
    assert calls == [], "disabled: no build attempted"
    monkeypatch.delenv("DETLAB_DISABLE_CUDA_OPS")
    with caplog.at_level(logging.WARNING, logger=extension.__name__):
        assert _loader(op)() is None
        assert _loader(op)() is None  # remembered: no second build
        assert _loader(other)() is None  # another op still tries its own
    assert calls == [op, other]
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 2 and op in msgs[0] and f"simulated {op} compiler failure" in msgs[0]
