"""Dense RepPoints V1 / V2 presets (specs/reppoints.md §3): the rows of the RepPoints V2 README's
Dense table, built on the RepPoints presets."""
from __future__ import annotations

from typing import Any

from models.reppoints.presets import _reppoints, _reppoints_head


def _dense_reppoints_head(channels: int, giou: bool, v2: bool) -> dict[str, Any]:
    """A Dense RepPoints head (specs/reppoints.md §3): the RPv2 repository's V1 settings (towers,
    PointAssigner(4, 1), ATSS topk 9, focal loss, GIoU "+1" 1.0 / 2.0 or SmoothL1 0.5 / 1.0 on the
    minmax pseudo boxes) with 729 points, 9 classification groups, 121 point-score maps after a
    7-conv mask trunk, DTS targets on a 56 x 56 crop with a 2 px band, Chamfer 0.5 / 1.0 and
    point-score BCE 1.0; NMS 0.6, masks on a 56 x 56 box grid, point threshold 0.5. ``v2``: one
    shared conv, contour focal 1.0 and offset SmoothL1 (1/9) 1.0, foreground focal 1.0, contour
    snapping at test (threshold 0.4)."""
    head = _reppoints_head(channels, original=False, giou=giou, v2=False, corner_dim=0)
    head.update({"num_points": 729, "transform_method": "minmax", "num_group": 9, "num_score_group": 121,
                 "stacked_mask_convs": 7, "mask_size": 56, "dist_sample_thr": 2.0,
                 "loss_chamfer_init_weight": 0.5, "loss_chamfer_refine_weight": 1.0, "loss_mask_score_weight": 1.0})
    head["test"].update({"pts_score_thr": 0.5, "mask_out_size": 56, "mask_resolution": "full"})
    if v2:
        head.update({"shared_stacked_convs": 1, "loss_contour_heatmap_weight": 1.0, "loss_contour_offset_weight": 1.0,
                     "loss_contour_offset_beta": 1.0 / 9, "loss_sem_weight": 1.0})
        head["test"].update({"contour_score_thr": 0.4, "contour_snapping": True})
    return head


def _dense_reppoints(version: int, giou: bool = True, epochs: int = 12, multiscale: bool = False) -> dict[str, Any]:
    """A Dense RepPoints preset: one row of the RepPoints V2 README's Dense V1 / V2 tables.

    The RepPoints preset of the same version's R-50 row (:func:`_reppoints`: ImageNet ResNet-50,
    GN FPN P3-P7, SGD lr 0.01 for 16 images, warmup 500 at 0.001, clip 35; multi-scale short side
    in [480, 960]) with the Dense head, instance masks in the data, and 12 epochs (steps 8, 11) or
    36 (steps 24, 33). CPU scale: that preset's CPU backbone, data (plus masks) and schedule, the
    same Dense head 64 channels wide with 81 points (9 x 9; 9 groups of 9) instead of 729, and
    the same 121 score maps. 81 is the smallest point count of the paper's ablation over the
    number of points (81 to 729): the 729-point offset convolutions, Chamfer targets and masks
    made Dense RepPoints the costliest CPU training (0.98 s per iteration for V1, 0.30 with 81
    points; measured in benchmarks/README.md, issue 15); the paper scale keeps 729."""
    preset = _reppoints(version, giou=giou, epochs=min(epochs, 24), multiscale=multiscale)
    preset["detector"] = "dense_reppoints_v2" if version == 2 else "dense_reppoints"
    for scale, channels in (("paper", 256), ("cpu", 64)):
        cfg = preset["scales"][scale]
        cfg["model"]["bbox_head"] = _dense_reppoints_head(channels, giou, version == 2)
        if scale == "cpu":
            cfg["model"]["bbox_head"]["num_points"] = 81
        cfg["data"]["with_masks"] = True
    paper_schedule = preset["scales"]["paper"]["schedule"]
    paper_schedule.update({"epochs": epochs, "lr_steps": {12: [8, 11], 24: [16, 22], 36: [24, 33]}[epochs]})
    return preset


def _dense_reppoints_table_presets(version: int) -> dict[str, dict[str, Any]]:
    """The three rows of the RepPoints V2 README's Dense table for ``version`` (1 or 2)."""
    p = f"dense_reppoints_v{version}_"
    return {
        p + "r50_fpn_1x": _dense_reppoints(version, giou=False),
        p + "r50_fpn_giou_1x": _dense_reppoints(version),
        p + "r50_fpn_giou_mstrain_3x": _dense_reppoints(version, epochs=36, multiscale=True),
    }
