"""The second stage of a two-stage detector: assign/sample proposals, pool, classify, regress.

Split into small steps so the D2Det, Grid R-CNN and CPM R-CNN heads can reuse them:
:meth:`StandardRoIHead.assign_and_sample` (R-CNN targets; gt boxes are added to the
proposals), :meth:`StandardRoIHead.bbox_forward` (pool + box head) and
:meth:`StandardRoIHead.bbox_loss`.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.samplers import RandomSampler, SamplingResult


class StandardRoIHead(nn.Module):
    """Faster R-CNN's box branch.

    Args:
        bbox_roi_extractor: pools [K, C, S, S] features for RoIs.
        bbox_head: classifier / regressor on the pooled features.
        assigner: proposal-to-gt assigner (default MaxIoU 0.5 / 0.5 / 0.5).
        sampler: RoI sampler (default 512 per image, 0.25 positives, gt added).
        score_thr: test: detections need a class score above this.
        nms_iou: test: per-class NMS IoU threshold.
        max_per_img: test: detections kept per image.
    """

    def __init__(
        self,
        bbox_roi_extractor: SingleRoIExtractor,
        bbox_head: Shared2FCBBoxHead,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = bbox_head
        self.assigner = assigner or MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5)
        self.sampler = sampler or RandomSampler(512, 0.25, add_gt_as_proposals=True)
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img

    @property
    def num_classes(self) -> int:
        """Foreground classes of the box head."""
        return self.bbox_head.num_classes

    def assign_and_sample(
        self,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_boxes_ignore: Sequence[Tensor | None] | None = None,
    ) -> list[SamplingResult]:
        """Per image: assign proposals FloatTensor[K_i, 4] to gts, then sample (gts added)."""
        if gt_boxes_ignore is None:
            gt_boxes_ignore = [None] * len(proposals)
        results = []
        for props, gts, labels, ignore in zip(proposals, gt_boxes, gt_labels, gt_boxes_ignore):
            props = props.detach()
            assign = self.assigner.assign(props, gts, labels, ignore)
            results.append(self.sampler.sample(assign, props, gts, labels))
        return results

    def bbox_forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """``rois`` FloatTensor[K, 5] -> (cls_score, bbox_pred, pooled features [K, C, S, S])."""
        bbox_feats = self.bbox_roi_extractor(features, rois)
        cls_score, bbox_pred = self.bbox_head(bbox_feats)
        return cls_score, bbox_pred, bbox_feats

    def bbox_loss(self, features: Sequence[Tensor], sampling_results: Sequence[SamplingResult]) -> dict[str, Tensor]:
        """Pool the sampled RoIs, run the box head and return its losses (and ``acc``)."""
        rois = boxes_to_rois([res.boxes for res in sampling_results]).to(features[0].device)
        cls_score, bbox_pred, _ = self.bbox_forward(features, rois)
        targets = self.bbox_head.get_targets(sampling_results)
        return self.bbox_head.loss(cls_score, bbox_pred, *targets)

    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_boxes_ignore: Sequence[Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """Losses ``loss_cls``, ``loss_bbox`` and the logging scalar ``acc``."""
        sampling_results = self.assign_and_sample(proposals, gt_boxes, gt_labels, gt_boxes_ignore)
        return self.bbox_loss(features, sampling_results)

    def simple_test(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image (see :meth:`Shared2FCBBoxHead.get_det_bboxes`)."""
        rois = boxes_to_rois(proposals).to(features[0].device)
        cls_score, bbox_pred, _ = self.bbox_forward(features, rois)
        return self.bbox_head.get_det_bboxes(rois, cls_score, bbox_pred, image_sizes, self.score_thr,
                                             self.nms_iou, self.max_per_img)
