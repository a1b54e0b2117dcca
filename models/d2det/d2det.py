"""D2Det (Cao et al., CVPR 2020): Faster R-CNN + FPN whose second stage is
:class:`~models.d2det.d2det_roi_head.D2DetRoIHead` (discriminative RoI pooling for
classification, dense local regression for localisation, optional instance masks).

Same call contract as every detector here (see :mod:`models.common.detectors.two_stage`). The
instance variant also needs ``masks`` UInt8Tensor[N, H, W] (input resolution, one per gt
box) in every training target, and returns ``masks`` FloatTensor[K, 1, 28, 28]
(probabilities of the detected class, in the box) and ``mask_scores`` FloatTensor[K]
(class score + 0.3 * predicted mask IoU) per image.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.common.dense_heads.rpn_head import RPNHead
from models.common.detectors.two_stage import TwoStageDetector, unpack_masks
from models.d2det.d2det_roi_head import D2DetRoIHead


class D2Det(TwoStageDetector):
    """Backbone -> FPN -> RPN -> :class:`D2DetRoIHead`."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: D2DetRoIHead) -> None:
        if not isinstance(roi_head, D2DetRoIHead):
            raise TypeError(f"D2Det needs a D2DetRoIHead, got {type(roi_head).__name__}")
        super().__init__(backbone, neck, rpn_head, roi_head)

    def roi_head_train(self, features: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor],
                       gt_labels: list[Tensor], gt_ignore: list[Tensor | None],
                       image_sizes: list[tuple[int, int]], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        gt_masks = None
        if self.roi_head.with_mask:
            gt_masks = unpack_masks(targets, gt_boxes, features[0].device, "the D2Det instance variant")
        return self.roi_head.forward_train(features, proposals, gt_boxes, gt_labels, gt_ignore, image_sizes, gt_masks)
