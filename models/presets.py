"""Named model configurations at two scales: the paper's and a small CPU one.

``PRESETS[name] = {"detector": ..., "scales": {"paper": {...}, "cpu": {...}}}``; each scale
has ``model`` (see :mod:`models.build` for its layout; keys are constructor arguments),
``data`` (image scales as mmdetection's (long, short) pairs, flip, normalisation, padding)
and ``schedule`` (SGD, warmup, steps in epochs, batch). ``pipeline/config.py`` resolves an
entry and deep-merges params.yaml overrides on top. Values are plain YAML types.

``schedule.auto_scale_lr`` (true in every paper schedule, false at the CPU scale): ``lr`` is the
rate for the preset's total batch ``num_gpus x images_per_gpu``, and the train stage scales it
linearly to the run's actual total batch (:func:`pipeline.engine.lr_scaling`, mmdetection's rule).

Each family defines its presets in its own folder (``models/<family>/presets.py``), on the
Faster R-CNN base of :mod:`models.common.presets`; this module only gathers them.
"""
from __future__ import annotations

from typing import Any

from models.common.presets import FASTER_RCNN_R50_FPN_1X
from models.cpm_rcnn.presets import CPM_RCNN_R50_FPN, CPM_RCNN_R101_FPN, CPM_RCNN_X101_FPN_DCN
from models.d2det.presets import D2DET_R50_FPN, D2DET_R101_FPN, D2DET_R101_FPN_DCN, D2DET_R101_FPN_MASK
from models.dense_reppoints.presets import _dense_reppoints_table_presets
from models.grid_rcnn.presets import GRID_RCNN_R50_FPN_2X
from models.reppoints.presets import REPPOINTS_MOMENT_R50_FPN_GN_1X, _reppoints_table_presets

PRESETS: dict[str, dict[str, Any]] = {
    "faster_rcnn_r50_fpn_1x": FASTER_RCNN_R50_FPN_1X,
    "d2det_r50_fpn": D2DET_R50_FPN,
    "d2det_r101_fpn": D2DET_R101_FPN,
    "d2det_r101_fpn_dcn": D2DET_R101_FPN_DCN,
    "d2det_r101_fpn_mask": D2DET_R101_FPN_MASK,
    "grid_rcnn_r50_fpn_2x": GRID_RCNN_R50_FPN_2X,
    "cpm_rcnn_r50_fpn": CPM_RCNN_R50_FPN,
    "cpm_rcnn_r101_fpn": CPM_RCNN_R101_FPN,
    "cpm_rcnn_x101_fpn_dcn": CPM_RCNN_X101_FPN_DCN,
    "reppoints_moment_r50_fpn_gn_1x": REPPOINTS_MOMENT_R50_FPN_GN_1X,
    **_reppoints_table_presets(1),
    **_reppoints_table_presets(2),
    **_dense_reppoints_table_presets(1),
    **_dense_reppoints_table_presets(2),
}
