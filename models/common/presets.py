"""What every family's presets start from: Faster R-CNN R-50-FPN 1x at both scales (its
backbone, data and schedule sections are the base the other presets edit), its RPN and RoI
head helpers, and the paper-scale ResNet backbone.

The layout of a preset is described in :mod:`models.presets`.

``PRESETS[name] = {"detector": ..., "scales": {"paper": {...}, "cpu": {...}}}``; each scale
has ``model`` (see :mod:`models.build` for its layout; keys are constructor arguments),
``data`` (image scales as mmdetection's (long, short) pairs, flip, normalisation, padding)
and ``schedule`` (SGD, warmup, steps in epochs, batch). ``pipeline/config.py`` resolves an
entry and deep-merges params.yaml overrides on top. Values are plain YAML types.

faster_rcnn_r50_fpn_1x, paper scale = mmdetection's ``faster_rcnn_r50_fpn_1x`` as the
papers of this repository used it (mmdetection v1, see specs/d2det.md section 1). Where v1
and v2 differ the choice is explicit here:

- losses: v1's SmoothL1, beta 1/9 (RPN) and 1.0 (R-CNN); v2's L1 is ``loss_bbox_beta: 0``;
- anchors: v2 centres (``center_offset 0.0``, no "+1", not rounded); v1 is
  ``legacy: true, center_offset: 0.5``;
- "+1" box widths: v2 (none) in the coder, IoU and RoI level mapping; RoIAlign is v2's
  ``aligned=True, sampling_ratio=0``;
- ``allowed_border``: v1's 0 (anchors crossing the image border are not trained);
- proposals: NMS per level, then the top 2000 (train) / 1000 (test) over all levels (v1's
  nms_post = max_num, identical to v2's batched form; see the RPN module);
- labels: v2 (background = num_classes).

The paper backbone starts from torchvision's ImageNet ResNet-50 (``torchvision://resnet50``,
mmdetection v1's ``pretrained``); set ``model.backbone.pretrained`` to a local .pth path on
an offline machine.

CPU scale: the same heads on a half-width ResNet-18 trained from scratch with BatchNorm,
a 64-channel FPN P3-P6, 600/300 proposals, 128 RoIs per image and a 256-wide box head, for
160 px images with objects from ~10 to ~150 px:

- anchors of scale 2 (16 px at stride 8 .. 128 px at stride 64). Wherever it lies on the
  stride-8 grid, an object of 12 px or more has an anchor of IoU >= 0.33, a 10 px object
  one of >= 0.29 and an 8 px object >= 0.21; the RPN's ``min_pos_iou`` is therefore 0.2
  (paper 0.3), so that low-quality matching gives even the smallest objects a positive
  anchor. (Scale 3 would leave 10 px objects at 0.17.)
- ``allowed_border: -1``: at 160 px nearly every 64/128 px anchor of the 0.5 and 2 ratios
  crosses the border, so v1's 0 would leave the large objects with few anchors;
- RoI levels P3-P5 with ``finest_scale 56``: RoIs under 112 px pool from P3 (stride 8),
  112-224 px from P4.
- schedule: 2 epochs of the 2000 synthetic train images at 8 per batch (502 iterations), lr
  0.08, warmup 50, x0.1 at 1.7 epochs, gradient clip 10. The pipeline starts the backbone from
  the pretrain stage's weights (params.yaml ``pretrain.init``), as the paper presets start from
  ImageNet; measured on Faster R-CNN (benchmarks/README.md, issue 15): minival AP50 0.546 after
  502 iterations at lr 0.08, 0.502 at 0.04, 0.412 at 0.02, none at 0.16 (it diverged); 0.234
  after 300 iterations at 0.08 and 0.32 after 251 at 0.04 (0.20 from scratch). (The earlier 5
  epochs from scratch took 2.5x as long.)
"""
from __future__ import annotations

from typing import Any


