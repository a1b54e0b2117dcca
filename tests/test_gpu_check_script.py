"""benchmarks/gpu_check.py documents itself and, without CUDA, skips with exit status 0 (the
GPU run itself is never part of CI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_help_documents_the_check():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--out", "1333 x 800", "SYNTHETIC", "max_memory_allocated", "skipped"):
        assert word in out, word


def test_without_cuda_it_skips_with_status_0(tmp_path):
    """With no CUDA device visible (hidden on a GPU machine too), the script skips cleanly."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "g.json")], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0 and "skipped" in res.stdout and not (tmp_path / "g.json").exists()
