"""benchmarks/gpu_check.py documents itself and, without CUDA, skips with exit status 0 (the
GPU run itself is never part of CI)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_help_documents_the_check():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--out", "1333 x 800", "SYNTHETIC", "max_memory_allocated", "skipped"):
        assert word in out, word


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path needs a machine without CUDA")
def test_without_cuda_it_skips_with_status_0(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "g.json")], capture_output=True, text=True)
    assert res.returncode == 0 and "skipped" in res.stdout and not (tmp_path / "g.json").exists()