def _imagenet_norm() -> dict[str, list[float]]:
    return {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def _rpn_head(feat_channels: int, scales: list[float], strides: list[int], allowed_border: int,
              train_n: int, test_n: int, min_pos_iou: float = 0.3) -> dict[str, Any]:
    return {
        "feat_channels": feat_channels,
        "anchor_generator": {"strides": strides, "ratios": [0.5, 1.0, 2.0], "scales": scales,
                             "center_offset": 0.0, "legacy": False},
        "bbox_coder": {"target_means": [0.0, 0.0, 0.0, 0.0], "target_stds": [1.0, 1.0, 1.0, 1.0]},
        "assigner": {"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": min_pos_iou, "gt_max_assign_all": True,
                     "ignore_iof_thr": -1.0, "match_low_quality": True},
        "sampler": {"num": 256, "pos_fraction": 0.5, "neg_pos_ub": -1, "add_gt_as_proposals": False},
        "allowed_border": allowed_border,
        "train_proposals": {"nms_pre": train_n, "max_per_img": train_n, "nms_iou": 0.7, "min_bbox_size": 0.0},
        "test_proposals": {"nms_pre": test_n, "max_per_img": test_n, "nms_iou": 0.7, "min_bbox_size": 0.0},
        "loss_cls_weight": 1.0,
        "loss_bbox_beta": 1.0 / 9.0,
        "loss_bbox_weight": 1.0,
    }


def _roi_head(strides: list[int], fc_out_channels: int, num_rois: int) -> dict[str, Any]:
    return {
        "bbox_roi_extractor": {"featmap_strides": strides, "output_size": 7, "sampling_ratio": 0,
                               "aligned": True, "finest_scale": 56.0},
        "bbox_head": {"fc_out_channels": fc_out_channels, "with_reg": True, "reg_class_agnostic": False,
                      "target_means": [0.0, 0.0, 0.0, 0.0], "target_stds": [0.1, 0.1, 0.2, 0.2],
                      "loss_cls_weight": 1.0, "loss_bbox_beta": 1.0, "loss_bbox_weight": 1.0},
        "assigner": {"pos_iou_thr": 0.5, "neg_iou_thr": 0.5, "min_pos_iou": 0.5, "gt_max_assign_all": True,
                     "ignore_iof_thr": -1.0, "match_low_quality": True},
        "sampler": {"num": num_rois, "pos_fraction": 0.25, "neg_pos_ub": -1, "add_gt_as_proposals": True},
        "test": {"score_thr": 0.05, "nms_iou": 0.5, "max_per_img": 100},
    }


FASTER_RCNN_R50_FPN_1X: dict[str, Any] = {
    "detector": "faster_rcnn",
    "scales": {
        "paper": {
            "model": {
                "backbone": {"depth": 50, "base_channels": 64, "groups": 1, "width_per_group": 64, "norm": "bn",
                             "frozen_stages": 1, "norm_eval": True, "out_indices": [0, 1, 2, 3],
                             "zero_init_residual": True, "pretrained": "torchvision://resnet50"},
                "neck": {"out_channels": 256, "num_outs": 5, "start_level": 0, "add_extra_convs": None,
                         "relu_before_extra_convs": False, "norm": None},
                "rpn_head": _rpn_head(256, [8.0], [4, 8, 16, 32, 64], allowed_border=0, train_n=2000, test_n=1000),
                "roi_head": _roi_head([4, 8, 16, 32], fc_out_channels=1024, num_rois=512),
            },
            "data": {"train_scales": [[1333, 800]], "multiscale_mode": "value", "flip_ratio": 0.5,
                     "test_scale": [1333, 800], **_imagenet_norm(), "size_divisor": 32, "with_masks": False},
            "schedule": {"epochs": 12, "images_per_gpu": 2, "num_gpus": 8, "lr": 0.02, "momentum": 0.9,
                         "weight_decay": 1e-4, "warmup_iters": 500, "warmup_ratio": 0.001, "lr_steps": [8, 11],
                         "gamma": 0.1, "grad_clip": None, "auto_scale_lr": True},
        },
        "cpu": {
            "model": {
                "backbone": {"depth": 18, "base_channels": 32, "groups": 1, "width_per_group": 64, "norm": "bn",
                             "frozen_stages": -1, "norm_eval": False, "out_indices": [1, 2, 3],
                             "zero_init_residual": True, "pretrained": None},
                "neck": {"out_channels": 64, "num_outs": 4, "start_level": 0, "add_extra_convs": None,
                         "relu_before_extra_convs": False, "norm": None},
                "rpn_head": _rpn_head(64, [2.0], [8, 16, 32, 64], allowed_border=-1, train_n=600, test_n=300,
                                     min_pos_iou=0.2),
                "roi_head": _roi_head([8, 16, 32], fc_out_channels=256, num_rois=128),
            },
            "data": {"train_scales": [[256, 160]], "multiscale_mode": "value", "flip_ratio": 0.5,
                     "test_scale": [256, 160], **_imagenet_norm(), "size_divisor": 32, "with_masks": False},
            "schedule": {"epochs": 2, "images_per_gpu": 8, "num_gpus": 1, "lr": 0.08, "momentum": 0.9,
                         "weight_decay": 1e-4, "warmup_iters": 50, "warmup_ratio": 0.001, "lr_steps": [1.7],
                         "gamma": 0.1, "grad_clip": 10.0, "auto_scale_lr": False},
        },
    },
}


def _resnet_paper(depth: int, dcn_version: int | None = None) -> dict[str, Any]:
    """The paper-scale torchvision ResNet; ``dcn_version`` 1 (DCNv1) or 2 (modulated DCNv2) puts
    deformable convs in every C3-C5 bottleneck's 3x3 (one deformable group, strided ones too),
    ``None`` none. Each family's preset passes the version its official config builds."""
    backbone = dict(FASTER_RCNN_R50_FPN_1X["scales"]["paper"]["model"]["backbone"])
    backbone.update({"depth": depth, "pretrained": f"torchvision://resnet{depth}"})
    if dcn_version is not None:
        backbone.update({"dcn": {"deform_groups": 1, "fallback_on_stride": False, "version": dcn_version},
                         "stage_with_dcn": [False, True, True, True]})
    return backbone
