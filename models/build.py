"""Building a detector from the plain configuration dict of a preset (see :mod:`models.presets`).

Every leaf section maps one-to-one onto a constructor's keyword arguments, so a key in
``params.yaml`` is the argument name in the code. Channel counts that follow from other
parts (FPN inputs = backbone outputs, head inputs = FPN width, box head input size = RoI
output size, number of classes) are filled in here, not configured.

Model config layout::

    backbone: optional ``type`` ("resnet", the default when absent, or "mobilenet_v2"),
      plus ResNet or MobileNetV2 kwargs
    neck: FPN kwargs (without in_channels)
    rpn_head:
      feat_channels, allowed_border, loss_cls_weight, loss_bbox_beta, loss_bbox_weight
      anchor_generator: AnchorGenerator kwargs
      bbox_coder: DeltaXYWHBBoxCoder kwargs
      assigner: MaxIoUAssigner kwargs
      sampler: RandomSampler kwargs
      train_proposals, test_proposals: ProposalConfig kwargs
    roi_head:
      bbox_roi_extractor: SingleRoIExtractor kwargs
      bbox_head: Shared2FCBBoxHead kwargs (without in_channels, roi_feat_size, num_classes)
      assigner, sampler: as above
      test: {score_thr, nms_iou, max_per_img}

D2Det (``detector: d2det``) replaces ``roi_head`` by::

    roi_head:
      bbox_roi_extractor: DiscriminativeRoIExtractor kwargs (without in_channels)
      bbox_head: Shared2FCBBoxHead kwargs (with_reg false)
      reg_roi_extractor: SingleRoIExtractor kwargs (14x14)
      dlr_head: DenseLocalRegressionHead kwargs (without in_channels)
      instance_head: null, or D2DetInstanceBranch kwargs (without trunk_channels,
        num_classes, grid)
      assigner, sampler: as above
      train: D2DetRoIHead training kwargs (max_num_reg, jitter_amplitude, loss weights, ...)
      test: D2DetRoIHead test kwargs (score_thr, nms_iou, max_per_img, soft_nms_*, ...)

Grid R-CNN (``detector: grid_rcnn``) replaces ``roi_head`` by::

    roi_head:
      bbox_roi_extractor: SingleRoIExtractor kwargs (7x7)
      bbox_head: Shared2FCBBoxHead kwargs (with_reg false)
      grid_roi_extractor: SingleRoIExtractor kwargs (14x14)
      grid_head: GridHead kwargs (without in_channels, roi_feat_size = the grid
        extractor's output_size)
      assigner, sampler: as above
      train: GridRoIHead training kwargs (max_num_grid, grid_cap_scope, jitter_amplitude)
      test: {score_thr, nms_iou, max_per_img}

CPM R-CNN (``detector: cpm_rcnn``) replaces ``roi_head`` by::

    roi_head:
      with_cmm, with_ism, with_rsm: the module switches (bools; a params.yaml override
        ``model: {roi_head: {with_ism: false}}``, or ``dvc exp run -S`` on it, flips one)
      bbox_roi_extractor: SingleRoIExtractor kwargs (7x7; also pools the RSM's RoIs)
      bbox_head: Shared2FCBBoxHead kwargs (with_reg false)
      grid_roi_extractor: SingleRoIExtractor kwargs (14x14, every grid stage)
      grid_head: GridHead kwargs shared by the stages (without in_channels, roi_feat_size,
        mapping_ratio)
      cascade: {stage_iou_thrs, stage_mapping_ratios, stage_loss_weights} (one entry per
        CMM stage; with_cmm false uses the first entries only)
      iou_head: IoUScoringHead kwargs (fc_channels, loss_weight), used when with_ism
      rsm_head: Shared2FCBBoxHead kwargs of the RSM classifier (fc_out_channels,
        loss_cls_weight), used when with_rsm
      rsm_sampler: RandomSampler kwargs of the RSM's resampling
      assigner, sampler: as above
      train: CPMRoIHead training kwargs (max_num_grid, grid_cap_scope, jitter_amplitude)
      test: CPMRoIHead test kwargs (score_thr, nms_iou, max_per_img, max_before_refine,
        nms_after_refine, rsm_score_weight)

RepPoints (``detector: reppoints``, a single-stage detector) has no ``rpn_head`` /
``roi_head``; instead::

    bbox_head: RepPointsHead kwargs (without in_channels, num_classes), plus
      init_assigner: PointAssigner kwargs
      refine_assigner: {type: max_iou, MaxIoUAssigner kwargs} or {type: atss, ATSSAssigner kwargs}
      test: {nms_pre, score_thr, nms_iou, max_per_img}

RepPoints V2 (``detector: reppoints_v2``) has the same layout with RepPointsV2Head kwargs
(``shared_stacked_convs``, ``corner_dim``, the verification loss settings) and
``test.corner_snapping``.

Dense RepPoints (``detector: dense_reppoints`` / ``dense_reppoints_v2``) has the same layout with
DenseRepPointsHead / DenseRepPointsV2Head kwargs (``num_group``, ``num_score_group``,
``stacked_mask_convs``, ``mask_size``, ``dist_sample_thr``, the Chamfer / point-score / contour /
foreground loss settings) and ``test.{pts_score_thr, mask_out_size, mask_resolution}`` (V2 also
``contour_score_thr``, ``contour_snapping``); it needs ``data.with_masks: true``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from models.common.build import build_backbone, build_neck, build_rpn_head, build_standard_roi_head, _section
from models.cpm_rcnn.build import build_cpm_roi_head
from models.cpm_rcnn.cpm_rcnn import CPMRCNN
from models.d2det.build import build_d2det_roi_head
from models.d2det.d2det import D2Det
from models.dense_reppoints.dense_reppoints_detector import DenseRepPointsDetector
from models.dense_reppoints.dense_reppoints_head import DenseRepPointsHead
from models.dense_reppoints.dense_reppoints_v2_head import DenseRepPointsV2Head
from models.faster_rcnn.faster_rcnn import FasterRCNN
from models.grid_rcnn.build import build_grid_roi_head
from models.grid_rcnn.grid_rcnn import GridRCNN
from models.reppoints.build import build_reppoints_head
from models.reppoints.reppoints_head import RepPointsHead
from models.reppoints.reppoints_v2_head import RepPointsV2Head
from models.reppoints.single_stage import RepPointsDetector

__all__ = ["DETECTORS", "build_model", "build_backbone", "build_neck", "build_reppoints_head"]

DETECTORS = ("faster_rcnn", "d2det", "grid_rcnn", "cpm_rcnn", "reppoints", "reppoints_v2", "dense_reppoints",
             "dense_reppoints_v2")
#: the single-stage detectors: head class and detector class
POINT_SET_DETECTORS = {
    "reppoints": (RepPointsHead, RepPointsDetector),
    "reppoints_v2": (RepPointsV2Head, RepPointsDetector),
    "dense_reppoints": (DenseRepPointsHead, DenseRepPointsDetector),
    "dense_reppoints_v2": (DenseRepPointsV2Head, DenseRepPointsDetector),
}


def build_model(detector: str, model_cfg: dict[str, Any], num_classes: int, load_pretrained: bool = True) -> nn.Module:
    """Build detector ``detector`` (one of :data:`DETECTORS`) from a preset's ``model`` section.

    ``num_classes`` counts foreground classes only (80 for COCO). ``load_pretrained=False``
    skips the backbone's ``pretrained`` weights (e.g. when a trained checkpoint is loaded
    right after, so an offline machine never tries to fetch ImageNet weights).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; known: {DETECTORS}")
    backbone_cfg = _section(model_cfg, "backbone", "")
    if not load_pretrained:
        backbone_cfg["pretrained"] = None
    backbone = build_backbone(backbone_cfg)
    neck = build_neck(_section(model_cfg, "neck", ""), backbone.out_channels)
    if detector in POINT_SET_DETECTORS:
        head_class, detector_class = POINT_SET_DETECTORS[detector]
        head = build_reppoints_head(_section(model_cfg, "bbox_head", ""), neck.out_channels, num_classes, head_class)
        return detector_class(backbone, neck, head)
    rpn_head = build_rpn_head(_section(model_cfg, "rpn_head", ""), neck.out_channels)
    roi_cfg = _section(model_cfg, "roi_head", "")
    if detector == "d2det":
        return D2Det(backbone, neck, rpn_head, build_d2det_roi_head(roi_cfg, neck.out_channels, num_classes))
    if detector == "grid_rcnn":
        return GridRCNN(backbone, neck, rpn_head, build_grid_roi_head(roi_cfg, neck.out_channels, num_classes))
    if detector == "cpm_rcnn":
        return CPMRCNN(backbone, neck, rpn_head, build_cpm_roi_head(roi_cfg, neck.out_channels, num_classes))
    return FasterRCNN(backbone, neck, rpn_head, build_standard_roi_head(roi_cfg, neck.out_channels, num_classes))
