"""RepPoints V1 / V2 presets (specs/reppoints.md): the rows of the RepPoints V2 README's tables
and the original (moment) V1."""
from __future__ import annotations

from typing import Any

from models.common.presets import FASTER_RCNN_R50_FPN_1X, _resnet_paper


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
    :mod:`models.reppoints.reppoints_head` and :mod:`models.reppoints.reppoints_v2_head`."""
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
        # repository's cloudstor file (models/common/backbones/mobilenet_v2.py)
        return {"type": "mobilenet_v2", "widen_factor": 1.0, "out_indices": [3, 6, 13, 17], "frozen_stages": -1,
                "norm_eval": False, "pretrained": "torchvision://mobilenet_v2"}
    if arch == "x101":
        backbone = _resnet_paper(101, dcn_version)
        backbone.update({"groups": 64, "width_per_group": 4, "pretrained": "torchvision://resnext101_64x4d"})
        return backbone
    return _resnet_paper({"r50": 50, "r101": 101}[arch], dcn_version)


#: The CPU schedule of every RepPoints and Dense RepPoints V1 preset: the Faster R-CNN CPU schedule
#: (batch 8, warmup 50, momentum 0.9, weight decay 1e-4) at lr 0.01 instead of 0.04, for 5 epochs
#: (1255 iterations, x0.1 at 4.25) instead of 2. The point-set heads learn their focal-loss
#: classifier slowly and are hurt by a high rate: RepPoints V1 from the pretrained CPU backbone
#: reached minival AP50 0.166 after 502 iterations at lr 0.04, 0.283 at 0.01, 0.263 at 0.005,
#: 0.328 after 1004 at 0.04 and 0.585 after 1004 at 0.01 on one machine, but 0.445 (0.441 with
#: ``ATEN_CPU_CAPABILITY=avx2``) after the same 1004 on another; after 5 epochs it reached 0.569
#: there, and Dense RepPoints V1 0.593 where 4 epochs gave 0.482 (benchmarks/README.md, issue 15).
#: The paper's rate is 0.01 for 16 images, so this is twice its linear scaling to 8.
CPU_SCHEDULE: dict[str, Any] = {**FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]["schedule"],
                                "lr": 0.01, "epochs": 5, "lr_steps": [4.25]}

#: The V2 presets' (RepPoints V2 and Dense RepPoints V2) CPU schedule: :data:`CPU_SCHEDULE` for
#: 3 epochs (753 iterations, x0.1 at 2.55). Their verification branches and corner / contour
#: snapping learn faster: RepPoints V2 reached minival AP50 0.626 after 3 epochs, 0.687 after 4,
#: and Dense RepPoints V2 0.607 after 3, 0.650 after 4 (benchmarks/README.md, issue 15),
#: where V1 needs more (RepPoints V1: 0.445 to 0.585 after 4, by machine; 0.393 after 3 at lr 0.02).
CPU_SCHEDULE_V2: dict[str, Any] = {**CPU_SCHEDULE, "epochs": 3, "lr_steps": [2.55]}


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
    wide), 160 px images (multi-scale: short side in [96, 192]) and a schedule of their own,
    :data:`CPU_SCHEDULE` (V1) or :data:`CPU_SCHEDULE_V2` (V2); the backbone and schedule rows of
    the tables therefore differ only at paper scale.
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
                             "auto_scale_lr": True,
                             "sync_bn": arch == "mnv2"},
            },
            "cpu": {
                "model": {
                    "backbone": dict(frcnn_cpu["model"]["backbone"]),
                    "neck": {"out_channels": 64, "start_level": 0, **neck},
                    "bbox_head": _reppoints_head(64, original, giou, v2, corner_dim=32),
                },
                "data": cpu_data,
                "schedule": dict(CPU_SCHEDULE_V2 if v2 else CPU_SCHEDULE),
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
