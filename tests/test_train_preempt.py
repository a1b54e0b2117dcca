"""Preemption-safe training: mid-epoch checkpoints every ``train.checkpoint_every`` iterations
resume exactly, and SIGTERM / SIGUSR1 stop a training after the current iteration with a
checkpoint there, status 75 and the MLflow run KILLED and tagged; the resume ends where an
uninterrupted training does. Real subprocesses (tests/train_worker.py), real signals, bounded waits.

The verdicts compare two trainings on the same machine, so they hold under any CPU kernel set
(``ATEN_CPU_CAPABILITY=avx2`` or ``default``: both runs use the same one)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import CheckpointManager
from pipeline.data import GroupedBatchSampler
from pipeline.engine import EXIT_PREEMPTED, SkipBatches, StopRequest
from tests.conftest import REPO, TINY_MODEL
from tests.test_train_kill import loss_steps, run_status, train_run_ids

WORKER = str(REPO / "tests" / "train_worker.py")
# tests/train_worker.py: 16 images at 4 per batch, 3 epochs: 4 iterations per epoch, 12 in all


def env() -> dict[str, str]:
    """The environment of a worker, read at call time: the session's MLflow store (conftest sets
    it when the tests start), one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def worker_cmd(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, WORKER, "--manifest", str(manifest), "--out", str(out), *extra]


