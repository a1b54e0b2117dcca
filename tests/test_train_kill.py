"""A training process killed with SIGKILL or stopped with SIGTERM loses nothing: the checkpoints
and the MLflow store stay readable, the resumed run ends exactly where an uninterrupted one does,
and the whole training is one MLflow run holding every step once."""
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


def wait_for_epoch(proc: subprocess.Popen, latest: Path, epoch: int, timeout: float = 300) -> None:
    """Until the training in ``proc`` has checkpointed ``epoch`` (its ``latest.json``) or ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["epoch"] >= epoch:
            return
        time.sleep(0.02)


def test_sigkill_during_training_then_resume(tiny_prepared, tmp_path, isolated_mlflow_store):
    full = subprocess.run([sys.executable, WORKER, "--manifest", str(tiny_prepared), "--out", str(tmp_path / "full")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    latest = out / "ckpt" / TINY_MODEL / "latest.json"
    proc = start(tiny_prepared, out)
    wait_for_epoch(proc, latest, 1)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "ckpt" / f"{TINY_MODEL}.pth").exists()
    record = json.loads(latest.read_text())
    state = torch.load(out / "ckpt" / TINY_MODEL / record["file"], weights_only=True)  # not truncated
    assert state["epoch"] == record["epoch"]

    # The store is intact and still readable after the kill (a SIGKILLed run stays RUNNING).
    db = isolated_mlflow_store / "mlflow.db"
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    con.close()
    run_id = record["mlflow_run_id"]
    assert run_status(db, run_id) == "RUNNING"
    train_runs = len(train_run_ids(db))

    resumed = subprocess.run([sys.executable, WORKER, "--manifest", str(tiny_prepared), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert not list((out / "ckpt" / TINY_MODEL).glob(".*.tmp"))  # a temporary left by the kill is cleaned up
    a = torch.load(tmp_path / "full" / "ckpt" / f"{TINY_MODEL}.pth", weights_only=True)["model"]
    b = torch.load(out / "ckpt" / f"{TINY_MODEL}.pth", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill + resume"
    # one MLflow run for the whole training: continued, finished, every step once
    assert len(train_run_ids(db)) == train_runs and run_status(db, run_id) == "FINISHED"
    assert loss_steps(db, run_id) == list(range(1, 13))  # 16 images / 4 per batch x 3 epochs


def run_status(db: Path, run_id: str) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0]
    finally:
        con.close()


def train_run_ids(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r for (r,) in con.execute("select run_uuid from runs where name = ?", (f"train/{TINY_MODEL}",))]
    finally:
        con.close()


def loss_steps(db: Path, run_id: str) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [s for (s,) in con.execute("select step from metrics where run_uuid = ? and key = 'train/loss' "
                                          "order by step", (run_id,))]
    finally:
        con.close()


def test_sigterm_marks_the_run_killed_and_the_resume_continues_it(tiny_prepared, tmp_path, isolated_mlflow_store):
    out = tmp_path / "stopped"
    latest = out / "ckpt" / TINY_MODEL / "latest.json"
    proc = start(tiny_prepared, out)
    wait_for_epoch(proc, latest, 1)
    assert proc.poll() is None, "training finished before it could be stopped: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    db = isolated_mlflow_store / "mlflow.db"
    run_id = json.loads(latest.read_text())["mlflow_run_id"]
    assert run_status(db, run_id) == "KILLED"  # not left RUNNING
    before = len(train_run_ids(db))
    resumed = subprocess.run([sys.executable, WORKER, "--manifest", str(tiny_prepared), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(train_run_ids(db)) == before and run_status(db, run_id) == "FINISHED"
    assert loss_steps(db, run_id) == list(range(1, 13))
