"""CPM R-CNN (Zhu et al., "CPM R-CNN: Calibrating Point-guided Misalignment in Object
Detection", arXiv 2003.03570, WACV 2021): Grid R-CNN whose second stage is
:class:`~models.cpm_rcnn.cpm_roi_head.CPMRoIHead` (cascade mapping, IoU scoring and
resampling scoring modules, each switchable; spec cpm_rcnn.md §2).

Same call contract as every detector here (see :mod:`models.common.detectors.two_stage`); the
detected boxes are those of the last grid stage and the scores are the CPM scores
(:func:`~models.cpm_rcnn.cpm_roi_head.cpm_scores`).
"""
from __future__ import annotations

from torch import nn

from models.common.dense_heads.rpn_head import RPNHead
from models.grid_rcnn.grid_rcnn import GridRCNN
from models.cpm_rcnn.cpm_roi_head import CPMRoIHead


class CPMRCNN(GridRCNN):
    """Backbone -> FPN -> RPN -> :class:`CPMRoIHead` (the unpadded image sizes reach the head in
    training, as in :class:`GridRCNN`: they bound the boxes decoded between stages)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: CPMRoIHead) -> None:
        if not isinstance(roi_head, CPMRoIHead):
            raise TypeError(f"CPMRCNN needs a CPMRoIHead, got {type(roi_head).__name__}")
        super().__init__(backbone, neck, rpn_head, roi_head)
