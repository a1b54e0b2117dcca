"""D2Det's RoI head from the ``roi_head`` section of a preset (layout: :mod:`models.build`)."""
from __future__ import annotations

from typing import Any

from models.common.build import _make, _roi_sampling, _section
from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.common.roi_heads.roi_extractor import SingleRoIExtractor
from models.d2det.d2det_head import DenseLocalRegressionHead
from models.d2det.d2det_instance_head import D2DetInstanceBranch
from models.d2det.d2det_roi_head import D2DetRoIHead
from models.d2det.drp_extractor import DiscriminativeRoIExtractor


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
