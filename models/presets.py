"""Named model configurations at two scales: the paper's and a small CPU one.

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
                         "gamma": 0.1, "grad_clip": None},
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
            "schedule": {"epochs": 5, "images_per_gpu": 8, "num_gpus": 1, "lr": 0.04, "momentum": 0.9,
                         "weight_decay": 1e-4, "warmup_iters": 100, "warmup_ratio": 0.001, "lr_steps": [4.25],
                         "gamma": 0.1, "grad_clip": 10.0},
        },
    },
}

# --------------------------------------------------------------------------------- D2Det
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


def _d2det(depth: int, dcn: bool, sample_per_part: int, mask: bool) -> dict[str, Any]:
    """A D2Det preset: the paper scale is the official config (24 epochs, 2 images x 8 GPUs);
    the CPU scale is the Faster R-CNN CPU scale (same backbone, FPN, RPN, 128 RoIs per image,
    schedule) with the same D2Det heads, narrower: offset FCs 256 wide, one sample per bin
    side in DRP (the R101 configs' value; 2 samples cost ~0.6 s more per CPU iteration), a
    4-conv 96-channel DLR trunk (GN 6 groups, 16 channels per group as the paper's 576 / 36),
    a 256-wide classifier and, for the mask model, 64-channel deconvolutions and 256-wide
    mask-IoU FCs. ``max_num_reg`` stays 192 per batch of 8 images (paper: 192 per 2)."""
    frcnn_paper = FASTER_RCNN_R50_FPN_1X["scales"]["paper"]
    frcnn_cpu = FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]
    paper_rpn = _rpn_head(256, [8.0], [4, 8, 16, 32, 64], allowed_border=0, train_n=2000, test_n=1000)
    if mask:
        # D2Det_instance_r101_fpn_2x test.rpn: nms_pre 1000 per level, nms_post 1000 per level,
        # max_num 700 over the levels (specs/d2det.md §1.3). With nms_post >= max_num, v1's
        # per-level cut never removes one of the top 700, so nms_pre 1000 + max_per_img 700 here
        # selects exactly the same proposals (models/dense_heads/rpn_head.py).
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
                             "gamma": 0.1, "grad_clip": None},
            },
            "cpu": {
                "model": {
                    "backbone": dict(frcnn_cpu["model"]["backbone"]),
                    "neck": dict(frcnn_cpu["model"]["neck"]),
                    "rpn_head": cpu_rpn,
                    "roi_head": _d2det_roi_head([8, 16, 32], 256, 128, 1, 256, 96, 4, 6, 192, cpu_instance),
                },
                "data": {**frcnn_cpu["data"], "with_masks": mask},
                "schedule": dict(frcnn_cpu["schedule"]),
            },
        },
    }


D2DET_R50_FPN = _d2det(50, dcn=False, sample_per_part=2, mask=False)
D2DET_R101_FPN = _d2det(101, dcn=False, sample_per_part=1, mask=False)
D2DET_R101_FPN_DCN = _d2det(101, dcn=True, sample_per_part=1, mask=False)
D2DET_R101_FPN_MASK = _d2det(101, dcn=False, sample_per_part=1, mask=True)

# ----------------------------------------------------------------------------- Grid R-CNN
def _grid_roi_head(strides: list[int], fc_out_channels: int, num_rois: int, point_feat_channels: int,
                   num_convs: int, gn_groups: int) -> dict[str, Any]:
    """Grid R-CNN Plus's second stage (specs/cpm_rcnn.md §1.2-§1.8): a classification-only
    Shared2FC box head on RoIAlign 7x7, the grid head (9 points, neighbour fusion, mmdet init,
    radius-1 targets, BCE x15, 2x extended region) on RoIAlign 14x14 of at most 192 jittered
    (0.15) positives per batch, class NMS 0.03 / 0.3 / 100 before the refinement."""
    base = _roi_head(strides, fc_out_channels, num_rois)
    return {
        "bbox_roi_extractor": base["bbox_roi_extractor"],
        "bbox_head": {**base["bbox_head"], "with_reg": False, "loss_cls_weight": 1.0},
        "grid_roi_extractor": {**base["bbox_roi_extractor"], "output_size": 14},
        "grid_head": {"grid_points": 9, "point_feat_channels": point_feat_channels, "num_convs": num_convs,
                      "conv_gn_groups": gn_groups, "conv_bias": True, "fuse_neighbours": True, "init": "mmdet",
                      "pos_radius": 1, "loss_weight": 15.0, "mapping_ratio": 1.0},
        "assigner": base["assigner"],
        "sampler": base["sampler"],
        "train": {"max_num_grid": 192, "grid_cap_scope": "batch", "jitter_amplitude": 0.15},
        "test": {"score_thr": 0.03, "nms_iou": 0.3, "max_per_img": 100},
    }


def _grid_rcnn() -> dict[str, Any]:
    """Grid R-CNN (Plus form), mmdetection's ``grid_rcnn_r50_fpn_gn-head_2x_coco``
    (specs/cpm_rcnn.md §1.8).

    Paper scale: the Faster R-CNN paper backbone (torchvision ResNet-50, frozen stem + res2,
    frozen BN), FPN P2-P6 and RPN; the box branch has no regressor; grid head 8 convs of
    576 channels (64 per point) with GN(36), fusion on; 25 epochs (the "2x" schedule),
    2 images x 8 GPUs, SGD lr 0.02, warmup 3665 iterations from 1/80, steps at 17 and 23.

    CPU scale: the Faster R-CNN CPU scale (same backbone, FPN, RPN, 128 RoIs per image, data
    and schedule) with the same heads, narrower: a 256-wide classifier and a 4-conv grid trunk
    of 9 x 16 = 144 channels with GN(9) (16 channels per group, as the paper's 576 / 36; one
    group per point), fusion on (16-channel transforms). ``max_num_grid`` stays 192 per batch
    of 8 images: up to 8 x 32 positives, so the cap keeps 75% as at paper scale (2 x 128)."""
    frcnn_paper = FASTER_RCNN_R50_FPN_1X["scales"]["paper"]
    frcnn_cpu = FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]
    return {
        "detector": "grid_rcnn",
        "scales": {
            "paper": {
                "model": {
                    "backbone": _resnet_paper(50),
                    "neck": dict(frcnn_paper["model"]["neck"]),
                    "rpn_head": _rpn_head(256, [8.0], [4, 8, 16, 32, 64], allowed_border=0, train_n=2000,
                                          test_n=1000),
                    "roi_head": _grid_roi_head([4, 8, 16, 32], 1024, 512, point_feat_channels=64, num_convs=8,
                                               gn_groups=36),
                },
                "data": dict(frcnn_paper["data"]),
                "schedule": {"epochs": 25, "images_per_gpu": 2, "num_gpus": 8, "lr": 0.02, "momentum": 0.9,
                             "weight_decay": 1e-4, "warmup_iters": 3665, "warmup_ratio": 1.0 / 80,
                             "lr_steps": [17, 23], "gamma": 0.1, "grad_clip": None},
            },
            "cpu": {
                "model": {
                    "backbone": dict(frcnn_cpu["model"]["backbone"]),
                    "neck": dict(frcnn_cpu["model"]["neck"]),
                    "rpn_head": dict(frcnn_cpu["model"]["rpn_head"]),
                    "roi_head": _grid_roi_head([8, 16, 32], 256, 128, point_feat_channels=16, num_convs=4,
                                               gn_groups=9),
                },
                "data": dict(frcnn_cpu["data"]),
                "schedule": dict(frcnn_cpu["schedule"]),
            },
        },
    }


GRID_RCNN_R50_FPN_2X = _grid_rcnn()

# ------------------------------------------------------------------------------ CPM R-CNN
def _cpm_roi_head(strides: list[int], fc_out_channels: int, num_rois: int, point_feat_channels: int,
                  num_convs: int, gn_groups: int, iou_fc_channels: int, max_num_grid: int,
                  grid_init: str) -> dict[str, Any]:
    """CPM R-CNN's second stage (specs/cpm_rcnn.md §2.3-§2.7, the ``e2e_grid_cascade@567``
    configs): Grid R-CNN's heads with CPM's settings (legacy RoIAlign ``aligned=False``,
    ``sampling_ratio=2``; grid heads without neighbour fusion, initialised by ``grid_init``;
    ``max_num_grid`` unjittered positives per image), all three modules on: CMM with stages at
    IoU 0.5 / 0.6 / 0.7, mapping ratios 1.0 / 0.5 / 0.25 (regions 2x / 1.5x / 1.25x) and loss
    weights 1 / 0.5 / 0.25; ISM FCs ``iou_fc_channels`` wide, loss weight 1; RSM classifier as
    wide as the box branch, CE weight 1, resampling ``num_rois`` per image at 25% positives;
    test: class NMS 0.03 / 0.3 without a cap, no NMS after the refinement, the best 100 by
    ``(p_cls * iou) ** 0.8 * q_rsm ** 0.2``."""
    base = _grid_roi_head(strides, fc_out_channels, num_rois, point_feat_channels, num_convs, gn_groups)
    extractor = {"featmap_strides": strides, "output_size": 7, "sampling_ratio": 2, "aligned": False,
                 "finest_scale": 56.0}
    grid_head = {k: v for k, v in base["grid_head"].items() if k != "mapping_ratio"}
    grid_head.update({"fuse_neighbours": False, "init": grid_init})
    return {
        "with_cmm": True,
        "with_ism": True,
        "with_rsm": True,
        "bbox_roi_extractor": extractor,
        "bbox_head": dict(base["bbox_head"]),
        "grid_roi_extractor": {**extractor, "output_size": 14},
        "grid_head": grid_head,
        "cascade": {"stage_iou_thrs": [0.5, 0.6, 0.7], "stage_mapping_ratios": [1.0, 0.5, 0.25],
                    "stage_loss_weights": [1.0, 0.5, 0.25]},
        "iou_head": {"fc_channels": iou_fc_channels, "loss_weight": 1.0},
        "rsm_head": {"fc_out_channels": fc_out_channels, "loss_cls_weight": 1.0},
        "rsm_sampler": {"num": num_rois, "pos_fraction": 0.25, "neg_pos_ub": -1, "add_gt_as_proposals": False},
        "assigner": base["assigner"],
        "sampler": base["sampler"],
        "train": {"max_num_grid": max_num_grid, "grid_cap_scope": "image", "jitter_amplitude": None},
        "test": {"score_thr": 0.03, "nms_iou": 0.3, "max_per_img": 100, "max_before_refine": None,
                 "nms_after_refine": None, "rsm_score_weight": 0.2},
    }


def _cpm_backbone(arch: str) -> dict[str, Any]:
    """Paper-scale CPM backbones (specs/cpm_rcnn.md §3): torchvision ResNet-50 / ResNet-101, or
    ResNeXt-101 64x4d with deformable convs in every C3-C5 bottleneck (``stage_with_dcn``
    (False, True, True, True), one deformable group, zero-initialised offsets); stem + res2
    frozen, frozen BN. The deformable convs are **DCNv1**, as Pet's ``STAGE_WITH_CONV``
    'deform' builds them (``DeformConvPack``: an 18-channel offset conv with a bias, grouped
    main kernel of 64 groups, no modulation mask): 216,929,898 parameters with 80 classes,
    where DCNv2 would give 219,501,432."""
    if arch == "x101_dcn":
        backbone = _resnet_paper(101, dcn_version=1)
        backbone.update({"groups": 64, "width_per_group": 4, "pretrained": "torchvision://resnext101_64x4d"})
        return backbone
    return _resnet_paper({"r50": 50, "r101": 101}[arch])


def _cpm_paper_rpn(grid_rpn: dict[str, Any]) -> dict[str, Any]:
    """Grid R-CNN's paper RPN with Pet's anchor matching: its ``Matcher`` with
    ``allow_low_quality_matches`` gives every gt its best anchors whatever their IoU (no
    ``min_pos_iou``; mmdetection's RPN, which Grid R-CNN uses, asks 0.3). A gt whose best valid
    anchor has IoU below 0.3 (small or thin objects) therefore still gets a positive anchor,
    as in the original. Like Pet, nothing guards a gt that overlaps no valid anchor at all
    (it would claim every zero-IoU anchor); at paper scale that cannot happen: the loader
    drops boxes without area, and the 32-px anchors at stride 4 that lie inside an image of
    800 px overlap every point of it. One difference stays: Pet matches every anchor and then
    drops those crossing the border (``STRADDLE_THRESH`` 0), so a gt whose best anchor
    straddles gets no low-quality positive; here only the anchors inside the image are
    matched (mmdetection's order), so its best inside anchor is claimed."""
    return {**grid_rpn, "assigner": {**grid_rpn["assigner"], "min_pos_iou": 0.0}}


def _cpm_rcnn(arch: str) -> dict[str, Any]:
    """A CPM R-CNN preset, 2x schedule (specs/cpm_rcnn.md §2.7, §3; README table rows R-50-FPN,
    R-101-FPN, X-101-FPN-DCN).

    Paper scale: the Grid R-CNN paper scale (FPN P2-P6, RPN) with :func:`_cpm_backbone` and
    :func:`_cpm_roi_head` (1024-wide classifier, ISM and RSM; 8-conv 576-channel grid trunks
    with GN(36) and PyTorch's default init, as the reference (spec §2.8.6); 96 grid RoIs per
    image, 32 for the X-101-DCN model as its config). Schedule:
    SGD lr 0.02, momentum 0.9, weight decay 1e-4, 2 images x 8 GPUs, linear warmup of 500
    iterations from 0.1, 180k iterations with steps at 120k and 160k. In epochs of COCO
    train2017 without empty images (117,266 images, 7,329 iterations): 24.56 epochs with steps
    at 16.37 and 21.83; ``epochs`` is rounded up to 25 (the engine counts whole epochs), the
    steps stay at the iterations' fractions.

    Deviations from the official configs, all outside the RoI head: pytorch-style torchvision
    ImageNet weights instead of the converted caffe-style ones (BGR, std 1, stride on the 1x1;
    spec §6.7); the RPN keeps its post-NMS top 2000 per image instead of per batch (``FPN_POST_NMS_PER_BATCH``);
    one SGD parameter group (the reference doubles the bias learning rate and exempts biases
    and GN parameters from weight decay).

    CPU scale: the Grid R-CNN CPU scale (half-width ResNet-18 from scratch, 64-channel FPN
    P3-P5, RPN, 128 RoIs per image, data, schedule; 256-wide classifier; 4-conv grid trunks of
    9 x 16 = 144 channels with GN(9)) with the CPM heads, all three modules on: ISM FCs and RSM
    classifier 256 wide, RSM resampling 128 per image, at most 24 grid RoIs per image (96 of
    the paper's at most 128 positives = 75%, as 24 of 32 here). The grid heads keep the Grid
    R-CNN CPU scale's mmdet init (deconv2 bias -log(0.99/0.01)) instead of PyTorch's default:
    trained from scratch for a few epochs, the default init barely localises (one synthetic
    batch, 100 SGD steps: stage-1 decoded boxes at IoU 0.64 from inputs at 0.69, against 0.86
    with the mmdet init); ``model.roi_head.grid_head.init: pytorch`` restores the reference's."""
    grid_cpu = GRID_RCNN_R50_FPN_2X["scales"]["cpu"]
    grid_paper = GRID_RCNN_R50_FPN_2X["scales"]["paper"]
    return {
        "detector": "cpm_rcnn",
        "scales": {
            "paper": {
                "model": {
                    "backbone": _cpm_backbone(arch),
                    "neck": dict(grid_paper["model"]["neck"]),
                    "rpn_head": _cpm_paper_rpn(grid_paper["model"]["rpn_head"]),
                    "roi_head": _cpm_roi_head([4, 8, 16, 32], 1024, 512, point_feat_channels=64, num_convs=8,
                                              gn_groups=36, iou_fc_channels=1024,
                                              max_num_grid=32 if arch == "x101_dcn" else 96, grid_init="pytorch"),
                },
                "data": dict(grid_paper["data"]),
                "schedule": {"epochs": 25, "images_per_gpu": 2, "num_gpus": 8, "lr": 0.02, "momentum": 0.9,
                             "weight_decay": 1e-4, "warmup_iters": 500, "warmup_ratio": 0.1,
                             "lr_steps": [16.373, 21.831], "gamma": 0.1, "grad_clip": None},
            },
            "cpu": {
                "model": {
                    "backbone": dict(grid_cpu["model"]["backbone"]),
                    "neck": dict(grid_cpu["model"]["neck"]),
                    "rpn_head": dict(grid_cpu["model"]["rpn_head"]),
                    "roi_head": _cpm_roi_head([8, 16, 32], 256, 128, point_feat_channels=16, num_convs=4,
                                              gn_groups=9, iou_fc_channels=256, max_num_grid=24,
                                              grid_init="mmdet"),
                },
                "data": dict(grid_cpu["data"]),
                "schedule": dict(grid_cpu["schedule"]),
            },
        },
    }


CPM_RCNN_R50_FPN = _cpm_rcnn("r50")
CPM_RCNN_R101_FPN = _cpm_rcnn("r101")
CPM_RCNN_X101_FPN_DCN = _cpm_rcnn("x101_dcn")

# ------------------------------------------------------------------------------ RepPoints
def _reppoints_head(channels: int, original: bool, giou: bool, v2: bool, corner_dim: int) -> dict[str, Any]:
    """A RepPoints head (specs/reppoints.md §1, §2).

    ``original=True``: the original V1 (mmdetection ``reppoints_moment_r50_fpn_gn-neck+head_1x``:
    moment transform, MaxIoU 0.5 / 0.4 refine assigner with min_pos_iou 0, NMS 0.5).
    ``original=False``: the RPv2 repository's configs (V1 "improved" and V2): exact_minmax, ATSS
    topk 9 refine assigner, NMS 0.6. ``giou``: GIoU weighted 1.0 / 2.0 with the repository's "+1"
    widths, else SmoothL1 beta 0.11 weighted 0.5 / 1.0. ``v2``: the verification branches (one
    shared conv, ``corner_dim``-wide corner pools, Gaussian focal 0.25, offset SmoothL1 1/9 x 1.0,
    foreground SEP focal 0.1, corner snapping at test). All: 3 GN(32) convs per tower, 9 points,
    gradient_mul 0.1, P3-P7, point_base_scale 4, PointAssigner(4, 1), focal loss 2 / 0.25,
    nms_pre 1000, score_thr 0.05, 100 per image. The flags the spec leaves open are decided in
    :mod:`models.dense_heads.reppoints_head` and :mod:`models.dense_heads.reppoints_v2_head`."""
    if original:
        refine: dict[str, Any] = {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0.0,
                                  "gt_max_assign_all": True, "ignore_iof_thr": -1.0, "match_low_quality": True}
    else:
        refine = {"type": "atss", "topk": 9, "ignore_iof_thr": -1.0}
    head: dict[str, Any] = {
        "feat_channels": channels, "point_feat_channels": channels, "stacked_convs": 3, "num_points": 9,
        "gradient_mul": 0.1, "point_strides": [8, 16, 32, 64, 128], "point_base_scale": 4.0,
        "norm": "gn", "norm_groups": 32,
        "transform_method": "moment" if original else "exact_minmax", "moment_mul": 0.01,
        "init_assigner": {"scale": 4.0, "pos_num": 1},
        "refine_assigner": refine,
        "drop_zero_iou_matches": True,
        "loss_cls_gamma": 2.0, "loss_cls_alpha": 0.25, "loss_cls_weight": 1.0,
        "loss_bbox": "giou" if giou else "smooth_l1", "loss_bbox_beta": 0.11, "giou_legacy": giou,
        "loss_init_weight": 1.0 if giou else 0.5, "loss_refine_weight": 2.0 if giou else 1.0,
        "test": {"nms_pre": 1000, "score_thr": 0.05, "nms_iou": 0.5 if original else 0.6, "max_per_img": 100},
    }
    if v2:
        head.update({"shared_stacked_convs": 1, "corner_dim": corner_dim, "first_kernel_size": 3, "kernel_size": 1,
                     "gaussian_iou": 0.7, "loss_heatmap_weight": 0.25, "loss_heatmap_alpha": 2.0,
                     "loss_heatmap_gamma": 4.0, "loss_offset_weight": 1.0, "loss_offset_beta": 1.0 / 9,
                     "loss_sem_weight": 0.1, "loss_sem_gamma": 2.0, "loss_sem_alpha": 0.25})
        head["test"]["corner_snapping"] = True
    return head


def _reppoints_backbone(arch: str, dcn: bool) -> dict[str, Any]:
    """Paper-scale backbones of the RepPoints tables (specs/reppoints.md §4). The "dcnv2" rows
    are modulated DCNv2 in every C3-C5 bottleneck, as the RPv2 configs (``dcn=dict(type='DCNv2',
    deformable_groups=1, fallback_on_stride=False)``, spec §4)."""
    dcn_version = 2 if dcn else None
    if arch == "mnv2":
        # RPv2 repo: trainable SyncBN, nothing frozen; torchvision's ImageNet weights replace the
        # repository's cloudstor file (models/backbones/mobilenet_v2.py)
        return {"type": "mobilenet_v2", "widen_factor": 1.0, "out_indices": [3, 6, 13, 17], "frozen_stages": -1,
                "norm_eval": False, "pretrained": "torchvision://mobilenet_v2"}
    if arch == "x101":
        backbone = _resnet_paper(101, dcn_version)
        backbone.update({"groups": 64, "width_per_group": 4, "pretrained": "torchvision://resnext101_64x4d"})
        return backbone
    return _resnet_paper({"r50": 50, "r101": 101}[arch], dcn_version)


def _reppoints(version: int, arch: str = "r50", dcn: bool = False, giou: bool = True, epochs: int = 12,
               multiscale: bool = False, channels: int = 256, original: bool = False) -> dict[str, Any]:
    """A RepPoints preset (specs/reppoints.md §1.7, §2, §4): one row of the RepPoints V2 README's
    V1 / V2 tables (``original=True``: the original V1 of mmdetection instead).

    Paper scale: ImageNet backbone (ResNet-50/101 and ResNeXt-101 64x4d with frozen stem + res2
    and norm_eval, optionally DCNv2 in every C3-C5 bottleneck; MobileNetV2 with trainable BN),
    FPN P3-P7 (P6 from the last backbone level ``on_input``, P7 from P6) with GN(32),
    ``channels``-wide FPN and head (128 for "c128"); 1333 x 800 or, with ``multiscale``, a
    short side uniform in [480, 960] (long side <= 1333), flip 0.5; 2 images x 8 GPUs, SGD lr
    0.01, warmup 500 iterations (ratio 0.001 in the RPv2 repo, 1/3 in the original V1),
    gradient clip L2 35, 12 epochs (steps 8, 11) or 24 (steps 16, 22).

    CPU scale: every preset on the Faster R-CNN CPU backbone (half-width ResNet-18 from
    scratch, C3-C5), a 64-channel GN(32) FPN P3-P7, the same head 64 wide (V2 corner pools 32
    wide), 160 px images (multi-scale: short side in [96, 192]) and the Faster R-CNN CPU
    schedule; the backbone and schedule rows of the tables therefore differ only at paper scale.
    """
    frcnn_paper = FASTER_RCNN_R50_FPN_1X["scales"]["paper"]
    frcnn_cpu = FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]
    v2 = version == 2
    neck = {"num_outs": 5, "add_extra_convs": "on_input", "relu_before_extra_convs": False, "norm": "gn"}
    paper_data = dict(frcnn_paper["data"])
    cpu_data = dict(frcnn_cpu["data"])
    if multiscale:
        paper_data.update({"train_scales": [[1333, 480], [1333, 960]], "multiscale_mode": "range"})
        cpu_data.update({"train_scales": [[256, 96], [256, 192]], "multiscale_mode": "range"})
    return {
        "detector": "reppoints_v2" if v2 else "reppoints",
        "scales": {
            "paper": {
                "model": {
                    "backbone": _reppoints_backbone(arch, dcn),
                    "neck": {"out_channels": channels, "start_level": 1, **neck},
                    "bbox_head": _reppoints_head(channels, original, giou, v2, corner_dim=64),
                },
                "data": paper_data,
                "schedule": {"epochs": epochs, "images_per_gpu": 2, "num_gpus": 8, "lr": 0.01, "momentum": 0.9,
                             "weight_decay": 1e-4, "warmup_iters": 500,
                             "warmup_ratio": 1.0 / 3 if original else 0.001,
                             "lr_steps": [8, 11] if epochs == 12 else [16, 22], "gamma": 0.1, "grad_clip": 35.0,
                             "sync_bn": arch == "mnv2"},
            },
            "cpu": {
                "model": {
                    "backbone": dict(frcnn_cpu["model"]["backbone"]),
                    "neck": {"out_channels": 64, "start_level": 0, **neck},
                    "bbox_head": _reppoints_head(64, original, giou, v2, corner_dim=32),
                },
                "data": cpu_data,
                "schedule": dict(frcnn_cpu["schedule"]),
            },
        },
    }


#: the original RepPoints V1 (mmdetection / microsoft configs; not a row of the RPv2 tables)
REPPOINTS_MOMENT_R50_FPN_GN_1X = _reppoints(1, giou=False, original=True)


def _reppoints_table_presets(version: int) -> dict[str, dict[str, Any]]:
    """The nine rows of the RepPoints V2 README's table for ``version`` (1 or 2)."""
    p = f"reppoints_v{version}_"
    ms2x = {"epochs": 24, "multiscale": True}
    return {
        p + "r50_fpn_1x": _reppoints(version, giou=False),
        p + "r50_fpn_giou_1x": _reppoints(version),
        p + "r50_fpn_giou_mstrain_2x": _reppoints(version, **ms2x),
        p + "r101_fpn_giou_mstrain_2x": _reppoints(version, "r101", **ms2x),
        p + "r101_fpn_dcn_giou_mstrain_2x": _reppoints(version, "r101", dcn=True, **ms2x),
        p + "x101_fpn_giou_mstrain_2x": _reppoints(version, "x101", **ms2x),
        p + "x101_fpn_dcn_giou_mstrain_2x": _reppoints(version, "x101", dcn=True, **ms2x),
        p + "mnv2_c128_fpn_giou_mstrain_2x": _reppoints(version, "mnv2", channels=128, **ms2x),
        p + "mnv2_fpn_giou_mstrain_2x": _reppoints(version, "mnv2", **ms2x),
    }


# ------------------------------------------------------------------------------ Dense RepPoints
def _dense_reppoints_head(channels: int, giou: bool, v2: bool) -> dict[str, Any]:
    """A Dense RepPoints head (specs/reppoints.md §3): the RPv2 repository's V1 settings (towers,
    PointAssigner(4, 1), ATSS topk 9, focal loss, GIoU "+1" 1.0 / 2.0 or SmoothL1 0.5 / 1.0 on the
    minmax pseudo boxes) with 729 points, 9 classification groups, 121 point-score maps after a
    7-conv mask trunk, DTS targets on a 56 x 56 crop with a 2 px band, Chamfer 0.5 / 1.0 and
    point-score BCE 1.0; NMS 0.6, masks on a 56 x 56 box grid, point threshold 0.5. ``v2``: one
    shared conv, contour focal 1.0 and offset SmoothL1 (1/9) 1.0, foreground focal 1.0, contour
    snapping at test (threshold 0.4)."""
    head = _reppoints_head(channels, original=False, giou=giou, v2=False, corner_dim=0)
    head.update({"num_points": 729, "transform_method": "minmax", "num_group": 9, "num_score_group": 121,
                 "stacked_mask_convs": 7, "mask_size": 56, "dist_sample_thr": 2.0,
                 "loss_chamfer_init_weight": 0.5, "loss_chamfer_refine_weight": 1.0, "loss_mask_score_weight": 1.0})
    head["test"].update({"pts_score_thr": 0.5, "mask_out_size": 56, "mask_resolution": "full"})
    if v2:
        head.update({"shared_stacked_convs": 1, "loss_contour_heatmap_weight": 1.0, "loss_contour_offset_weight": 1.0,
                     "loss_contour_offset_beta": 1.0 / 9, "loss_sem_weight": 1.0})
        head["test"].update({"contour_score_thr": 0.4, "contour_snapping": True})
    return head


def _dense_reppoints(version: int, giou: bool = True, epochs: int = 12, multiscale: bool = False) -> dict[str, Any]:
    """A Dense RepPoints preset: one row of the RepPoints V2 README's Dense V1 / V2 tables.

    The RepPoints preset of the same version's R-50 row (:func:`_reppoints`: ImageNet ResNet-50,
    GN FPN P3-P7, SGD lr 0.01 for 16 images, warmup 500 at 0.001, clip 35; multi-scale short side
    in [480, 960]) with the Dense head, instance masks in the data, and 12 epochs (steps 8, 11) or
    36 (steps 24, 33). CPU scale: that preset's CPU backbone, data (plus masks) and schedule, the
    same Dense head 64 channels wide (still 729 points and 121 score maps)."""
    preset = _reppoints(version, giou=giou, epochs=min(epochs, 24), multiscale=multiscale)
    preset["detector"] = "dense_reppoints_v2" if version == 2 else "dense_reppoints"
    for scale, channels in (("paper", 256), ("cpu", 64)):
        cfg = preset["scales"][scale]
        cfg["model"]["bbox_head"] = _dense_reppoints_head(channels, giou, version == 2)
        cfg["data"]["with_masks"] = True
    paper_schedule = preset["scales"]["paper"]["schedule"]
    paper_schedule.update({"epochs": epochs, "lr_steps": {12: [8, 11], 24: [16, 22], 36: [24, 33]}[epochs]})
    return preset


def _dense_reppoints_table_presets(version: int) -> dict[str, dict[str, Any]]:
    """The three rows of the RepPoints V2 README's Dense table for ``version`` (1 or 2)."""
    p = f"dense_reppoints_v{version}_"
    return {
        p + "r50_fpn_1x": _dense_reppoints(version, giou=False),
        p + "r50_fpn_giou_1x": _dense_reppoints(version),
        p + "r50_fpn_giou_mstrain_3x": _dense_reppoints(version, epochs=36, multiscale=True),
    }


PRESETS: dict[str, dict[str, Any]] = {
    "faster_rcnn_r50_fpn_1x": FASTER_RCNN_R50_FPN_1X,
    "d2det_r50_fpn": D2DET_R50_FPN,
    "d2det_r101_fpn": D2DET_R101_FPN,
    "d2det_r101_fpn_dcn": D2DET_R101_FPN_DCN,
    "d2det_r101_fpn_mask": D2DET_R101_FPN_MASK,
    "grid_rcnn_r50_fpn_2x": GRID_RCNN_R50_FPN_2X,
    "cpm_rcnn_r50_fpn": CPM_RCNN_R50_FPN,
    "cpm_rcnn_r101_fpn": CPM_RCNN_R101_FPN,
    "cpm_rcnn_x101_fpn_dcn": CPM_RCNN_X101_FPN_DCN,
    "reppoints_moment_r50_fpn_gn_1x": REPPOINTS_MOMENT_R50_FPN_GN_1X,
    **_reppoints_table_presets(1),
    **_reppoints_table_presets(2),
    **_dense_reppoints_table_presets(1),
    **_dense_reppoints_table_presets(2),
}
