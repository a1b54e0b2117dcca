"""CPM R-CNN's RoI head from the ``roi_head`` section of a preset (layout: :mod:`models.build`)."""
from __future__ import annotations

from typing import Any

from models.common.build import _classifier_branch, _make, _roi_sampling, _section
from models.common.roi_heads.roi_extractor import SingleRoIExtractor
from models.common.task_modules.samplers import RandomSampler
from models.cpm_rcnn.cpm_roi_head import CPMRoIHead


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
