"""Faster R-CNN with FPN, the two-stage baseline every R-CNN of this repository builds on."""
from __future__ import annotations

from torch import nn

from models.common.dense_heads.rpn_head import RPNHead
from models.common.detectors.two_stage import TwoStageDetector
from models.common.roi_heads.standard_roi_head import StandardRoIHead


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN (Ren et al. 2015) with FPN: a :class:`TwoStageDetector` whose second stage
    is a :class:`~models.common.roi_heads.standard_roi_head.StandardRoIHead`."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: StandardRoIHead) -> None:
        if not isinstance(roi_head, StandardRoIHead):
            raise TypeError(f"FasterRCNN needs a StandardRoIHead, got {type(roi_head).__name__}")
        super().__init__(backbone, neck, rpn_head, roi_head)
