"""Grid R-CNN, Plus form (Lu et al., CVPR 2019; Grid R-CNN Plus, arXiv 1906.05688): Faster
R-CNN + FPN whose second stage is :class:`~models.grid_rcnn.grid_roi_head.GridRoIHead`
(classification-only box branch, grid-point heatmaps for localisation; spec cpm_rcnn.md §1).

Same call contract as every detector here (see :mod:`models.common.detectors.two_stage`); the
detected boxes are the grid-decoded ones and the scores the classification scores.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.common.dense_heads.rpn_head import RPNHead
from models.common.detectors.two_stage import TwoStageDetector
from models.grid_rcnn.grid_roi_head import GridRoIHead


class GridRCNN(TwoStageDetector):
    """Backbone -> FPN -> RPN -> :class:`GridRoIHead`."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: GridRoIHead) -> None:
        if not isinstance(roi_head, GridRoIHead):
            raise TypeError(f"GridRCNN needs a GridRoIHead, got {type(roi_head).__name__}")
        super().__init__(backbone, neck, rpn_head, roi_head)

    def roi_head_train(self, features: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor],
                       gt_labels: list[Tensor], gt_ignore: list[Tensor | None],
                       image_sizes: list[tuple[int, int]], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        # the unpadded image sizes bound the jittered grid RoIs
        return self.roi_head.forward_train(features, proposals, gt_boxes, gt_labels, gt_ignore, image_sizes)
