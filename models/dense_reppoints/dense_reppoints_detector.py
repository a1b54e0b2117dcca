"""Dense RepPoints V1 / V2 as a detector: the single-stage detector of
:mod:`models.reppoints.single_stage` with a Dense RepPoints head, which also needs instance masks
in its training targets."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.common.detectors.two_stage import unpack_masks
from models.dense_reppoints.dense_reppoints_head import DenseRepPointsHead
from models.reppoints.single_stage import SingleStageDetector


class DenseRepPointsDetector(SingleStageDetector):
    """Dense RepPoints V1 / V2: a :class:`SingleStageDetector` with a :class:`DenseRepPointsHead`.

    Training targets also need ``masks`` UInt8Tensor[N, H, W] (input resolution, one per gt
    box); evaluation adds ``masks`` FloatTensor[K, 1, S, S] (point probabilities interpolated
    over each box), ``points`` FloatTensor[K, 729, 2] and ``point_scores`` FloatTensor[K, 729]."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: DenseRepPointsHead) -> None:
        if not isinstance(bbox_head, DenseRepPointsHead):
            raise TypeError(f"DenseRepPointsDetector needs a DenseRepPointsHead, got {type(bbox_head).__name__}")
        super().__init__(backbone, neck, bbox_head)

    def extra_train_targets(self, targets: Sequence[dict[str, Tensor]], gt_boxes: Sequence[Tensor],
                            device: torch.device) -> dict[str, list[Tensor]]:
        return {"gt_masks": unpack_masks(targets, gt_boxes, device, "Dense RepPoints")}
