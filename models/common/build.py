"""Building the parts every family shares from a preset's plain ``model`` dict: backbone, FPN,
RPN and the standard (Faster R-CNN) RoI head, plus the helpers the family builders use.

The config layout is described in :mod:`models.build`."""
from __future__ import annotations

from typing import Any

from torch import nn

from models.common.backbones.mobilenet_v2 import MobileNetV2
from models.common.backbones.resnet import ResNet
from models.common.dense_heads.rpn_head import ProposalConfig, RPNHead
from models.common.necks.fpn import FPN
from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.common.roi_heads.roi_extractor import SingleRoIExtractor
from models.common.roi_heads.standard_roi_head import StandardRoIHead
from models.common.task_modules.anchor_generator import AnchorGenerator
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.box_coder import DeltaXYWHBBoxCoder
from models.common.task_modules.samplers import RandomSampler


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
