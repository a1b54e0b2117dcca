"""Single-stage detectors: backbone -> neck -> dense head.

Same call contract as :mod:`models.common.detectors.two_stage` (``model(images, image_sizes,
targets=None)``): training returns a dict of weighted scalar losses (keys starting with
``loss``), evaluation per image ``boxes`` FloatTensor[K, 4] (input pixels, clipped),
``scores`` FloatTensor[K] and ``labels`` LongTensor[K] in 0..C-1. Targets are checked by
:func:`~models.common.detectors.two_stage.unpack_targets` (labels in range, one label per box).

The dense head provides ``num_classes``, ``forward_train(features, image_sizes, gt_boxes,
gt_labels, gt_ignore) -> dict`` and ``simple_test(features, image_sizes) -> list[dict]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.reppoints.reppoints_head import RepPointsHead
from models.common.detectors.two_stage import check_inputs, unpack_targets


class SingleStageDetector(nn.Module):
    """Generic single-stage detector.

    Args:
        backbone: image -> list of feature maps.
        neck: feature maps -> pyramid (e.g. :class:`~models.common.necks.fpn.FPN` P3-P7).
        bbox_head: dense head on the pyramid (e.g. :class:`RepPointsHead`).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """FloatTensor[B, 3, Hp, Wp] -> pyramid levels FloatTensor[B, C, H_l, W_l]."""
        return self.neck(self.backbone(images))

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        image_sizes = check_inputs(images, image_sizes, targets, self.training)
        if self.training:
            num_classes = getattr(self.bbox_head, "num_classes", None)
            gt_boxes, gt_labels, gt_ignore = unpack_targets(targets, images.device, num_classes)
            extra = self.extra_train_targets(targets, gt_boxes, images.device)
            features = self.extract_feat(images)
            return self.bbox_head.forward_train(features, image_sizes, gt_boxes, gt_labels, gt_ignore, **extra)
        features = self.extract_feat(images)
        return self.bbox_head.simple_test(features, image_sizes)

    def extra_train_targets(self, targets: Sequence[dict[str, Tensor]], gt_boxes: Sequence[Tensor],
                            device: torch.device) -> dict[str, list[Tensor]]:
        """Keyword arguments of ``bbox_head.forward_train`` beyond boxes, labels and ignore
        regions (none here; Dense RepPoints: ``gt_masks``)."""
        return {}


class RepPointsDetector(SingleStageDetector):
    """RepPoints (Yang et al. 2019): a :class:`SingleStageDetector` with a :class:`RepPointsHead`."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: RepPointsHead) -> None:
        if not isinstance(bbox_head, RepPointsHead):
            raise TypeError(f"RepPointsDetector needs a RepPointsHead, got {type(bbox_head).__name__}")
        super().__init__(backbone, neck, bbox_head)
