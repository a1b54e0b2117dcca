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
    "reppoints_v1_r50_fpn_giou_1x": {"source": "RepPointsV2 README, improved RepPoints V1, 12 epochs",
                                     "minival": 39.9, "test-dev": None},
    "reppoints_v2_r50_fpn_giou_1x": {"source": "RepPointsV2 README, 12 epochs", "minival": 41.1, "test-dev": 41.3},
    "dense_reppoints_v1_r50_fpn_giou_1x": {"source": "RepPointsV2 README, Dense RepPoints V1, 12 epochs "
                                           "(mask AP 34.2 minival / 34.5 test-dev)",
                                           "minival": 40.9, "test-dev": 41.1},
    "dense_reppoints_v2_r50_fpn_giou_1x": {"source": "RepPointsV2 README, Dense RepPoints V2, 12 epochs "
                                           "(mask AP 35.1 minival / 35.4 test-dev)",
                                           "minival": 41.5, "test-dev": 41.6},
    "grid_rcnn_r50_fpn_2x": {"source": "mmdetection README, Grid R-CNN R-50 2x (specs/cpm_rcnn.md §1.9)",
                             "minival": 40.4, "test-dev": None},
    "cpm_rcnn_r50_fpn": {"source": "CPM R-CNN README, R-50-FPN 2x (specs/cpm_rcnn.md §4.1)",
                         "minival": None, "test-dev": 41.7},
}

#: The seed's footnotes under both RepPoints tables (``shared/seeds/002_1d8b0762e8302be9.md``).
REPPOINTS_SEED_NOTES: list[str] = [
    "GIoU: GIoU loss instead of smooth-L1 for the regression branch",
    "X-101: ResNeXt-101-64x4d; dcnv2: deformable convolutional networks v2",
    "1x / 2x: 12 / 24 epochs; multi-scale training draws the shorter image side from [480, 960]",
    "c128: 128 (instead of 256) channels in the head's towers",
    "MNV2: MobileNetV2, trained with SyncBN and the GIoU loss by default",
]

#: The seed's footnotes that apply to its two Dense RepPoints tables.
DENSE_REPPOINTS_SEED_NOTES: list[str] = [
    "GIoU: GIoU loss instead of smooth-L1 for the regression branch",
    "1x / 3x: 12 / 36 epochs; MS (multi-scale) training draws the shorter image side from [480, 960]",
]

