"""Grid R-CNN's RoI head from the ``roi_head`` section of a preset (layout: :mod:`models.build`)."""
from __future__ import annotations

from typing import Any

from models.common.build import _classifier_branch, _make, _roi_sampling, _section
from models.common.roi_heads.roi_extractor import SingleRoIExtractor
from models.grid_rcnn.grid_head import GridHead
from models.grid_rcnn.grid_roi_head import GridRoIHead


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
