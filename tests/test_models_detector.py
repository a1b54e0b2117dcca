"""Faster R-CNN assembled from the presets: build, train/eval outputs, overfitting, summary."""
from __future__ import annotations

import copy

import pytest
import torch

from models.build import build_model
from models.presets import PRESETS
from models.summary import main as summary_main
from models.summary import preset_counts
from tests.detection_checks import mean_ratio, overfit, rectangles_batch, top_k_match_iou

PRESET = "faster_rcnn_r50_fpn_1x"
NUM_CLASSES = 3


def _cpu_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(PRESETS[PRESET]["detector"], PRESETS[PRESET]["scales"]["cpu"]["model"], num_classes)


def test_train_and_eval_outputs_at_cpu_scale_including_an_image_without_objects():
    model = _cpu_model().train()
    images = torch.randn(3, 3, 160, 256)
    sizes = [(160, 256), (150, 200), (160, 224)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0], [100.0, 30.0, 112.0, 42.0]]),
         "labels": torch.tensor([1, 2]), "ignore_boxes": torch.zeros(0, 4), "image_id": 7},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.0, 0.0, 224.0, 160.0]]), "labels": torch.tensor([0])},
    ]
    losses = model(images, sizes, targets)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"} <= set(losses)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value)
        assert value.requires_grad == name.startswith("loss")
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert model.backbone.conv1.weight.grad is not None and model.roi_head.bbox_head.fc_reg.weight.grad is not None

    empty_batch = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 3
    empty_losses = model(images, sizes, empty_batch)
    assert empty_losses["loss_bbox"].item() == 0.0 and empty_losses["loss_rpn_bbox"].item() == 0.0

    model.eval()
    with torch.no_grad():
        dets = model(images, sizes)
    assert len(dets) == 3
    for det, (h, w) in zip(dets, sizes):
        k = det["boxes"].shape[0]
        assert k <= 100 and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (k,) and det["labels"].shape == (k,) and det["labels"].dtype == torch.long
        assert ((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all()
        assert (det["boxes"][:, 0] >= 0).all() and (det["boxes"][:, 1] >= 0).all()
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()


def test_mixed_precision_keeps_losses_and_boxes_in_float32():
    model = _cpu_model().train()
    images = torch.randn(2, 3, 160, 256)
    sizes = [(160, 256), (150, 200)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, sizes, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dets = model(images, sizes)
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in dets)


def test_training_requires_valid_targets():
    model = _cpu_model().train()
    with pytest.raises(ValueError, match="target"):
        model(torch.randn(1, 3, 64, 64), [(64, 64)])
    bad_label = [{"boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]), "labels": torch.tensor([NUM_CLASSES])}]
    with pytest.raises(ValueError, match="image 0 .* outside 0..2"):
        model(torch.randn(1, 3, 64, 64), [(64, 64)], bad_label)
    mismatch = [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([0])}]
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        model(torch.randn(1, 3, 64, 64), [(64, 64)], mismatch)


@pytest.mark.trajectory
def test_overfits_a_smallrectangles_batch(record_property):
    """80 iterations on one batch: the loss falls below 35 % of its start, and every gt is found
    at IoU > 0.5 by one of the 10 top-scoring detections of its image (see
    ``detection_checks.top_k_match_iou``; margins in the README's "Tests" section)."""
    model = _cpu_model(seed=0)
    images, targets = rectangles_batch()
    sizes = [(160, 160)] * 2
    history = overfit(model, images, sizes, targets, 80)
    model.eval()
    with torch.no_grad():
        dets = model(images, sizes)
    found = torch.cat([top_k_match_iou(det, target, 10) for det, target in zip(dets, targets)])
    record_property("loss_ratio", mean_ratio(history, 3))
    record_property("min_gt_iou", found.min().item())
    assert mean_ratio(history, 3) < 0.35, history
    assert (found > 0.5).all(), (found, dets)


def test_paper_preset_builds_the_torchvision_architecture():
    """With torchvision's class count (90 + background) the paper model has as many parameters
    as ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, except that torchvision
    also regresses a box for the background class (one more 1024 -> 4 output)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    cfg = PRESETS[PRESET]["scales"]["paper"]["model"]
    assert cfg["backbone"]["pretrained"] == "torchvision://resnet50"
    ours = build_model("faster_rcnn", cfg, 90, load_pretrained=False)  # offline: no ImageNet download
    assert cfg["backbone"]["pretrained"] == "torchvision://resnet50"  # the preset is not mutated
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    background_regressor = 1024 * 4 + 4
    theirs_count = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == theirs_count - background_regressor
    # frozen stem + layer1 (frozen_stages=1)
    assert not any(p.requires_grad for p in ours.backbone.layer1.parameters())
    ours.train()
    assert not ours.backbone.layer2[0].bn1.training  # norm_eval


def test_presets_resolve_through_the_pipeline_config():
    from pipeline.config import resolve_model_config

    params = {"models": {"frcnn": {"preset": PRESET, "scale": "cpu",
                                   "overrides": {"model": {"roi_head": {"test": {"max_per_img": 7}}}}}}}
    cfg = resolve_model_config(params, "frcnn")
    assert cfg["detector"] == "faster_rcnn" and cfg["data"]["train_scales"] == [[256, 160]]
    model = build_model(cfg["detector"], cfg["model"], 5).eval()
    assert model.roi_head.max_per_img == 7 and model.roi_head.bbox_head.fc_cls.out_features == 6
    for scale in ("paper", "cpu"):
        entry = PRESETS[PRESET]["scales"][scale]
        assert set(entry) == {"model", "data", "schedule"}
        assert set(entry["data"]) == {"train_scales", "multiscale_mode", "flip_ratio", "test_scale", "mean", "std",
                                      "size_divisor", "with_masks"}


def test_build_model_errors_name_the_problem():
    cfg = copy.deepcopy(PRESETS[PRESET]["scales"]["cpu"]["model"])
    with pytest.raises(ValueError, match="unknown detector"):
        build_model("yolo", cfg, 3)
    cfg["rpn_head"]["sampler"]["bogus"] = 1
    with pytest.raises(TypeError, match="rpn_head.sampler"):
        build_model("faster_rcnn", cfg, 3)


def test_summary_counts_and_table(capsys):
    counts = preset_counts(PRESET, "cpu", num_classes=80)
    assert counts["total"] == sum(counts[p] for p in ("backbone", "neck", "rpn_head", "roi_head"))
    assert 2.5e6 < counts["backbone"] < 3.5e6  # half-width ResNet-18
    assert summary_main(["--preset", PRESET, "--scale", "cpu"]) == 0
    out = capsys.readouterr().out
    assert PRESET in out and "backbone" in out and f"{counts['total'] / 1e6:.3f}M" in out
