"""A training process killed with SIGKILL loses nothing: the checkpoints and the MLflow store
stay readable and the resumed run ends exactly where an uninterrupted one does."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import REPO, TINY_MODEL

WORKER = str(REPO / "tests" / "train_worker.py")


def start(manifest: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, "--manifest", str(manifest), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_training_then_resume(tiny_prepared, tmp_path, isolated_mlflow_store):
    full = subprocess.run([sys.executable, WORKER, "--manifest", str(tiny_prepared), "--out", str(tmp_path / "full")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    latest = out / "ckpt" / TINY_MODEL / "latest.json"
    proc = start(tiny_prepared, out)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "ckpt" / f"{TINY_MODEL}.pth").exists()
    record = json.loads(latest.read_text())
    state = torch.load(out / "ckpt" / TINY_MODEL / record["file"], weights_only=False)  # not truncated
    assert state["epoch"] == record["epoch"]

    # The store is intact and still readable after the kill (the killed run stays RUNNING).
    db = isolated_mlflow_store / "mlflow.db"
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    con.close()

    resumed = subprocess.run([sys.executable, WORKER, "--manifest", str(tiny_prepared), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert not list((out / "ckpt" / TINY_MODEL).glob(".*.tmp"))  # a temporary left by the kill is cleaned up
    a = torch.load(tmp_path / "full" / "ckpt" / f"{TINY_MODEL}.pth", weights_only=False)["model"]
    b = torch.load(out / "ckpt" / f"{TINY_MODEL}.pth", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill + resume"
