"""LR schedule, atomic checkpoints and the checkpoint manager."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.checkpoint import CheckpointManager, atomic_torch_save, config_fingerprint
from pipeline.engine import WarmupStepSchedule


def test_warmup_then_steps():
    s = WarmupStepSchedule(iters_per_epoch=10, lr_steps=[2, 2.5], gamma=0.1, warmup_iters=4, warmup_ratio=0.2)
    assert s(0) == pytest.approx(0.2)
    assert s(2) == pytest.approx(0.2 + 0.8 * 2 / 4)
    assert s(4) == pytest.approx(1.0)
    assert s(19) == pytest.approx(1.0)
    assert s(20) == pytest.approx(0.1)
    assert s(24) == pytest.approx(0.1)
    assert s(25) == pytest.approx(0.01)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"v": torch.tensor([1.0])}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_torch_save({"v": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary left behind

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the write of the bytes fails this time
    with pytest.raises(OSError):
        atomic_torch_save({"v": torch.tensor([3.0])}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_atomic_save_gives_the_same_bytes_for_the_same_object(tmp_path):
    """DVC hashes the final weights: the same weights saved twice (to different names, as a
    retrain that changed nothing does through its temporary file) must be the same bytes."""
    torch.manual_seed(0)
    state = {"model": torch.nn.Linear(3, 4).state_dict(), "config": {"a": 1}}
    atomic_torch_save(state, tmp_path / "one.pth")
    atomic_torch_save(state, tmp_path / "sub" / "two.pth")
    assert (tmp_path / "one.pth").read_bytes() == (tmp_path / "sub" / "two.pth").read_bytes()


def test_manager_saves_prunes_and_sets_aside(tmp_path):
    m = CheckpointManager(tmp_path / "m", keep_last=2)
    assert m.latest() is None
    for e in (1, 2, 3):
        m.save({"epoch": e}, epoch=e, iteration=10 * e, fingerprint="abc")
    rec = m.latest()
    assert rec == {"file": "epoch_0003.pth", "epoch": 3, "iteration": 30, "fingerprint": "abc"}
    assert sorted(p.name for p in (tmp_path / "m").glob("epoch_*")) == ["epoch_0002.pth", "epoch_0003.pth"]
    assert m.load(rec)["epoch"] == 3
    prev = m.set_aside("test")
    assert m.latest() is None and (prev / "epoch_0003.pth").exists() and (prev / "REASON.txt").exists()


def test_latest_pointing_at_a_missing_file_is_an_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "latest.json").write_text(json.dumps({"file": "epoch_0009.pth", "epoch": 9, "iteration": 1, "fingerprint": "x"}))
    with pytest.raises(RuntimeError, match="epoch_0009.pth"):
        CheckpointManager(d).latest()


def test_fingerprint_is_order_independent():
    assert config_fingerprint({"a": 1, "b": [1, 2]}) == config_fingerprint({"b": [1, 2], "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})


def test_sync_batchnorm_conversion_only_with_sync_bn_under_ddp():
    from pipeline.engine import convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(model, sync_bn=True, distributed=False) is model  # one process
    assert convert_sync_batchnorm(model, sync_bn=False, distributed=True) is model
    converted = convert_sync_batchnorm(model, sync_bn=True, distributed=True)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    torch.testing.assert_close(converted[0].weight, model[0].weight)


def test_amp_dtype_setting_resolves_to_an_autocast_dtype():
    """train.amp_dtype: fp16 and bf16 name their dtypes; auto is bfloat16 only on a CUDA device
    that supports it (never on the CPU); anything else is refused, naming the setting."""
    import pytest
    import torch

    from pipeline.engine import resolve_amp_dtype

    cpu = torch.device("cpu")
    assert resolve_amp_dtype("fp16", cpu) == torch.float16
    assert resolve_amp_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_amp_dtype("auto", cpu) == torch.float16
    with pytest.raises(ValueError, match="train.amp_dtype"):
        resolve_amp_dtype("fp8", cpu)
