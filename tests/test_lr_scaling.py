"""The linear learning-rate scaling rule (schedule ``auto_scale_lr``, mmdetection's): lr x actual
total batch / the preset's total batch, on for the paper presets, off at the CPU scale."""
from __future__ import annotations

import pytest

from models.presets import PRESETS
from pipeline.config import resolve_model_config
from pipeline.engine import lr_scaling

PAPER = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"]["paper"]["schedule"]  # 8 GPUs x 2 images, lr 0.02
CPU = PRESETS["faster_rcnn_r50_fpn_1x"]["scales"]["cpu"]["schedule"]  # 1 x 8 images, lr 0.08


@pytest.mark.parametrize("gpus, lr", [(1, 0.0025), (2, 0.005), (8, 0.02), (16, 0.04)])
def test_paper_preset_lr_scales_with_the_number_of_gpus(gpus, lr):
    s = lr_scaling(PAPER, PAPER, gpus)
    assert s.enabled and s.preset_batch == 16 and s.actual_batch == 2 * gpus
    assert s.base_lr == 0.02 and s.lr == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("gpus, images, lr", [(1, 8, 0.01), (2, 8, 0.02), (8, 4, 0.04), (16, 1, 0.02), (4, 4, 0.02)])
def test_an_images_per_gpu_override_changes_the_actual_batch_not_the_preset_batch(gpus, images, lr):
    s = lr_scaling({**PAPER, "images_per_gpu": images}, PAPER, gpus)
    assert s.preset_batch == 16 and s.actual_batch == gpus * images
    assert s.lr == pytest.approx(lr, rel=1e-12)


def test_an_overridden_lr_is_the_rate_for_the_preset_batch():
    assert lr_scaling({**PAPER, "lr": 0.04}, PAPER, 4).lr == pytest.approx(0.02, rel=1e-12)


@pytest.mark.parametrize("gpus", [1, 2, 8, 16])
def test_off_leaves_the_lr_alone(gpus):
    s = lr_scaling({**PAPER, "auto_scale_lr": False}, PAPER, gpus)
    assert not s.enabled and s.lr == 0.02 and s.actual_batch == 2 * gpus and s.preset_batch == 16
    assert "off" in s.describe() or gpus == 8


def test_the_cpu_scale_is_off_and_its_preset_batch_is_one_process():
    s = lr_scaling({**CPU, "images_per_gpu": 4}, CPU, 2)
    assert (s.enabled, s.preset_batch, s.actual_batch, s.lr) == (False, 8, 8, 0.08)


def test_every_paper_preset_scales_and_no_cpu_preset_does():
    for name, preset in PRESETS.items():
        for scale, cfg in preset["scales"].items():
            assert cfg["schedule"]["auto_scale_lr"] is (scale == "paper"), (name, scale)


def test_the_key_can_be_overridden_in_params():
    params = {"models": {"m": {"preset": "faster_rcnn_r50_fpn_1x", "scale": "cpu",
                               "overrides": {"schedule": {"auto_scale_lr": True, "images_per_gpu": 4}}}}}
    cfg = resolve_model_config(params, "m")
    schedule = PRESETS[cfg["preset"]]["scales"][cfg["scale"]]["schedule"]
    s = lr_scaling(cfg["schedule"], schedule, 1)
    assert s.enabled and s.lr == pytest.approx(0.04, rel=1e-12)
    assert s.params() == {"auto_scale_lr": True, "preset_batch": 8, "actual_batch": 4, "base_lr": 0.08,
                          "lr": s.lr}
    assert "0.08 x 4/8 = 0.04" in s.describe()


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="positive"):
        lr_scaling({**PAPER, "images_per_gpu": 0}, PAPER, 1)
