"""D2Det presets (specs/d2det.md): R-50 / R-101 / R-101-DCN detection and R-101 instance
segmentation, at the paper's and the CPU scale."""
from __future__ import annotations

from typing import Any

from models.common.presets import FASTER_RCNN_R50_FPN_1X, _resnet_paper, _roi_head, _rpn_head


def _d2det_roi_head(strides: list[int], fc_out_channels: int, num_rois: int, sample_per_part: int,
                    offset_fc_channels: int, dlr_channels: int, dlr_convs: int, dlr_gn_groups: int,
                    max_num_reg: int, instance: dict[str, Any] | None) -> dict[str, Any]:
    """D2Det's second stage (specs/d2det.md §1.4-§5); ``instance`` None = detection model."""
    base = _roi_head(strides, fc_out_channels, num_rois)
    if instance is None:
        test = {"score_thr": 0.03, "nms_iou": 0.5, "max_per_img": 125, "soft_nms_method": "linear"}
    else:
        test = {"score_thr": 0.05, "nms_iou": 0.3, "max_per_img": 100, "soft_nms_method": None}
    test.update({"soft_nms_iou": 0.5, "soft_nms_sigma": 0.5, "soft_nms_min_score": 0.001, "max_final": 100,
                 "empty_cells": "proposal", "mask_score_iou_weight": 0.3})
    return {
        "bbox_roi_extractor": {"featmap_strides": strides, "out_size": 7, "sample_per_part": sample_per_part,
                               "trans_std": 0.1, "finest_scale": 56.0, "offset_fc_channels": offset_fc_channels},
        "bbox_head": {**base["bbox_head"], "with_reg": False, "loss_cls_weight": 2.0},
        "reg_roi_extractor": {"featmap_strides": strides, "output_size": 14, "sampling_ratio": 2, "aligned": True,
                              "finest_scale": 56.0},
        "dlr_head": {"conv_channels": dlr_channels, "num_convs": dlr_convs, "gn_groups": dlr_gn_groups, "grid": 7},
        "instance_head": instance,
        "assigner": base["assigner"],
        "sampler": base["sampler"],
        "train": {"max_num_reg": max_num_reg, "jitter_amplitude": 0.15, "iou_weighting": "v1_broadcast",
                  "reg_loss_weight": 2.0, "overlap_loss_weight": 1.0, "mask_loss_weight": 1.0,
                  "mask_iou_loss_weight": 0.5, "mask_iou_logit_threshold": 0.5},
        "test": test,
    }


def _d2det(depth: int, dcn: bool, sample_per_part: int, mask: bool) -> dict[str, Any]:
    """A D2Det preset: the paper scale is the official config (24 epochs, 2 images x 8 GPUs);
    the CPU scale is the Faster R-CNN CPU scale (same backbone, FPN, RPN and schedule, at lr 0.04; below) with 64
    sampled RoIs per image instead of 128 and the same D2Det heads, narrower: offset FCs 256 wide, one sample per bin
    side in DRP (the R101 configs' value; 2 samples cost ~0.6 s more per CPU iteration), a
    4-conv 96-channel DLR trunk (GN 6 groups, 16 channels per group as the paper's 576 / 36),
    a 256-wide classifier and, for the mask model, 64-channel deconvolutions and 256-wide
    mask-IoU FCs. ``max_num_reg`` stays 192 per batch of 8 images (paper: 192 per 2).

    64 RoIs: the synthetic images hold 3 objects on average (7 at most), so 16 positives per
    image (the sampler's 25 %) still cover every object several times; DRP's 14 x 14 pooling and
    AWPool run on every sampled RoI and dominated the step. Measured over 502 iterations
    (benchmarks/README.md, issue 15): D2Det 537 -> 249 s, minival AP50 0.576 -> 0.532; the
    instance model 605 -> 279 s, AP50 0.595 -> 0.562.

    The schedule is the Faster R-CNN CPU one at lr 0.04 instead of its 0.08: at 0.08 D2Det
    diverged (minival AP 0 after 502 iterations), where Faster, Grid and CPM R-CNN gained."""
    frcnn_paper = FASTER_RCNN_R50_FPN_1X["scales"]["paper"]
    frcnn_cpu = FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]
    paper_rpn = _rpn_head(256, [8.0], [4, 8, 16, 32, 64], allowed_border=0, train_n=2000, test_n=1000)
    if mask:
        # D2Det_instance_r101_fpn_2x test.rpn: nms_pre 1000 per level, nms_post 1000 per level,
        # max_num 700 over the levels (specs/d2det.md §1.3). With nms_post >= max_num, v1's
        # per-level cut never removes one of the top 700, so nms_pre 1000 + max_per_img 700 here
        # selects exactly the same proposals (models/common/dense_heads/rpn_head.py).
        paper_rpn["test_proposals"] = {**paper_rpn["test_proposals"], "max_per_img": 700}
    paper_instance = {"deconv_channels": 256, "deconv_gn_groups": 16, "iou_fc_channels": 1024} if mask else None
    cpu_instance = {"deconv_channels": 64, "deconv_gn_groups": 16, "iou_fc_channels": 256} if mask else None
    cpu_rpn = dict(frcnn_cpu["model"]["rpn_head"])
    if mask:
        cpu_rpn["test_proposals"] = {**cpu_rpn["test_proposals"], "nms_pre": 300, "max_per_img": 210}
    return {
        "detector": "d2det",
        "scales": {
            "paper": {
                "model": {
                    # D2Det's DCN config: dcn=dict(type='DCNv2', deformable_groups=1,
                    # fallback_on_stride=False), i.e. modulated DCNv2 (specs/d2det.md §1)
                    "backbone": _resnet_paper(depth, 2 if dcn else None),
                    "neck": dict(frcnn_paper["model"]["neck"]),
                    "rpn_head": paper_rpn,
                    "roi_head": _d2det_roi_head([4, 8, 16, 32], 1024, 512, sample_per_part, 1024, 576, 8, 36, 192,
                                                paper_instance),
                },
                "data": {**frcnn_paper["data"], "with_masks": mask},
                "schedule": {"epochs": 24, "images_per_gpu": 2, "num_gpus": 8, "lr": 0.02, "momentum": 0.9,
                             "weight_decay": 1e-4, "warmup_iters": 1000, "warmup_ratio": 1.0 / 80, "lr_steps": [20, 23],
                             "gamma": 0.1, "grad_clip": None, "auto_scale_lr": True},
            },
            "cpu": {
                "model": {
                    "backbone": dict(frcnn_cpu["model"]["backbone"]),
                    "neck": dict(frcnn_cpu["model"]["neck"]),
                    "rpn_head": cpu_rpn,
                    "roi_head": _d2det_roi_head([8, 16, 32], 256, 64, 1, 256, 96, 4, 6, 192, cpu_instance),
                },
                "data": {**frcnn_cpu["data"], "with_masks": mask},
                "schedule": {**frcnn_cpu["schedule"], "lr": 0.04},
            },
        },
    }


D2DET_R50_FPN = _d2det(50, dcn=False, sample_per_part=2, mask=False)
D2DET_R101_FPN = _d2det(101, dcn=False, sample_per_part=1, mask=False)
D2DET_R101_FPN_DCN = _d2det(101, dcn=True, sample_per_part=1, mask=False)
D2DET_R101_FPN_MASK = _d2det(101, dcn=False, sample_per_part=1, mask=True)
