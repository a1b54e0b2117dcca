"""Region Proposal Network head (Ren et al. 2015), mmdetection anatomy.

Layers: a shared 3x3 conv + ReLU over every pyramid level, then two 1x1 convs: ``rpn_cls``
(A sigmoid objectness logits per location) and ``rpn_reg`` (4A deltas). Prediction of a
level with shape [B, A*k, H, W] is read in (H, W, A) order, the order of
:class:`~models.common.task_modules.anchor_generator.AnchorGenerator`.

Training targets per image: anchors of valid locations (inside the image by
``allowed_border``) are assigned by a MaxIoU assigner (0.7 / 0.3 / min_pos 0.3) and a
random sampler picks 256 with at most half positives. Losses, averaged over the number of
sampled anchors of the whole batch (mmdetection's ``avg_factor``):

- ``loss_rpn_cls``: sigmoid BCE over the sampled anchors;
- ``loss_rpn_bbox``: SmoothL1 (beta 1/9, mmdetection v1; ``loss_bbox_beta=0`` gives v2's
  L1) over the positives' normalised deltas.

Proposals (:meth:`RPNHead.get_proposals`), vectorised over images and levels:

1. per image and level, the ``nms_pre`` highest-scoring anchors;
2. decode, clip to the image, drop boxes with width or height ``<= min_bbox_size``
   (mmdetection v2.x; removes the zero-size boxes of anchors in the padding);
3. NMS at ``nms_iou`` *within each level* of each image (one ``batched_nms`` call with
   group id ``image * num_levels + level``);
4. the ``max_per_img`` highest-scoring survivors over all levels of each image.

This is mmdetection v2's batched-across-levels form. mmdetection v1 instead keeps
``nms_post`` boxes per level after NMS and then the top ``max_num`` over levels; with
``nms_post == max_num`` (every config of the papers reproduced here: 2000/2000 train,
1000/1000 test) both select exactly the same proposals, since a box ranked below
``max_num`` within its own level can never be in the global top ``max_num``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.common.layers.nms import batched_nms_per_image
from models.common.losses.cross_entropy import binary_cross_entropy
from models.common.losses.smooth_l1 import smooth_l1_loss
from models.common.task_modules.anchor_generator import AnchorGenerator, anchor_inside_flags
from models.common.task_modules.assigners import MaxIoUAssigner
from models.common.task_modules.box_coder import DeltaXYWHBBoxCoder
from models.common.task_modules.samplers import RandomSampler


@dataclass
class ProposalConfig:
    """Proposal generation knobs (one set for training, one for testing).

    Attributes:
        nms_pre: candidates kept per image and level (top-k by score) before NMS.
        max_per_img: proposals kept per image after NMS, over all levels.
        nms_iou: NMS IoU threshold (within a level).
        min_bbox_size: boxes with width or height <= this (pixels) are dropped before NMS.
    """

    nms_pre: int = 1000
    max_per_img: int = 1000
    nms_iou: float = 0.7
    min_bbox_size: float = 0.0


class RPNHead(nn.Module):
    """RPN head with anchor targets, losses and proposal generation.

    Args:
        in_channels: channels of every input pyramid level.
        feat_channels: channels of the shared 3x3 conv.
        anchor_generator: anchors per level (its strides must match the input levels).
        bbox_coder: delta coder (RPN: means 0, stds 1).
        assigner: anchor-to-gt assigner (default MaxIoU 0.7 / 0.3 / 0.3).
        sampler: anchor sampler (default 256 anchors, 0.5 positives, no gt added).
        train_proposals: proposal knobs in training (default 2000 / 2000 / 0.7).
        test_proposals: proposal knobs in evaluation (default 1000 / 1000 / 0.7).
        allowed_border: anchors more than this many pixels outside the image are not
            trained; negative trains all anchors of valid locations (v1: 0, v2: -1).
        loss_cls_weight, loss_bbox_weight: loss multipliers.
        loss_bbox_beta: SmoothL1 beta of the box loss (0 = L1).
    """

    def __init__(
        self,
        in_channels: int,
        feat_channels: int,
        anchor_generator: AnchorGenerator,
        bbox_coder: DeltaXYWHBBoxCoder | None = None,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        train_proposals: ProposalConfig | None = None,
        test_proposals: ProposalConfig | None = None,
        allowed_border: int = 0,
        loss_cls_weight: float = 1.0,
        loss_bbox_beta: float = 1.0 / 9.0,
        loss_bbox_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.bbox_coder = bbox_coder or DeltaXYWHBBoxCoder()
        self.assigner = assigner or MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3)
        self.sampler = sampler or RandomSampler(256, 0.5, add_gt_as_proposals=False)
        self.train_proposals = train_proposals or ProposalConfig(2000, 2000, 0.7)
        self.test_proposals = test_proposals or ProposalConfig(1000, 1000, 0.7)
        self.allowed_border = allowed_border
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_beta = loss_bbox_beta
        self.loss_bbox_weight = loss_bbox_weight

        num_anchors = anchor_generator.num_base_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits FloatTensor[B, A, H, W] and deltas FloatTensor[B, 4A, H, W]."""
        if len(features) != self.anchor_generator.num_levels:
            raise ValueError(f"RPNHead expects {self.anchor_generator.num_levels} levels, got {len(features)}")
        cls_scores, bbox_preds = [], []
        for x in features:
            x = torch.relu(self.rpn_conv(x))
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds

    @staticmethod
    def _flatten(cls_scores: list[Tensor], bbox_preds: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Levels concatenated in anchor order: logits [B, N], deltas [B, N, 4]."""
        b = cls_scores[0].shape[0]
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1) for c in cls_scores], dim=1)
        reg = torch.cat([r.permute(0, 2, 3, 1).reshape(b, -1, 4) for r in bbox_preds], dim=1)
        return cls, reg

    def loss(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor],
        gt_boxes_ignore: list[Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """``loss_rpn_cls`` and ``loss_rpn_bbox`` (scalars, weighted).

        Args:
            cls_scores, bbox_preds: outputs of :meth:`forward`.
            image_sizes: unpadded (h, w) per image.
            gt_boxes: per image FloatTensor[G_i, 4] xyxy pixels (G_i may be 0).
            gt_boxes_ignore: per image FloatTensor[M_i, 4] or None.
        """
        device = cls_scores[0].device
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        anchors = torch.cat(self.anchor_generator.grid_anchors(featmap_sizes, device))
        cls, reg = self._flatten(cls_scores, bbox_preds)
        num_anchors = anchors.shape[0]
        if gt_boxes_ignore is None:
            gt_boxes_ignore = [None] * len(gt_boxes)

        pos_flat, neg_flat, pos_targets = [], [], []
        for i, (image_size, gts, ignore) in enumerate(zip(image_sizes, gt_boxes, gt_boxes_ignore)):
            valid = torch.cat(self.anchor_generator.valid_flags(featmap_sizes, image_size, device))
            inside = torch.nonzero(anchor_inside_flags(anchors, valid, image_size, self.allowed_border)).squeeze(1)
            candidates = anchors[inside]
            assign = self.assigner.assign(candidates, gts, None, ignore)
            sampling = self.sampler.sample(assign, candidates, gts)
            pos_flat.append(inside[sampling.pos_inds] + i * num_anchors)
            neg_flat.append(inside[sampling.neg_inds] + i * num_anchors)
            pos_targets.append(self.bbox_coder.encode(sampling.pos_boxes, sampling.pos_gt_boxes))
        pos = torch.cat(pos_flat)
        neg = torch.cat(neg_flat)
        num_samples = max(pos.numel() + neg.numel(), 1)

        logits = cls.reshape(-1)[torch.cat([pos, neg])]
        labels = torch.cat([logits.new_ones(pos.numel()), logits.new_zeros(neg.numel())])
        loss_cls = binary_cross_entropy(logits, labels, avg_factor=num_samples)
        loss_bbox = smooth_l1_loss(reg.reshape(-1, 4)[pos], torch.cat(pos_targets),
                                   beta=self.loss_bbox_beta, avg_factor=num_samples)
        return {
            "loss_rpn_cls": self.loss_cls_weight * loss_cls,
            "loss_rpn_bbox": self.loss_bbox_weight * loss_bbox,
        }

    @torch.no_grad()
    def get_proposals(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        image_sizes: list[tuple[int, int]],
        cfg: ProposalConfig,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals per image (see module doc), detached.

        Returns:
            boxes: per image FloatTensor[K_i, 4] xyxy in input pixels, clipped to the image,
                sorted by decreasing score, K_i <= ``cfg.max_per_img``.
            scores: per image FloatTensor[K_i] objectness probabilities.
        """
        device = cls_scores[0].device
        num_images = cls_scores[0].shape[0]
        num_levels = len(cls_scores)
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        level_anchors = self.anchor_generator.grid_anchors(featmap_sizes, device)

        logits_l, deltas_l, anchors_l, level_ids = [], [], [], []
        for level in range(num_levels):
            logits = cls_scores[level].permute(0, 2, 3, 1).reshape(num_images, -1)
            deltas = bbox_preds[level].permute(0, 2, 3, 1).reshape(num_images, -1, 4)
            anchors = level_anchors[level]
            k = min(cfg.nms_pre, logits.shape[1])
            if k < logits.shape[1]:
                logits, idx = logits.topk(k, dim=1)
                deltas = deltas.gather(1, idx[..., None].expand(-1, -1, 4))
                anchors = anchors[idx]
            else:
                anchors = anchors[None].expand(num_images, -1, -1)
            logits_l.append(logits)
            deltas_l.append(deltas)
            anchors_l.append(anchors)
            level_ids.append(torch.full((k,), level, dtype=torch.long, device=device))

        scores = torch.cat(logits_l, dim=1).float().sigmoid()  # [B, M]
        max_shape = torch.tensor(image_sizes, dtype=torch.float32, device=device)[:, None, :]  # [B, 1, 2]
        boxes = self.bbox_coder.decode(torch.cat(anchors_l, dim=1), torch.cat(deltas_l, dim=1), max_shape)
        num_cand = scores.shape[1]
        image_ids = torch.arange(num_images, device=device).repeat_interleave(num_cand)
        groups = image_ids * num_levels + torch.cat(level_ids).repeat(num_images)
        boxes = boxes.reshape(-1, 4)
        scores = scores.reshape(-1)

        wh = boxes[:, 2:] - boxes[:, :2]
        keep = torch.nonzero((wh > cfg.min_bbox_size).all(dim=1)).squeeze(1)
        boxes, scores, image_ids, groups = boxes[keep], scores[keep], image_ids[keep], groups[keep]
        keep, split = batched_nms_per_image(boxes, scores, groups, image_ids, num_images, cfg.nms_iou,
                                            cfg.max_per_img)
        return list(boxes[keep].split(split)), list(scores[keep].split(split))

    def forward_train(
        self,
        features: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor],
        gt_boxes_ignore: list[Tensor | None] | None = None,
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Losses and the training proposals (per image FloatTensor[K_i, 4], detached)."""
        cls_scores, bbox_preds = self(features)
        losses = self.loss(cls_scores, bbox_preds, image_sizes, gt_boxes, gt_boxes_ignore)
        proposals, _ = self.get_proposals(cls_scores, bbox_preds, image_sizes, self.train_proposals)
        return losses, proposals

    def simple_test(self, features: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """Test proposals and their scores per image (see :meth:`get_proposals`)."""
        cls_scores, bbox_preds = self(features)
        return self.get_proposals(cls_scores, bbox_preds, image_sizes, self.test_proposals)
