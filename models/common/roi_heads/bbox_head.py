"""The R-CNN box head: two shared FCs, a classifier and an optional box regressor.

Label convention (mmdetection v2): foreground classes are ``0 .. num_classes - 1`` and the
background is ``num_classes``; the classifier has ``num_classes + 1`` softmax outputs.
(mmdetection v1 put the background at 0; the papers' v1 checkpoints need a reorder.)

Losses, averaged as mmdetection does:

- ``loss_cls``: softmax CE over all sampled RoIs / number of RoIs with weight > 0;
- ``loss_bbox``: SmoothL1 (beta 1.0, mmdetection v1; ``loss_bbox_beta=0`` gives v2's L1)
  over the positives' class-specific deltas, summed and divided by the number of sampled
  RoIs (not positives);
- ``acc`` (logged, not a loss): classification accuracy in percent.

``with_reg=False`` (D2Det, Grid R-CNN, CPM R-CNN classification branches) drops the
regressor; detections then keep the proposal boxes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common.layers.nms import batched_nms_per_image
from models.common.losses.accuracy import accuracy
from models.common.losses.cross_entropy import cross_entropy
from models.common.losses.smooth_l1 import smooth_l1_loss
from models.common.task_modules.box_coder import DeltaXYWHBBoxCoder
from models.common.task_modules.samplers import SamplingResult


class Shared2FCBBoxHead(nn.Module):
    """flatten -> FC -> ReLU -> FC -> ReLU -> (fc_cls, fc_reg).

    Args:
        in_channels: channels C of the RoI features.
        roi_feat_size: spatial size S of the RoI features.
        fc_out_channels: width of the two shared FCs.
        num_classes: foreground classes (background excluded).
        with_reg: build the box regressor.
        reg_class_agnostic: one box per RoI instead of one per class.
        target_means, target_stds: delta normalisation (R-CNN: 0 and 0.1/0.1/0.2/0.2).
        loss_cls_weight: weight of ``loss_cls``.
        loss_bbox_beta: SmoothL1 beta of ``loss_bbox`` (0 = L1).
        loss_bbox_weight: weight of ``loss_bbox``.

    Forward:
        FloatTensor[K, C, S, S] -> ``cls_score`` FloatTensor[K, num_classes + 1] and
        ``bbox_pred`` FloatTensor[K, 4 * num_classes] (or [K, 4] class-agnostic, or None).
    """

    def __init__(
        self,
        in_channels: int = 256,
        roi_feat_size: int = 7,
        fc_out_channels: int = 1024,
        num_classes: int = 80,
        with_reg: bool = True,
        reg_class_agnostic: bool = False,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        loss_cls_weight: float = 1.0,
        loss_bbox_beta: float = 1.0,
        loss_bbox_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.with_reg = with_reg
        self.reg_class_agnostic = reg_class_agnostic
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_beta = loss_bbox_beta
        self.loss_bbox_weight = loss_bbox_weight
        self.bbox_coder = DeltaXYWHBBoxCoder(target_means, target_stds)

        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_feat_size * roi_feat_size, fc_out_channels),
            nn.Linear(fc_out_channels, fc_out_channels),
        ])
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_out_channels, 4 if reg_class_agnostic else 4 * num_classes) if with_reg else None
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)
        if self.fc_reg is not None:
            nn.init.normal_(self.fc_reg.weight, std=0.001)
            nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), (self.fc_reg(x) if self.fc_reg is not None else None)

    def get_targets(self, sampling_results: Sequence[SamplingResult]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Targets of the sampled RoIs, images concatenated, positives first within an image.

        Returns:
            labels: LongTensor[K] class of positives, ``num_classes`` for negatives.
            label_weights: FloatTensor[K] (all 1).
            bbox_targets: FloatTensor[K, 4] normalised deltas (0 for negatives and when
                ``with_reg=False``).
            bbox_weights: FloatTensor[K, 4] 1 for positives, 0 otherwise.
        """
        labels, bbox_targets, bbox_weights = [], [], []
        for res in sampling_results:
            num_pos, num = res.num_pos, res.num_pos + res.num_neg
            device = res.pos_boxes.device
            lab = torch.full((num,), self.num_classes, dtype=torch.long, device=device)
            lab[:num_pos] = res.pos_gt_labels
            tgt = res.pos_boxes.new_zeros((num, 4))
            wgt = res.pos_boxes.new_zeros((num, 4))
            if num_pos > 0:
                if self.with_reg:
                    tgt[:num_pos] = self.bbox_coder.encode(res.pos_boxes, res.pos_gt_boxes)
                wgt[:num_pos] = 1.0
            labels.append(lab)
            bbox_targets.append(tgt)
            bbox_weights.append(wgt)
        labels_t = torch.cat(labels)
        label_weights = torch.ones_like(labels_t, dtype=torch.float32)
        return labels_t, label_weights, torch.cat(bbox_targets), torch.cat(bbox_weights)

    def loss(self, cls_score: Tensor, bbox_pred: Tensor | None, labels: Tensor, label_weights: Tensor,
             bbox_targets: Tensor, bbox_weights: Tensor) -> dict[str, Tensor]:
        """``loss_cls``, ``loss_bbox`` (when regressing) and ``acc`` for K sampled RoIs.

        Shapes: ``cls_score`` [K, num_classes + 1], ``bbox_pred`` [K, 4 * num_classes] or
        [K, 4] or None; the targets as returned by :meth:`get_targets`.
        """
        num_rois = cls_score.shape[0]
        avg = max(float((label_weights > 0).sum()), 1.0)
        losses = {
            "loss_cls": self.loss_cls_weight * cross_entropy(cls_score, labels, label_weights, avg_factor=avg),
            "acc": accuracy(cls_score, labels),
        }
        if self.with_reg and bbox_pred is not None:
            pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
            if self.reg_class_agnostic:
                pos_pred = bbox_pred.reshape(num_rois, 4)[pos]
            else:
                pos_pred = bbox_pred.reshape(num_rois, -1, 4)[pos, labels[pos]]
            losses["loss_bbox"] = self.loss_bbox_weight * smooth_l1_loss(
                pos_pred, bbox_targets[pos], self.loss_bbox_beta, bbox_weights[pos], avg_factor=max(num_rois, 1))
        return losses

    @torch.no_grad()
    def get_det_bboxes(
        self,
        rois: Tensor,
        cls_score: Tensor,
        bbox_pred: Tensor | None,
        image_sizes: Sequence[tuple[int, int]],
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Final detections of a batch: softmax, decode, per-class NMS, top ``max_per_img``.

        Args:
            rois: FloatTensor[K, 5] (image index, x1, y1, x2, y2) of all images.
            cls_score: FloatTensor[K, num_classes + 1] logits.
            bbox_pred: deltas, or None to keep the RoI boxes (``with_reg=False``).
            image_sizes: unpadded (h, w) per image; boxes are clipped to it.

        Returns:
            per image a dict with ``boxes`` FloatTensor[D, 4] xyxy input pixels, ``scores``
            FloatTensor[D] and ``labels`` LongTensor[D] (0..num_classes-1), D <= max_per_img,
            sorted by decreasing score. A RoI may yield detections of several classes.
        """
        num_images = len(image_sizes)
        num_rois, num_classes = rois.shape[0], self.num_classes
        scores = F.softmax(cls_score.float(), dim=-1)[:, :num_classes]
        image_ids = rois[:, 0].long()
        max_shape = torch.tensor(image_sizes, dtype=torch.float32, device=rois.device).reshape(-1, 2)[image_ids]
        if bbox_pred is not None and self.with_reg:
            boxes = self.bbox_coder.decode(rois[:, 1:5], bbox_pred.float(), max_shape)
            boxes = boxes.reshape(num_rois, bbox_pred.shape[-1] // 4, 4)
        else:
            b = rois[:, 1:5].float()
            max_xy = max_shape.flip(-1).repeat(1, 2)  # (w, h, w, h)
            boxes = torch.minimum(b, max_xy).clamp(min=0)[:, None, :]
        boxes = boxes.expand(num_rois, num_classes, 4)

        roi_idx, cls_idx = torch.nonzero(scores > score_thr).unbind(1)
        det_boxes = boxes[roi_idx, cls_idx]
        det_scores = scores[roi_idx, cls_idx]
        det_images = image_ids[roi_idx]
        keep, split = batched_nms_per_image(det_boxes, det_scores, det_images * num_classes + cls_idx, det_images,
                                            num_images, nms_iou, max_per_img)
        return [
            {"boxes": b, "scores": s, "labels": lab}
            for b, s, lab in zip(det_boxes[keep].split(split), det_scores[keep].split(split),
                                 cls_idx[keep].split(split))
        ]
