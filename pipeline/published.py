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
}