def run_worker(manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(manifest, out, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env())


def wait_for_record(proc: subprocess.Popen, latest: Path, ready, timeout: float = 300) -> dict | None:
    """Poll ``latest.json`` until ``ready(record)`` holds (returns it) or the process ends / time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            record = json.loads(latest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            record = None
        if record is not None and ready(record):
            return record
        time.sleep(0.01)
    return None


def final_model(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt" / f"{TINY_MODEL}.pth", weights_only=True)["model"]


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after {what}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_prepared, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final parameters of the training no one interrupts (epoch checkpoints only, no DataLoader worker)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    full = run_worker(tiny_prepared, out)
    assert full.returncode == 0, full.stderr[-3000:]
    return final_model(out)


def test_sigkill_right_after_a_mid_epoch_checkpoint_then_resume(tiny_prepared, tmp_path, uninterrupted,
                                                                  isolated_mlflow_store):
    out = tmp_path / "killed"
    ckpt_dir = out / "ckpt" / TINY_MODEL
    # checkpoints after iterations 4 (epoch 1), 5 (mid-epoch: epoch 2, batch 1), 8, 10 (mid), 12
    proc = subprocess.Popen(worker_cmd(tiny_prepared, out, "--checkpoint-every", "5"), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record = wait_for_record(proc, ckpt_dir / "latest.json", lambda r: r.get("batch_in_epoch"))
    os.kill(proc.pid, signal.SIGKILL)  # a real kill: no handler runs
    _, stderr = proc.communicate(timeout=60)
    assert record is not None, "no mid-epoch checkpoint before the end: " + stderr[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "ckpt" / f"{TINY_MODEL}.pth").exists()
    record = json.loads((ckpt_dir / "latest.json").read_text())
    assert record["file"] == "iter_00000005.pth", record  # killed before the next checkpoint (iteration 8)
    assert (record["epoch"], record["batch_in_epoch"], record["iteration"]) == (1, 1, 5)
    state = torch.load(ckpt_dir / record["file"], weights_only=True)  # complete and safe to load
    assert (state["epoch"], state["batch_in_epoch"], state["iteration"]) == (1, 1, 5)
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["epoch_0001.pth", "iter_00000005.pth"]

    resumed = run_worker(tiny_prepared, out, "--checkpoint-every", "5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(epoch 1 + 1 batches, iteration 5)" in resumed.stdout + resumed.stderr
    assert_same_parameters(uninterrupted, final_model(out), "SIGKILL + resume from a mid-epoch checkpoint")
    # the epoch checkpoint after iteration 12 replaced the mid-epoch one of iteration 10
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["epoch_0002.pth", "epoch_0003.pth"]
    db = isolated_mlflow_store / "mlflow.db"
    assert run_status(db, record["mlflow_run_id"]) == "FINISHED"
    assert loss_steps(db, record["mlflow_run_id"]) == list(range(1, 13))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_preemption_signal_checkpoints_the_iteration_and_exits_75(tiny_prepared, tmp_path, uninterrupted,
                                                                    isolated_mlflow_store, signum):
    """Epoch checkpoints only (checkpoint_every 0) and one DataLoader worker: the checkpoint the
    signal makes is mid-epoch, and a worker process changes no result."""
    out = tmp_path / "preempted"
    ckpt_dir = out / "ckpt" / TINY_MODEL
    proc = subprocess.Popen(worker_cmd(tiny_prepared, out, "--num-workers", "1"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_record(proc, ckpt_dir / "latest.json", lambda r: r["epoch"] >= 1) is not None, \
            "training ended before it could be signalled"
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, output[-3000:]
    record = json.loads((ckpt_dir / "latest.json").read_text())
    assert 4 < record["iteration"] < 12, record  # the iteration running when the signal came, not epoch 1's
    name = signal.Signals(signum).name
    assert f"[train] {name}: stopped after iteration {record['iteration']}/12" in output
    state = torch.load(ckpt_dir / record["file"], weights_only=True)
    assert state["iteration"] == record["iteration"]
    assert "Traceback" not in output
    db = isolated_mlflow_store / "mlflow.db"
    run_id = record["mlflow_run_id"]
    assert run_status(db, run_id) == "KILLED"
    assert run_tags(db, run_id)["detlab.preempted"] == "true"
    assert run_tags(db, run_id)["detlab.preempted_at_iteration"] == str(record["iteration"])
    before = len(train_run_ids(db))

    resumed = run_worker(tiny_prepared, out, "--num-workers", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_parameters(uninterrupted, final_model(out), f"{name} + resume")
    assert len(train_run_ids(db)) == before and run_status(db, run_id) == "FINISHED"
    assert loss_steps(db, run_id) == list(range(1, 13))


def run_tags(db: Path, run_id: str) -> dict[str, str]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
    finally:
        con.close()


# ---------------------------------------------------------------------------------- small units
def test_an_epochs_batches_depend_on_seed_and_epoch_only():
    """What exact mid-epoch resume rests on: the batch order is reproduced from (seed, epoch)
    by a fresh sampler, and skipping k batches gives the rest of that order."""
    ratios = [0.5, 1.5, 1.0, 0.7, 2.0, 1.2, 0.9, 1.1, 0.6, 1.3, 1.4]
    a = GroupedBatchSampler(ratios, 2, seed=3)
    a.set_epoch(0)
    list(a)  # another epoch drawn first changes nothing
    a.set_epoch(2)
    b = GroupedBatchSampler(ratios, 2, seed=3)
    b.set_epoch(2)
    assert list(a) == list(b)
    for k in range(len(b) + 1):
        assert list(SkipBatches(b, k)) == list(b)[k:] and len(SkipBatches(b, k)) == len(b) - k
    with pytest.raises(ValueError):
        SkipBatches(b, len(b) + 1)


def test_mid_epoch_checkpoints_are_kept_apart_from_the_last_n(tmp_path):
    m = CheckpointManager(tmp_path / "m", keep_last=2)
    state = {"x": torch.zeros(1)}
    m.save(state, 1, 10, "f")
    m.save(state, 1, 13, "f", batch_in_epoch=3)
    m.save(state, 1, 16, "f", batch_in_epoch=6)  # replaces the one of iteration 13
    assert sorted(p.name for p in m.directory.glob("*.pth")) == ["epoch_0001.pth", "iter_00000016.pth"]
    assert m.latest() == {"file": "iter_00000016.pth", "epoch": 1, "iteration": 16, "fingerprint": "f",
                          "batch_in_epoch": 6}
    m.save(state, 2, 20, "f")
    m.save(state, 3, 30, "f")
    assert sorted(p.name for p in m.directory.glob("*.pth")) == ["epoch_0002.pth", "epoch_0003.pth"]


def test_a_stop_request_keeps_the_first_signal():
    r = StopRequest()
    assert not r.requested
    r.set(signal.SIGUSR1)
    r.set(signal.SIGTERM)
    assert r.requested and r.name == "SIGUSR1"
