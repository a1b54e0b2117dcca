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

from models.backbones.mobilenet_v2 import MobileNetV2
from models.backbones.resnet import ResNet
from models.dense_heads.rpn_head import ProposalConfig, RPNHead
from models.dense_heads.dense_reppoints_head import DenseRepPointsHead
from models.dense_heads.dense_reppoints_v2_head import DenseRepPointsV2Head
from models.dense_heads.reppoints_head import RepPointsHead
from models.dense_heads.reppoints_v2_head import RepPointsV2Head
from models.detectors.cpm_rcnn import CPMRCNN
from models.detectors.d2det import D2Det
from models.detectors.grid_rcnn import GridRCNN
from models.detectors.single_stage import DenseRepPointsDetector, RepPointsDetector
from models.detectors.two_stage import FasterRCNN
from models.necks.fpn import FPN
from models.roi_heads.bbox_head import Shared2FCBBoxHead
from models.roi_heads.cpm_roi_head import CPMRoIHead
from models.roi_heads.d2det_head import DenseLocalRegressionHead
from models.roi_heads.d2det_instance_head import D2DetInstanceBranch
from models.roi_heads.d2det_roi_head import D2DetRoIHead
from models.roi_heads.drp_extractor import DiscriminativeRoIExtractor
from models.roi_heads.grid_head import GridHead
from models.roi_heads.grid_roi_head import GridRoIHead
from models.roi_heads.roi_extractor import SingleRoIExtractor
from models.roi_heads.standard_roi_head import StandardRoIHead
from models.task_modules.anchor_generator import AnchorGenerator
from models.task_modules.assigners import MaxIoUAssigner
from models.task_modules.atss_assigner import ATSSAssigner
from models.task_modules.box_coder import DeltaXYWHBBoxCoder
from models.task_modules.point_assigner import PointAssigner
from models.task_modules.samplers import RandomSampler

DETECTORS = ("faster_rcnn", "d2det", "grid_rcnn", "cpm_rcnn", "reppoints", "reppoints_v2", "dense_reppoints",
             "dense_reppoints_v2")
#: the single-stage detectors: head class and detector class
POINT_SET_DETECTORS = {
    "reppoints": (RepPointsHead, RepPointsDetector),
    "reppoints_v2": (RepPointsV2Head, RepPointsDetector),
    "dense_reppoints": (DenseRepPointsHead, DenseRepPointsDetector),
    "dense_reppoints_v2": (DenseRepPointsV2Head, DenseRepPointsDetector),
}


