"""D2Det's second stage (spec d2det.md §1.4-§5): a classification branch on discriminative RoI
pooling and a dense local regression (DLR) branch, plus the instance variant's masks.

Training, per batch (boxes in input pixels):

1. assign and sample the proposals (gt boxes added) exactly as Faster R-CNN;
2. classification: DRP 7x7 -> two shared FCs -> softmax, ``loss_cls`` (x2.0), no box
   regression;
3. every image's positives (gt boxes among them) are jittered by +-``jitter_amplitude`` of
   their size and clipped (:func:`~models.d2det.d2det_head.random_jitter`); the jittered
   boxes replace the positives for the DLR branch only;
4. at most ``max_num_reg`` (192) positives of the whole batch, chosen by a random
   permutation (steps 3-4: :func:`~models.common.task_modules.regression_sampling.select_positive_rois`,
   shared with Grid R-CNN), are pooled with RoIAlign 14x14 and go through the DLR head:
   ``loss_reg`` (softened IoU loss, x2.0, v1 weighting) and ``loss_overlap`` (the binary
   overlap BCE, x1.0; ``loss_mask`` in the official code);
5. instance variant: the same RoIs also give ``loss_instance`` (28x28 per-class mask BCE)
   and ``loss_mask_iou`` (x0.5), and the overlap target comes from the mask target.

Inference, per image:

1. classification of the proposals; boxes are the proposals (clipped);
2. per-class NMS: score > ``score_thr``, IoU ``nms_iou``, top ``max_per_img`` (detection
   0.03 / 0.5 / 125; instance 0.05 / 0.3 / 100);
3. DLR on these boxes: each box becomes the mean of the boxes decoded from its cells with
   a positive overlap logit (sigmoid > 0.5), clipped; the class score is kept;
4. detection: per-class linear Soft-NMS (IoU 0.5, min score 1e-3, legacy +1 IoU), then the
   top ``max_final`` (100); instance: no Soft-NMS; a second RoIAlign on the refined boxes
   gives 28x28 masks of the detected class and their predicted IoU, and
   ``mask_score = score + mask_score_iou_weight * IoU`` (0.3, additive, author-confirmed).

Decisions on the spec's checklist (§10), also in the README:

- IoU-loss weighting: the official v1 broadcasting, ``2.0 * mean(loss) * mean(target)``
  over all cells (``iou_weighting="v1_broadcast"``); the mmdet2.1 fix is
  ``"masked_mean"`` with ``reg_loss_weight=1.0``.
- A RoI with no positive cell: the official code returns the box (0, 0, 0, 0). Here
  ``empty_cells="proposal"`` (default) keeps the NMS'd proposal instead, since a zero box
  can only add a false positive; ``"zero"`` restores the reference behaviour. The number
  of such RoIs in the last batch is kept in :attr:`D2DetRoIHead.last_empty_cell_count`.
- Legacy +1 pixel conventions: kept where they define D2Det's own parts (the IoU loss, the
  deformable RoI pooling, DRP's level mapping, Soft-NMS); the shared Faster R-CNN parts
  (anchors, RoIAlign 14x14 with ``aligned=True``, box coder) follow mmdetection v2 like
  every detector of this package.
- Targets are vectorised (no per-RoI Python loops).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from cuda_ops.soft_nms import batched_soft_nms
from models.d2det.iou_loss import IoUWeighting
from models.common.roi_heads.bbox_head import Shared2FCBBoxHead
from models.common.task_modules.regression_sampling import clip_to_image
from models.d2det.d2det_head import DenseLocalRegressionHead
from models.d2det.d2det_instance_head import (D2DetInstanceBranch, concat_gt_masks, instance_losses,
                                                  mask_area_ratios, mask_iou_targets, mask_targets,
                                                  overlap_from_masks)
from models.d2det.drp_extractor import DiscriminativeRoIExtractor
from models.common.task_modules.regression_sampling import select_positive_rois
from models.common.roi_heads.roi_extractor import SingleRoIExtractor, boxes_to_rois
from models.common.roi_heads.standard_roi_head import StandardRoIHead
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.samplers import RandomSampler, SamplingResult

__all__ = ["D2DetRoIHead"]

EmptyCells = Literal["proposal", "zero"]


class D2DetRoIHead(StandardRoIHead):
    """D2Det's RoI head (see the module docstring).

    Args:
        bbox_roi_extractor: discriminative RoI pooling (7x7) of the classification branch.
        bbox_head: :class:`Shared2FCBBoxHead` with ``with_reg=False`` (``loss_cls_weight``
            2.0).
        reg_roi_extractor: RoIAlign 14x14 of the DLR branch.
        dlr_head: the dense local regression head.
        instance_head: the mask / mask-IoU branch, or None for the detection model.
        assigner, sampler: as Faster R-CNN (MaxIoU 0.5; 512 RoIs, 25% positives, gt added).
        max_num_reg: positives of the whole batch sent to the DLR head (192).
        jitter_amplitude: relative jitter of those positives (0.15).
        iou_weighting, reg_loss_weight: the IoU loss (``"v1_broadcast"``, 2.0).
        overlap_loss_weight: the binary-overlap BCE (1.0).
        mask_loss_weight, mask_iou_loss_weight: instance losses (1.0, 0.5).
        mask_iou_logit_threshold: mask-IoU target binarisation on raw logits (0.5).
        score_thr, nms_iou, max_per_img: class NMS before the refinement.
        soft_nms_method: ``"linear"``, ``"gaussian"`` or None (instance variant: None).
        soft_nms_iou, soft_nms_sigma, soft_nms_min_score: Soft-NMS settings.
        max_final: detections kept per image after Soft-NMS (100).
        empty_cells: box of a RoI without a positive cell, ``"proposal"`` or ``"zero"``.
        mask_score_iou_weight: mask score = class score + this * predicted mask IoU (0.3).
    """

    def __init__(
        self,
        bbox_roi_extractor: DiscriminativeRoIExtractor,
        bbox_head: Shared2FCBBoxHead,
        reg_roi_extractor: SingleRoIExtractor,
        dlr_head: DenseLocalRegressionHead,
        instance_head: D2DetInstanceBranch | None = None,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        max_num_reg: int = 192,
        jitter_amplitude: float = 0.15,
        iou_weighting: IoUWeighting = "v1_broadcast",
        reg_loss_weight: float = 2.0,
        overlap_loss_weight: float = 1.0,
        mask_loss_weight: float = 1.0,
        mask_iou_loss_weight: float = 0.5,
        mask_iou_logit_threshold: float = 0.5,
        score_thr: float = 0.03,
        nms_iou: float = 0.5,
        max_per_img: int = 125,
        soft_nms_method: str | None = "linear",
        soft_nms_iou: float = 0.5,
        soft_nms_sigma: float = 0.5,
        soft_nms_min_score: float = 1e-3,
        max_final: int = 100,
        empty_cells: EmptyCells = "proposal",
        mask_score_iou_weight: float = 0.3,
    ) -> None:
        super().__init__(bbox_roi_extractor, bbox_head, assigner, sampler, score_thr, nms_iou, max_per_img)
        if bbox_head.with_reg:
            raise ValueError("D2Det's classification head has no box regression: set bbox_head.with_reg false")
        if reg_roi_extractor.output_size != 2 * dlr_head.grid:
            raise ValueError(f"the DLR head needs {2 * dlr_head.grid}x{2 * dlr_head.grid} RoI features, "
                             f"reg_roi_extractor gives {reg_roi_extractor.output_size}")
        if empty_cells not in ("proposal", "zero"):
            raise ValueError(f"empty_cells must be 'proposal' or 'zero', got {empty_cells!r}")
        if instance_head is not None and instance_head.grid != dlr_head.grid:
            raise ValueError("the instance branch and the DLR head need the same grid")
        self.reg_roi_extractor = reg_roi_extractor
        self.dlr_head = dlr_head
        self.instance_head = instance_head
        self.max_num_reg = int(max_num_reg)
        self.jitter_amplitude = float(jitter_amplitude)
        self.iou_weighting: IoUWeighting = iou_weighting
        self.reg_loss_weight = float(reg_loss_weight)
        self.overlap_loss_weight = float(overlap_loss_weight)
        self.mask_loss_weight = float(mask_loss_weight)
        self.mask_iou_loss_weight = float(mask_iou_loss_weight)
        self.mask_iou_logit_threshold = float(mask_iou_logit_threshold)
        self.soft_nms_method = soft_nms_method
        self.soft_nms_iou = float(soft_nms_iou)
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.soft_nms_min_score = float(soft_nms_min_score)
        self.max_final = int(max_final)
        self.empty_cells: EmptyCells = empty_cells
        self.mask_score_iou_weight = float(mask_score_iou_weight)
        self.last_empty_cell_count = 0

    @property
    def with_mask(self) -> bool:
        """True for the instance-segmentation variant (needs ``masks`` in the targets)."""
        return self.instance_head is not None

    # ------------------------------------------------------------------ training
    def select_regression_rois(self, sampling_results: Sequence[SamplingResult],
                               image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """Jitter every image's positives and keep at most ``max_num_reg`` of the batch
        (:func:`~models.common.task_modules.regression_sampling.select_positive_rois`, batch scope).

        Returns a dict of the kept RoIs: ``rois`` FloatTensor[R, 5] (image index + jittered
        box), ``gt_boxes`` FloatTensor[R, 4], ``labels`` LongTensor[R], ``gt_index``
        LongTensor[R] (index of the matched gt within its image) and ``is_gt`` BoolTensor[R].
        """
        return select_positive_rois(sampling_results, image_sizes, self.max_num_reg, "batch",
                                    self.jitter_amplitude)

    def dlr_loss(self, features: Sequence[Tensor], selected: dict[str, Tensor],
                 gt_masks: Sequence[Tensor] | None = None, gt_counts: Sequence[int] | None = None) -> dict[str, Tensor]:
        """DLR (and instance) losses of the selected positives."""
        rois = selected["rois"]
        if rois.shape[0] == 0:
            zero = 0.0 * sum(p.sum() for p in self.dlr_head.parameters()) + features[0].sum() * 0.0
            losses = {"loss_reg": zero, "loss_overlap": zero.clone()}
            if self.instance_head is not None:
                zero_i = zero + 0.0 * sum(p.sum() for p in self.instance_head.parameters())
                losses.update({"loss_instance": zero_i, "loss_mask_iou": zero_i.clone()})
            return losses
        feats = self.reg_roi_extractor(features, rois)
        trunk = self.dlr_head.forward_trunk(feats)
        reg, overlap_logits = self.dlr_head.predict(trunk)
        boxes = rois[:, 1:5]
        overlap_target = None
        instance = {}
        if self.instance_head is not None:
            if gt_masks is None or gt_counts is None:
                raise ValueError("the D2Det instance variant needs 'masks' in every target")
            stacked, offsets = concat_gt_masks(gt_masks, gt_counts)
            stacked = stacked.to(rois.device)
            flat_index = torch.as_tensor(offsets, device=rois.device, dtype=torch.long)[rois[:, 0].long()]
            flat_index = flat_index + selected["gt_index"]
            targets = mask_targets(boxes, stacked, flat_index, self.instance_head.mask_size)
            overlap_target = overlap_from_masks(targets, self.dlr_head.grid)
            mask_logits = self.instance_head.forward_masks(trunk)
            rows = torch.arange(rois.shape[0], device=rois.device)
            class_logits = mask_logits[rows, selected["labels"]]
            iou_pred = self.instance_head.forward_iou(trunk, class_logits)
            ratios = mask_area_ratios(boxes, stacked, flat_index)
            iou_targets = mask_iou_targets(class_logits.float(), targets, ratios, self.mask_iou_logit_threshold)
            instance = instance_losses(mask_logits, iou_pred, selected["labels"], targets, iou_targets,
                                       self.mask_loss_weight, self.mask_iou_loss_weight)
        losses = self.dlr_head.loss(reg, overlap_logits, boxes, selected["gt_boxes"], self.iou_weighting,
                                    self.reg_loss_weight, overlap_target, self.overlap_loss_weight)
        losses.update(instance)
        return losses

    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_boxes_ignore: Sequence[Tensor | None] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        gt_masks: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Losses ``loss_cls``, ``loss_reg``, ``loss_overlap`` (+ ``loss_instance``,
        ``loss_mask_iou``) and the logging scalar ``acc``.

        ``image_sizes`` (unpadded (h, w) per image) bound the jitter; without it the padded
        feature extent is used. ``gt_masks``: per image UInt8Tensor[G_i, H, W] at the input
        resolution (instance variant only).
        """
        if image_sizes is None:
            stride = self.reg_roi_extractor.featmap_strides[0]
            hw = (features[0].shape[-2] * stride, features[0].shape[-1] * stride)
            image_sizes = [hw] * len(proposals)
        sampling_results = self.assign_and_sample(proposals, gt_boxes, gt_labels, gt_boxes_ignore)
        losses = self.bbox_loss(features, sampling_results)
        selected = self.select_regression_rois(sampling_results, image_sizes)
        counts = [int(b.shape[0]) for b in gt_boxes]
        losses.update(self.dlr_loss(features, selected, gt_masks, counts))
        return losses

    # ------------------------------------------------------------------ inference
    def refine_boxes(self, features: Sequence[Tensor], rois: Tensor, image_sizes: Sequence[tuple[int, int]]
                     ) -> tuple[Tensor, Tensor]:
        """Dense local regression of detections.

        Args:
            rois: FloatTensor[K, 5] (image index, box) of the class-NMS'd detections.
        Returns:
            refined boxes FloatTensor[K, 4] (input pixels, clipped to ``[0, w-1] x [0, h-1]``)
            and BoolTensor[K] marking the RoIs that had no positive cell.
        """
        if rois.shape[0] == 0:
            return rois.new_zeros((0, 4)), torch.zeros((0,), dtype=torch.bool, device=rois.device)
        reg, overlap_logits = self.dlr_head(self.reg_roi_extractor(features, rois))
        hw = torch.tensor(image_sizes, dtype=torch.float32, device=rois.device).reshape(-1, 2)[rois[:, 0].long()]
        boxes = self.dlr_head.predict_boxes(reg.float(), overlap_logits, rois[:, 1:5].float(), hw)
        empty = (overlap_logits.reshape(rois.shape[0], -1) > 0).sum(1) == 0
        if self.empty_cells == "proposal":
            boxes = torch.where(empty[:, None], clip_to_image(rois[:, 1:5].float(), hw), boxes)
        return boxes, empty

    def predict_masks(self, features: Sequence[Tensor], rois: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Instance variant: FloatTensor[K, 1, M, M] mask probabilities of the detected class
        and FloatTensor[K] predicted mask IoU, for refined ``rois`` [K, 5]."""
        assert self.instance_head is not None
        m = self.instance_head.mask_size
        if rois.shape[0] == 0:
            return rois.new_zeros((0, 1, m, m)), rois.new_zeros((0,))
        trunk = self.dlr_head.forward_trunk(self.reg_roi_extractor(features, rois))
        mask_logits = self.instance_head.forward_masks(trunk)
        rows = torch.arange(rois.shape[0], device=rois.device)
        class_logits = mask_logits[rows, labels]
        iou = self.instance_head.forward_iou(trunk, class_logits)[rows, labels]
        return torch.sigmoid(class_logits.float())[:, None], iou.float()

    @torch.no_grad()
    def simple_test(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` FloatTensor[D, 4], ``scores`` FloatTensor[D], ``labels``
        LongTensor[D] (D <= ``max_final``), and for the instance variant ``masks``
        FloatTensor[D, 1, 28, 28] probabilities and ``mask_scores`` FloatTensor[D]."""
        rois = boxes_to_rois(proposals).to(features[0].device)
        cls_score, _, _ = self.bbox_forward(features, rois)
        dets = self.bbox_head.get_det_bboxes(rois, cls_score, None, image_sizes, self.score_thr, self.nms_iou,
                                             self.max_per_img)
        det_rois = boxes_to_rois([d["boxes"] for d in dets]).to(features[0].device)
        refined, empty = self.refine_boxes(features, det_rois, image_sizes)
        self.last_empty_cell_count = int(empty.sum())
        counts = [d["boxes"].shape[0] for d in dets]
        results = []
        for i, (d, boxes) in enumerate(zip(dets, refined.split(counts))):
            scores, labels = d["scores"], d["labels"]
            if self.soft_nms_method is not None and boxes.shape[0] > 0:
                keep, scores = batched_soft_nms(boxes.cpu(), scores.cpu(), labels.cpu(), self.soft_nms_iou,
                                                self.soft_nms_sigma, self.soft_nms_min_score, self.soft_nms_method)
                keep = keep[: self.max_final].to(boxes.device)
                scores = scores[: self.max_final].to(boxes.device)
                boxes, labels = boxes[keep], labels[keep]
            else:
                boxes, scores, labels = boxes[: self.max_final], scores[: self.max_final], labels[: self.max_final]
            out = {"boxes": boxes, "scores": scores, "labels": labels}
            if self.instance_head is not None:
                img_rois = torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes], dim=1)
                masks, iou = self.predict_masks(features, img_rois, labels)
                out["masks"] = masks
                out["mask_scores"] = scores + self.mask_score_iou_weight * iou
            results.append(out)
        return results

