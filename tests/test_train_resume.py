"""Training engine integration: exact resume after an interruption, config changes."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.train import run_training
from tests.conftest import TINY_MODEL, tiny_params


def train(manifest, root, **kw):
    return run_training(TINY_MODEL, tiny_params(), manifest_file=manifest, checkpoint_root=root / "ckpt", weights_root=root / "ckpt",
                        metrics_root=root / "metrics", track=False, **kw)


def test_interrupted_then_resumed_run_equals_uninterrupted(tiny_prepared, tmp_path):
    metrics_a, model_a = train(tiny_prepared, tmp_path / "a")
    iters_per_epoch = metrics_a["iterations"] // metrics_a["epochs"]
    assert metrics_a["epochs"] == 2 and iters_per_epoch >= 2

    # Killed in the middle of epoch 2: epoch 1's checkpoint is on disk, epoch 2's is not.
    with pytest.raises(KeyboardInterrupt):
        train(tiny_prepared, tmp_path / "b", stop_at_iteration=iters_per_epoch + 1)
    latest = json.loads((tmp_path / "b" / "ckpt" / TINY_MODEL / "latest.json").read_text())
    assert latest["epoch"] == 1 and latest["iteration"] == iters_per_epoch
    assert not (tmp_path / "b" / "ckpt" / f"{TINY_MODEL}.pth").exists()

    metrics_b, model_b = train(tiny_prepared, tmp_path / "b")
    assert metrics_b["iterations"] == metrics_a["iterations"]
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    # The curve of the resumed run holds every iteration once, as the uninterrupted one.
    curve_a = (tmp_path / "a" / "metrics" / TINY_MODEL / "train_curve.csv").read_text()
    curve_b = (tmp_path / "b" / "metrics" / TINY_MODEL / "train_curve.csv").read_text()
    assert curve_a == curve_b


def test_checkpoints_of_another_configuration_are_set_aside(tiny_prepared, tmp_path):
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"]["epochs"] = 1
    run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt", weights_root=tmp_path / "ckpt",
                 metrics_root=tmp_path / "metrics", track=False)
    params["models"][TINY_MODEL]["overrides"]["schedule"]["lr"] = 0.02
    run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt", weights_root=tmp_path / "ckpt",
                 metrics_root=tmp_path / "metrics", track=False)
    prev = tmp_path / "ckpt" / TINY_MODEL / "previous"
    assert (prev / "epoch_0001.pth").exists() and "configuration changed" in (prev / "REASON.txt").read_text()
    assert (tmp_path / "ckpt" / TINY_MODEL / "epoch_0001.pth").exists()


def test_an_iteration_based_schedule_stops_mid_epoch_with_steps_in_iterations(tiny_prepared, tmp_path):
    """``max_iters`` (mmdetection's IterBasedRunner): 16 images at 4 per batch are 4 iterations
    per epoch; 6 iterations end in the middle of the second pass, the lr step at 5 is an iteration."""
    import csv

    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"].update(
        {"max_iters": 6, "lr_steps": [5], "warmup_iters": 0, "lr": 0.01})
    metrics, _ = run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt",
                              weights_root=tmp_path / "w", metrics_root=tmp_path / "metrics", track=False)
    assert metrics["iterations"] == 6 and metrics["epochs"] == 2
    rows = list(csv.DictReader((tmp_path / "metrics" / TINY_MODEL / "train_curve.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 1, 2, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01] * 5 + [0.001])
    assert (tmp_path / "ckpt" / TINY_MODEL / "epoch_0002.pth").exists()
