"""Atomic training checkpoints and exact resume.

A checkpoint holds everything a run needs to continue exactly where it stopped: model,
optimizer, LR scheduler, AMP grad scaler, the Python / NumPy / torch (CPU and CUDA) RNG
states, the epoch and the global iteration, plus a fingerprint of the configuration that
produced it. It holds tensors and plain containers only (the RNG states converted,
:func:`rng_state`) and is read with ``torch.load(weights_only=True)``: a checkpoint holding
anything else is refused, never unpickled (:func:`pipeline.weights_io.safe_torch_load`).
Files are written to a temporary name in the same directory, flushed to disk and renamed over
the target, so a kill at any moment leaves either the old or the new file, never a truncated one.

Layout of ``checkpoints/<run>/`` (the resumable state: git-ignored, no DVC output, never
pushed; a finished run's weights go to ``weights/<run>.pth``, the train stage's output)::

    epoch_0001.pth ...   full training state after each epoch (the newest ``keep_last`` are kept)
    iter_00000750.pth    full training state in the middle of an epoch, after that global
                         iteration (``train.checkpoint_every``, or a preemption signal): only the
                         newest one is kept, and it is deleted once an epoch checkpoint follows
                         it; mid-epoch checkpoints never count toward ``keep_last``
    latest.json          {"file": "epoch_0003.pth", "epoch": 3, "iteration": 750, "fingerprint": ...,
                          "mlflow_run_id": ...}  (the run a resumed training continues); a
                         mid-epoch checkpoint's record adds "batch_in_epoch" (batches of epoch
                         "epoch" + 1 already trained; "epoch" counts the finished epochs)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.weights_io import safe_torch_load


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to memory, then write the bytes atomically to ``path``.

    Saving to memory, not to the temporary file, keeps the bytes a function of ``obj`` alone:
    torch names the archive's root folder after the file it writes, and the temporary name is
    random, so a direct save gave identical weights a different hash on every save (and DVC
    a changed output after a retrain that changed nothing).
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, first 16 hex digits (names a manifest or a weights file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def config_fingerprint(cfg: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable configuration (resume only under the same one)."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """The state of every RNG the training loop draws from, as tensors and plain values only (so
    that a checkpoint loads with ``torch.load(weights_only=True)``).

    Layout: ``python``: ``{"version": int, "state": int64 tensor [625] (the Mersenne Twister
    words and position of ``random.getstate()``), "gauss_next": float or None}``; ``numpy``:
    ``{"kind": "MT19937", "keys": int64 tensor [624] (the uint32 words), "pos": int,
    "has_gauss": int, "cached_gaussian": float}``; ``torch``: the CPU generator's uint8 tensor;
    ``cuda``: a list of those, one per device, where CUDA is present. Every value converts back
    exactly (:func:`set_rng_state`), so a resumed run draws the same numbers.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor([int(x) for x in internal], dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs from :func:`rng_state`'s layout."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((str(npy["kind"]), npy["keys"].cpu().numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


class CheckpointManager:
    """Saves and finds the training checkpoints of one model in ``directory``."""

    def __init__(self, directory: Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = max(1, int(keep_last))

    @property
    def latest_file(self) -> Path:
        return self.directory / "latest.json"

    def latest(self) -> dict[str, Any] | None:
        """The record of the newest complete checkpoint, or None when there is none."""
        if not self.latest_file.exists():
            return None
        try:
            record = json.loads(self.latest_file.read_text())
        except json.JSONDecodeError as e:
            raise RuntimeError(f"{self.latest_file}: unreadable checkpoint index ({e})") from e
        if not (self.directory / record["file"]).exists():
            raise RuntimeError(
                f"{self.latest_file} names {record['file']}, which is missing from {self.directory}"
            )
        return record

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporaries a killed writer left behind (``.<name>.*.tmp``); complete files are untouched."""
        stale = list(self.directory.glob(".*.tmp")) if self.directory.exists() else []
        for p in stale:
            p.unlink()
        return stale

    def save(self, state: dict[str, Any], epoch: int, iteration: int, fingerprint: str,
             extra: dict[str, Any] | None = None, batch_in_epoch: int = 0) -> Path:
        """Write ``state`` as a checkpoint and point latest.json at it (with the ``extra`` fields,
        e.g. the MLflow run id a resumed training continues).

        ``batch_in_epoch`` 0: the checkpoint after ``epoch`` finished epochs (``epoch_<epoch>.pth``);
        more: a mid-epoch checkpoint after global iteration ``iteration``, ``batch_in_epoch``
        batches into epoch ``epoch + 1`` (``iter_<iteration>.pth``). The file is complete on disk
        before latest.json names it, and older files are removed only after (module docstring:
        which ones are kept).
        """
        if batch_in_epoch < 0:
            raise ValueError(f"batch_in_epoch must be >= 0, got {batch_in_epoch}")
        name = f"iter_{iteration:08d}.pth" if batch_in_epoch else f"epoch_{epoch:04d}.pth"
        path = self.directory / name
        atomic_torch_save(state, path)
        record = {"file": name, "epoch": epoch, "iteration": iteration, "fingerprint": fingerprint}
        if batch_in_epoch:
            record["batch_in_epoch"] = batch_in_epoch
        record.update(extra or {})
        atomic_write_text(self.latest_file, json.dumps(record, indent=2) + "\n")
        self._prune(keep=name)
        return path

    def load(self, record: dict[str, Any], map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The training state of ``record``'s file, read with ``torch.load(weights_only=True)``.

        Raises:
            WeightsError: naming the file, when it is corrupt or holds objects other than tensors
                and plain containers (never loaded, for safety; never silently replaced).
        """
        path = self.directory / record["file"]
        remedy = (f"move {self.directory} aside (or train with --no-resume, which does) to start the run "
                  f"afresh")
        return safe_torch_load(path, remedy, map_location=map_location, what="checkpoint")

    def set_aside(self, reason: str) -> Path | None:
        """Move the current checkpoints to ``previous/`` (keeping one generation) before a fresh start."""
        files = [p for p in self.directory.glob("*") if p.is_file()]
        if not files:
            return None
        prev = self.directory / "previous"
        if prev.exists():
            for p in prev.glob("*"):
                p.unlink()
        prev.mkdir(parents=True, exist_ok=True)
        for p in files:
            os.replace(p, prev / p.name)
        (prev / "REASON.txt").write_text(reason + "\n")
        return prev

    def _prune(self, keep: str) -> None:
        """Keep the newest ``keep_last`` epoch checkpoints and no mid-epoch one but ``keep`` (the
        file latest.json now names): a mid-epoch checkpoint is superseded by any later one."""
        epochs = sorted(self.directory.glob("epoch_*.pth"))
        for p in epochs[: -self.keep_last]:
            if p.name != keep:
                p.unlink()
        for p in self.directory.glob("iter_*.pth"):
            if p.name != keep:
                p.unlink()