def _section(cfg: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    if key not in cfg or not isinstance(cfg[key], dict):
        raise KeyError(f"model config: missing section {where}{key}")
    return dict(cfg[key])


def _make(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"model config {where}: {e}") from e


BACKBONES: dict[str, type[nn.Module]] = {"resnet": ResNet, "mobilenet_v2": MobileNetV2}


def build_backbone(cfg: dict[str, Any]) -> ResNet | MobileNetV2:
    """The backbone named by ``cfg["type"]`` (one of :data:`BACKBONES`; ``"resnet"`` when
    absent), built from the remaining keys. Both expose ``out_channels`` and ``strides``."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "resnet")
    if not isinstance(kind, str) or kind not in BACKBONES:
        raise ValueError(f"model config backbone.type: unknown backbone {kind!r}; known types: {sorted(BACKBONES)}")
    return _make(BACKBONES[kind], cfg, "backbone")


def build_neck(cfg: dict[str, Any], in_channels: list[int]) -> FPN:
    return _make(FPN, {**cfg, "in_channels": in_channels}, "neck")


def build_rpn_head(cfg: dict[str, Any], in_channels: int) -> RPNHead:
    cfg = dict(cfg)
    w = "rpn_head."
    parts = {
        "anchor_generator": _make(AnchorGenerator, _section(cfg, "anchor_generator", w), w + "anchor_generator"),
        "bbox_coder": _make(DeltaXYWHBBoxCoder, _section(cfg, "bbox_coder", w), w + "bbox_coder"),
        "assigner": _make(MaxIoUAssigner, _section(cfg, "assigner", w), w + "assigner"),
        "sampler": _make(RandomSampler, _section(cfg, "sampler", w), w + "sampler"),
        "train_proposals": _make(ProposalConfig, _section(cfg, "train_proposals", w), w + "train_proposals"),
        "test_proposals": _make(ProposalConfig, _section(cfg, "test_proposals", w), w + "test_proposals"),
    }
    for key in parts:
        cfg.pop(key)
    return _make(RPNHead, {**cfg, **parts, "in_channels": in_channels}, "rpn_head")


def _classifier_branch(cfg: dict[str, Any], in_channels: int, num_classes: int
                       ) -> tuple[SingleRoIExtractor, Shared2FCBBoxHead]:
    """The ``bbox_roi_extractor`` (RoIAlign) and the ``bbox_head`` it feeds, from a ``roi_head``
    section (the box head's input size follows from the extractor)."""
    w = "roi_head."
    extractor = _make(SingleRoIExtractor, _section(cfg, "bbox_roi_extractor", w), w + "bbox_roi_extractor")
    bbox_head = _make(
        Shared2FCBBoxHead,
        {**_section(cfg, "bbox_head", w), "in_channels": in_channels, "roi_feat_size": extractor.output_size,
         "num_classes": num_classes},
        w + "bbox_head",
    )
    return extractor, bbox_head


def _roi_sampling(cfg: dict[str, Any]) -> dict[str, Any]:
    """``assigner`` (MaxIoUAssigner) and ``sampler`` (RandomSampler) of a ``roi_head`` section."""
    w = "roi_head."
    return {
        "assigner": _make(MaxIoUAssigner, _section(cfg, "assigner", w), w + "assigner"),
        "sampler": _make(RandomSampler, _section(cfg, "sampler", w), w + "sampler"),
    }


def build_standard_roi_head(cfg: dict[str, Any], in_channels: int, num_classes: int) -> StandardRoIHead:
    w = "roi_head."
    extractor, bbox_head = _classifier_branch(cfg, in_channels, num_classes)
    return _make(
        StandardRoIHead,
        {
            "bbox_roi_extractor": extractor,
            "bbox_head": bbox_head,
            **_roi_sampling(cfg),
            **_section(cfg, "test", w),
        },
        "roi_head",
    )


def build_d2det_roi_head(cfg: dict[str, Any], in_channels: int, num_classes: int) -> D2DetRoIHead:
    w = "roi_head."
    extractor = _make(DiscriminativeRoIExtractor, {**_section(cfg, "bbox_roi_extractor", w), "in_channels": in_channels},
                      w + "bbox_roi_extractor")
    bbox_head = _make(
        Shared2FCBBoxHead,
        {**_section(cfg, "bbox_head", w), "in_channels": in_channels, "roi_feat_size": extractor.out_size,
         "num_classes": num_classes},
        w + "bbox_head",
    )
    reg_extractor = _make(SingleRoIExtractor, _section(cfg, "reg_roi_extractor", w), w + "reg_roi_extractor")
    dlr_head = _make(DenseLocalRegressionHead, {**_section(cfg, "dlr_head", w), "in_channels": in_channels},
                     w + "dlr_head")
    instance_head = None
    if cfg.get("instance_head") is not None:
        instance_head = _make(D2DetInstanceBranch,
                              {**_section(cfg, "instance_head", w), "trunk_channels": dlr_head.conv_channels,
                               "num_classes": num_classes, "grid": dlr_head.grid},
                              w + "instance_head")
    return _make(
        D2DetRoIHead,
        {
            "bbox_roi_extractor": extractor,
            "bbox_head": bbox_head,
            "reg_roi_extractor": reg_extractor,
            "dlr_head": dlr_head,
            "instance_head": instance_head,
            **_roi_sampling(cfg),
            **_section(cfg, "train", w),
            **_section(cfg, "test", w),
        },
        "roi_head",
    )


def build_grid_roi_head(cfg: dict[str, Any], in_channels: int, num_classes: int) -> GridRoIHead:
    w = "roi_head."
    extractor, bbox_head = _classifier_branch(cfg, in_channels, num_classes)
    grid_extractor = _make(SingleRoIExtractor, _section(cfg, "grid_roi_extractor", w), w + "grid_roi_extractor")
    grid_head = _make(GridHead, {**_section(cfg, "grid_head", w), "in_channels": in_channels,
                                 "roi_feat_size": grid_extractor.output_size}, w + "grid_head")
    return _make(
        GridRoIHead,
        {
            "bbox_roi_extractor": extractor,
            "bbox_head": bbox_head,
            "grid_roi_extractor": grid_extractor,
            "grid_head": grid_head,
            **_roi_sampling(cfg),
            **_section(cfg, "train", w),
            **_section(cfg, "test", w),
        },
        "roi_head",
    )


def build_cpm_roi_head(cfg: dict[str, Any], in_channels: int, num_classes: int) -> CPMRoIHead:
    """CPM R-CNN's RoI head from the ``roi_head`` section (module docstring); the module
    switches ``with_cmm`` / ``with_ism`` / ``with_rsm`` are top-level keys of the section."""
    w = "roi_head."
    extractor, bbox_head = _classifier_branch(cfg, in_channels, num_classes)
    flags = {key: cfg[key] for key in ("with_cmm", "with_ism", "with_rsm") if key in cfg}
    return _make(
        CPMRoIHead,
        {
            "bbox_roi_extractor": extractor,
            "bbox_head": bbox_head,
            "grid_roi_extractor": _make(SingleRoIExtractor, _section(cfg, "grid_roi_extractor", w),
                                        w + "grid_roi_extractor"),
            "grid_head": _section(cfg, "grid_head", w),
            "in_channels": in_channels,
            **flags,
            **_section(cfg, "cascade", w),
            "iou_head": dict(cfg.get("iou_head") or {}),
            "rsm_head": dict(cfg.get("rsm_head") or {}),
            "rsm_sampler": _make(RandomSampler, _section(cfg, "rsm_sampler", w), w + "rsm_sampler"),
            **_roi_sampling(cfg),
            **_section(cfg, "train", w),
            **_section(cfg, "test", w),
        },
        "roi_head",
    )


REFINE_ASSIGNERS = {"max_iou": MaxIoUAssigner, "atss": ATSSAssigner}


def build_reppoints_head(cfg: dict[str, Any], in_channels: int, num_classes: int,
                         head_class: type[RepPointsHead] = RepPointsHead) -> RepPointsHead:
    cfg = dict(cfg)
    w = "bbox_head."
    refine_cfg = _section(cfg, "refine_assigner", w)
    kind = refine_cfg.pop("type", None)
    if kind not in REFINE_ASSIGNERS:
        raise ValueError(f"model config {w}refine_assigner.type must be one of {sorted(REFINE_ASSIGNERS)}, "
                         f"got {kind!r}")
    parts = {
        "init_assigner": _make(PointAssigner, _section(cfg, "init_assigner", w), w + "init_assigner"),
        "refine_assigner": _make(REFINE_ASSIGNERS[kind], refine_cfg, w + "refine_assigner"),
    }
    test = _section(cfg, "test", w)
    for key in (*parts, "test"):
        cfg.pop(key)
    return _make(head_class, {**cfg, **parts, **test, "in_channels": in_channels, "num_classes": num_classes},
                 "bbox_head")


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
