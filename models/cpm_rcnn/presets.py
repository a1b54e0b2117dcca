"""CPM R-CNN presets (specs/cpm_rcnn.md): R-50, R-101 and X-101-DCN, built on the Grid R-CNN
presets."""
from __future__ import annotations

from typing import Any

from models.common.presets import FASTER_RCNN_R50_FPN_1X, _resnet_paper, _roi_head
from models.grid_rcnn.presets import GRID_RCNN_R50_FPN_2X, _grid_roi_head


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
                             "lr_steps": [16.373, 21.831], "gamma": 0.1, "grad_clip": None,
                             "auto_scale_lr": True},
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
                # the Faster R-CNN CPU schedule (2 epochs), as Grid R-CNN's CPU preset
                "schedule": dict(FASTER_RCNN_R50_FPN_1X["scales"]["cpu"]["schedule"]),
            },
        },
    }


CPM_RCNN_R50_FPN = _cpm_rcnn("r50")
CPM_RCNN_R101_FPN = _cpm_rcnn("r101")
CPM_RCNN_X101_FPN_DCN = _cpm_rcnn("x101_dcn")
