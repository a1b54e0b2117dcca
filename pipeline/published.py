"""Published COCO numbers that our tables show beside our own, labelled by their source.

Keyed by preset name. ``minival`` is COCO val2017 (minival) box AP and ``test-dev`` COCO
test-dev box AP, in percent, as published; ``None`` where the source gives none. These
are never written into a column for our measurements.
"""
from __future__ import annotations

PUBLISHED: dict[str, dict] = {
    "faster_rcnn_r50_fpn_1x": {
        "source": "mmdetection model zoo (faster_rcnn_r50_fpn_1x_coco, v2)",
        "minival": 37.4,
        "test-dev": None,
    },
    "d2det_r50_fpn": {"source": "D2Det README (specs/d2det.md §7.1), 24 epochs", "minival": 43.7, "test-dev": 43.9},
    "d2det_r101_fpn": {"source": "D2Det README, 24 epochs", "minival": 44.9, "test-dev": 45.4},
    "d2det_r101_fpn_dcn": {"source": "D2Det README, 24 epochs", "minival": 46.9, "test-dev": 47.5},
    "d2det_r101_fpn_mask": {"source": "D2Det README (box AP not published; mask AP 39.8 val / 40.2 test-dev)",
                            "minival": None, "test-dev": None},
}

#: The papers' own result tables (from ``shared/seeds/``), regenerated with our numbers beside
#: the published ones. Each row names the preset whose runs fill "ours" and the COCO task
#: (``bbox`` or ``segm``) its AP is read from; the published values are copied from the seed
#: as printed (``None`` where it prints ``xx.x``).
PAPER_TABLES: list[dict] = [
    {
        "title": "D2Det",
        "source": "official D2Det README (JialeCao001/D2Det), the seed table",
        "rows": [
            {"name": "D2Det-res50", "type": "object detection", "preset": "d2det_r50_fpn", "task": "bbox",
             "validation": None, "test-dev": 33.9,
             "note": "the seed prints xx.x / 33.9; the README at a76781a (specs/d2det.md §7.1) reads 43.7 / 43.9"},
            {"name": "D2Det-res101", "type": "object detection", "preset": "d2det_r101_fpn", "task": "bbox",
             "validation": 44.9, "test-dev": 45.4},
            {"name": "D2Det-res101-dcn", "type": "object detection", "preset": "d2det_r101_fpn_dcn", "task": "bbox",
             "validation": 46.9, "test-dev": 47.5},
            {"name": "D2Det-res101", "type": "instance segmentation", "preset": "d2det_r101_fpn_mask", "task": "segm",
             "validation": None, "test-dev": 40.2,
             "note": "mask AP; the seed prints xx.x for validation (specs/d2det.md §7.1: 39.8)"},
        ],
    },
]