#: The papers' own result tables (from ``shared/seeds/``), regenerated with our numbers beside
#: the published ones. Each row names the preset whose runs fill "ours" and the COCO task
#: (``bbox`` or ``segm``) its AP is read from; the published values (``validation`` = minival,
#: ``test-dev``) are copied from the seed as printed (``None`` where it prints ``xx.x`` or ``---``).
#:
#: A table's own descriptive columns are listed in ``columns``; each row holds its cell under
#: the column's heading (e.g. ``"type"``). ``name_heading`` (default ``"name"``) heads the row
#: names and ``split_headings`` (default ``["validation", "test-dev"]``) name the two AP
#: columns, each shown once as "Ours: ..." and once as "Paper: ...". ``notes`` are the seed's
#: footnotes kept under the table; a row's ``note`` is numbered beside its name.
#:
#: A table whose rows give AP for several tasks at once (Dense RepPoints: box and mask AP,
#: each as minival/test-dev) lists them in ``tasks``, ``(task, heading)`` pairs; each such row
#: holds, under each task, the published ``(minival, test-dev)`` pair instead of ``task`` /
#: ``validation`` / ``test-dev``, and each task gets one "Ours: <heading>" and one
#: "Paper: <heading>" column whose cells read "minival / test-dev".
PAPER_TABLES: list[dict] = [
    {
        "title": "D2Det",
        "source": "official D2Det README (JialeCao001/D2Det), the seed table",
        "columns": ["type"],
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
    {  # the seed's ResNe(X)ts rows, then its MobileNets rows
        "title": "RepPoints V2",
        "source": "official RepPointsV2 README (Scalsol/RepPointsV2), the seed table",
        "name_heading": "Model",
        "columns": ["Multi-scale training"],
        "split_headings": ["AP (minival)", "AP (test-dev)"],
        "rows": [
            {"name": "RepPoints_V2_R_50_FPN_1x", "Multi-scale training": "No",
             "preset": "reppoints_v2_r50_fpn_1x", "task": "bbox", "validation": 40.9, "test-dev": None},
            {"name": "RepPoints_V2_R_50_FPN_GIoU_1x", "Multi-scale training": "No",
             "preset": "reppoints_v2_r50_fpn_giou_1x", "task": "bbox", "validation": 41.1, "test-dev": 41.3},
            {"name": "RepPoints_V2_R_50_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_r50_fpn_giou_mstrain_2x", "task": "bbox", "validation": 43.9, "test-dev": 44.4},
            {"name": "RepPoints_V2_R_101_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_r101_fpn_giou_mstrain_2x", "task": "bbox", "validation": 45.8, "test-dev": 46.0,
             "note": "the seed prints the test-dev AP as 46"},
            {"name": "RepPoints_V2_R_101_FPN_dcnv2_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_r101_fpn_dcn_giou_mstrain_2x", "task": "bbox", "validation": 47.7, "test-dev": 48.1},
            {"name": "RepPoints_V2_X_101_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_x101_fpn_giou_mstrain_2x", "task": "bbox", "validation": 47.3, "test-dev": 47.8},
            {"name": "RepPoints_V2_X_101_FPN_dcnv2_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_x101_fpn_dcn_giou_mstrain_2x", "task": "bbox", "validation": 49.3, "test-dev": 49.4},
            {"name": "RepPoints_V2_MNV2_c128_FPN_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_mnv2_c128_fpn_giou_mstrain_2x", "task": "bbox", "validation": 36.8, "test-dev": None},
            {"name": "RepPoints_V2_MNV2_FPN_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v2_mnv2_fpn_giou_mstrain_2x", "task": "bbox", "validation": 39.4, "test-dev": None},
        ],
        "notes": REPPOINTS_SEED_NOTES,
    },
    {  # the RPv2 repo's improved V1; ResNe(X)ts, then MobileNets
        "title": "RepPoints V1",
        "source": "official RepPointsV2 README (Scalsol/RepPointsV2), the seed table",
        "name_heading": "Model",
        "columns": ["Multi-scale training"],
        "split_headings": ["AP (minival)", "AP (test-dev)"],
        "rows": [
            {"name": "RepPoints_V1_R_50_FPN_1x", "Multi-scale training": "No",
             "preset": "reppoints_v1_r50_fpn_1x", "task": "bbox", "validation": 38.8, "test-dev": None},
            {"name": "RepPoints_V1_R_50_FPN_GIoU_1x", "Multi-scale training": "No",
             "preset": "reppoints_v1_r50_fpn_giou_1x", "task": "bbox", "validation": 39.9, "test-dev": None},
            {"name": "RepPoints_V1_R_50_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_r50_fpn_giou_mstrain_2x", "task": "bbox", "validation": 42.7, "test-dev": None},
            {"name": "RepPoints_V1_R_101_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_r101_fpn_giou_mstrain_2x", "task": "bbox", "validation": 44.4, "test-dev": None},
            {"name": "RepPoints_V1_R_101_FPN_dcnv2_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_r101_fpn_dcn_giou_mstrain_2x", "task": "bbox", "validation": 46.6, "test-dev": None},
            {"name": "RepPoints_V1_X_101_FPN_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_x101_fpn_giou_mstrain_2x", "task": "bbox", "validation": 46.3, "test-dev": None},
            {"name": "RepPoints_V1_X_101_FPN_dcnv2_GIoU_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_x101_fpn_dcn_giou_mstrain_2x", "task": "bbox", "validation": 48.3, "test-dev": None},
            {"name": "RepPoints_V1_MNV2_c128_FPN_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_mnv2_c128_fpn_giou_mstrain_2x", "task": "bbox", "validation": 35.7, "test-dev": None},
            {"name": "RepPoints_V1_MNV2_FPN_2x", "Multi-scale training": "Yes",
             "preset": "reppoints_v1_mnv2_fpn_giou_mstrain_2x", "task": "bbox", "validation": 37.8, "test-dev": None},
        ],
        "notes": REPPOINTS_SEED_NOTES,
    },
    {  # the seed's "Dense Reppoints V2": box and mask AP, minival/test-dev ("---" -> None)
        "title": "Dense RepPoints V2",
        "source": "official RepPointsV2 README (Scalsol/RepPointsV2), the seed table",
        "name_heading": "Model",
        "columns": ["MS training"],
        "tasks": [("bbox", "bbox AP (minival/test-dev)"), ("segm", "mask AP (minival/test-dev)")],
        "rows": [
            {"name": "Dense_RepPoints_V2_R_50_FPN_1x", "MS training": "No",
             "preset": "dense_reppoints_v2_r50_fpn_1x", "bbox": (40.5, None), "segm": (34.8, None)},
            {"name": "Dense_RepPoints_V2_R_50_FPN_GIoU_1x", "MS training": "No",
             "preset": "dense_reppoints_v2_r50_fpn_giou_1x", "bbox": (41.5, 41.6), "segm": (35.1, 35.4)},
            {"name": "Dense_RepPoints_V2_R_50_FPN_GIoU_3x", "MS training": "Yes",
             "preset": "dense_reppoints_v2_r50_fpn_giou_mstrain_3x", "bbox": (45.2, 45.9), "segm": (38.3, 39.0)},
        ],
        "notes": DENSE_REPPOINTS_SEED_NOTES,
    },
    {  # the seed's "Dense Reppoints V1"
        "title": "Dense RepPoints V1",
        "source": "official RepPointsV2 README (Scalsol/RepPointsV2), the seed table",
        "name_heading": "Model",
        "columns": ["MS training"],
        "tasks": [("bbox", "bbox AP (minival/test-dev)"), ("segm", "mask AP (minival/test-dev)")],
        "rows": [
            {"name": "Dense_RepPoints_V1_R_50_FPN_1x", "MS training": "No",
             "preset": "dense_reppoints_v1_r50_fpn_1x", "bbox": (39.9, None), "segm": (33.7, None)},
            {"name": "Dense_RepPoints_V1_R_50_FPN_GIoU_1x", "MS training": "No",
             "preset": "dense_reppoints_v1_r50_fpn_giou_1x", "bbox": (40.9, 41.1), "segm": (34.2, 34.5)},
            {"name": "Dense_RepPoints_V1_R_50_FPN_GIoU_3x", "MS training": "Yes",
             "preset": "dense_reppoints_v1_r50_fpn_giou_mstrain_3x", "bbox": (44.5, 45.0), "segm": (37.4, 38.0)},
        ],
        "notes": DENSE_REPPOINTS_SEED_NOTES,
    },
]


#: CPM R-CNN's README tables (``shared/seeds/003_7ddb2e20f11d4c8e.md``, specs/cpm_rcnn.md §4.1-§4.2).
#: "On MS COCO test-dev": one row per backbone, filled with our runs of ``models`` trained from
#: the row's preset; the published numbers in percent as printed.
CPM_TESTDEV_TABLE: dict = {
    "title": "CPM R-CNN on COCO test-dev",
    "source": "official CPM R-CNN README, the seed table \"On MS COCO test-dev\"",
    "rows": [
        {"Backbone": "R-50-FPN", "LR": "2x", "preset": "cpm_rcnn_r50_fpn",
         "AP": 41.7, "AP50": 59.2, "APs": 23.1, "APm": 44.0, "APl": 54.7},
        {"Backbone": "R-101-FPN", "LR": "2x", "preset": "cpm_rcnn_r101_fpn",
         "AP": 43.3, "AP50": 61.2, "APs": 23.9, "APm": 46.3, "APl": 56.6},
        {"Backbone": "X-101-FPN-DCN", "LR": "2x", "preset": "cpm_rcnn_x101_fpn_dcn",
         "AP": 46.4, "AP50": 65.3, "APs": 26.8, "APm": 49.4, "APl": 61.0},
    ],
}

#: "Component-wise performance" (R-50-FPN, 2x, val2017): one row per combination of the three
#: modules (CMM, ISM, RSM: ``model.roi_head.with_cmm / with_ism / with_rsm``), filled with our
#: ``ablations`` runs of ``preset`` whose resolved configuration has exactly those switches.
CPM_COMPONENT_TABLE: dict = {
    "title": "CPM R-CNN component-wise performance",
    "source": "official CPM R-CNN README, the seed table \"Component-wise performance\"",
    "preset": "cpm_rcnn_r50_fpn",
    "modules": ["CMM", "ISM", "RSM"],
    "switches": ["with_cmm", "with_ism", "with_rsm"],
    "rows": [
        {"modules": (False, False, False), "AP": 39.9},
        {"modules": (True, False, False), "AP": 40.7},
        {"modules": (False, True, False), "AP": 40.5},
        {"modules": (False, False, True), "AP": 40.6},
        {"modules": (True, True, True), "AP": 41.3},
    ],
}
