"""The RepPoints family's dense head (V1, V2, and the Dense heads that subclass them) from the
``bbox_head`` section of a preset (layout: :mod:`models.build`)."""
from __future__ import annotations

from typing import Any

from models.common.build import _make, _section
from models.common.task_modules.assigners import MaxIoUAssigner
from models.reppoints.atss_assigner import ATSSAssigner
from models.reppoints.point_assigner import PointAssigner
from models.reppoints.reppoints_head import RepPointsHead


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
