"""Two-process DDP over gloo on CPU, launched with torchrun as the train stage would."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.conftest import REPO, TINY_MODEL


def test_two_process_gloo_training_keeps_parameters_equal(tiny_prepared, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "ddp_worker.py"), "--manifest", str(tiny_prepared), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    p0 = torch.load(tmp_path / "params_rank0.pt")
    p1 = torch.load(tmp_path / "params_rank1.pt")
    assert p0.keys() == p1.keys() and len(p0) > 10
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"parameter {k} differs across ranks"
    metrics = json.loads((tmp_path / "metrics" / TINY_MODEL / "train.json").read_text())
    # 16 images, 4 per process, 2 processes: 2 iterations per epoch, 2 epochs (one process: 8).
    assert metrics["iterations"] == 4
