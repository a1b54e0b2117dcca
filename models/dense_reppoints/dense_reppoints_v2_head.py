"""Dense RepPoints V2 head (RepPoints V2 paper, instance segmentation), spec reppoints.md §3.6:
the Dense V1 head (:class:`~models.dense_reppoints.dense_reppoints_head.DenseRepPointsHead`) plus
contour verification and foreground (semantic) verification, fused into its features.

Per level, with ``F`` = ``feat_channels``:

1. ``cls_feat``, ``pts_feat`` from the V1 towers; ``shared = shared_convs(pts_feat)``
   (``shared_stacked_convs`` x [3x3 conv, GN, ReLU]);
2. ``sem_scores = sem_out(shared)`` (1x1 conv -> C logits, prior 0.01) and ``sem_feat =
   sem_embed(shared)`` (1x1 conv, GN, ReLU);
3. ``cls_feat += sem_feat``, ``pts_feat += sem_feat``, ``cont_feat = shared + sem_feat``;
4. ``cont_score`` (3x3 conv -> 1 logit, prior 0.01) and ``cont_offset`` (3x3 conv -> (x, y)
   offsets in stride units) on ``cont_feat``; there is no corner pooling;
5. the 3 contour channels ``[score, offset_x, offset_y]`` are appended to ``cls_feat`` and to
   ``pts_feat`` (F + 3 channels) for the group sampling and the offset field (the init points
   read the fused ``pts_feat`` without them);
6. the mask-score trunk adds each level's ``sem_feat`` to that level's mask features before
   the fusion onto P3.

Targets and losses, beyond Dense V1's:

- contour (:func:`contour_targets`, the reference's ``PointCTAssigner``): each instance mask's
  outer and hole boundaries are drawn with thickness 2 on the input-resolution map; on every
  level a cell is positive when a drawn pixel rounds to it (``round(centre / stride)``), with
  offset target ``centre / stride - cell``. ``loss_contour_heatmap``: sigmoid focal (2, 0.25) x
  1.0 over every cell of the padded maps, divided by the number of positive cells;
  ``loss_contour_offset``: SmoothL1 (beta 1/9) x 1.0 at the positives, same divisor;
- foreground (:func:`semantic_targets`): a stride-8 class map from the instance masks (the
  highest label where instances overlap; background = C), nearest-resized to every level;
  ``loss_sem``: sigmoid focal (2, 0.25) x 1.0 divided by the number of foreground cells.

Inference: V1's, plus contour snapping of the point sets of P4-P7 detections for the mask
step (P3 detections get none): each of a detection's 729 refined points moves to the best
contour cell of its 2 x 2 neighbourhood (max-pool with indices on the sigmoid heat map of P3
for P4 / P5, of P4 for P6 / P7) plus that cell's offset; a snapped point whose contour
probability exceeds ``contour_score_thr`` (0.4) joins the detection's point set with score 0.5,
the others are dropped. Boxes and scores are not changed. ``contour_snapping=False`` gives V1's
mask step on the same model.

Decisions (beyond Dense V1's and RepPoints V2's):

1. **Contour pixels** are placed at their centres (``u + 0.5``, our pixel convention); the
   reference uses the integer index.
2. **Several contour pixels in one cell**: the offset target is the mean of their offsets (the
   reference keeps whichever write lands last); the heat target is 1.
3. **Contour targets from the masks in the head**: drawn per iteration from the same
   input-resolution masks the DTS reads (the reference draws them in its data loader after
   resize and pad; same pixels).
4. **Semantic map at stride 8**: cell ``(i, j)`` takes the label of the masks covering the pixel
   at its prior point ``(8 j, 8 i)`` (nearest sampling), the highest label if several do.
5. Dropped snapped points are passed to the mask step as non-finite points, which it ignores.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dense_reppoints.dense_reppoints_head import DenseOutputs, DenseRepPointsHead
from models.reppoints.reppoints_v2_head import foreground_trunk
from models.reppoints.focal_loss import sigmoid_focal_loss
from models.common.losses.smooth_l1 import smooth_l1_loss

CONTOUR_CHANNELS = 3  # score logit + (x, y) offset, appended to cls_feat and pts_feat


def contour_pixels(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """(x, y) integer pixels of the instance's boundaries drawn with ``thickness`` (outer and
    holes, ``RETR_TREE``); int64 [K, 2], empty for an empty mask."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask.astype(np.uint8)), cv2.RETR_TREE,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2), np.int64)
    canvas = np.zeros(mask.shape[:2], np.uint8)
    cv2.drawContours(canvas, contours, -1, 1, thickness)
    ys, xs = np.nonzero(canvas)
    return np.stack([xs, ys], axis=1).astype(np.int64)


def contour_targets(pixels: Tensor, featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int]
                    ) -> tuple[Tensor, Tensor]:
    """Contour cells of one image over all levels (level after level, row-major).

    Args:
        pixels: LongTensor[K, 2] (x, y) drawn contour pixels of all the image's instances.
    Returns:
        positive mask BoolTensor[M] and offsets FloatTensor[M, 2] ((x, y) in stride units, the
        mean over the cell's pixels; zeros elsewhere).
    """
    device = pixels.device
    pos, offs = [], []
    centres = pixels.float() + 0.5  # decision 1
    for (h, w), s in zip(featmap_sizes, strides):
        pos_l = torch.zeros(h * w, dtype=torch.bool, device=device)
        off_l = torch.zeros(h * w, 2, device=device)
        if centres.shape[0]:
            rel = centres / s
            cell = torch.round(rel)
            j, i = cell[:, 0].long(), cell[:, 1].long()
            inside = (j >= 0) & (j < w) & (i >= 0) & (i < h)
            flat = (i * w + j)[inside]
            diff = (rel - cell)[inside]
            count = torch.zeros(h * w, device=device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
            off_l.index_add_(0, flat, diff)
            pos_l = count > 0
            off_l[pos_l] /= count[pos_l, None]  # decision 2
        pos.append(pos_l)
        offs.append(off_l)
    return torch.cat(pos), torch.cat(offs)


def semantic_targets(masks: Tensor, labels: Tensor, num_classes: int, size: tuple[int, int], stride: int) -> Tensor:
    """LongTensor[H, W] class of each stride-``stride`` cell (decision 4; background = C).

    ``masks``: UInt8Tensor[G, Hi, Wi] input-resolution instance masks; ``labels``: LongTensor[G]."""
    h, w = size
    out = torch.full((h, w), -1, dtype=torch.long, device=labels.device)
    if masks.shape[0]:
        ys = (torch.arange(h, device=masks.device) * stride).clamp(max=masks.shape[1] - 1)
        xs = (torch.arange(w, device=masks.device) * stride).clamp(max=masks.shape[2] - 1)
        inside_y = torch.arange(h, device=masks.device) * stride < masks.shape[1]
        inside_x = torch.arange(w, device=masks.device) * stride < masks.shape[2]
        cover = masks[:, ys][:, :, xs].bool() & inside_y[None, :, None] & inside_x[None, None, :]  # [G, h, w]
        lab = torch.where(cover, labels.to(masks.device)[:, None, None], torch.full_like(cover, -1, dtype=torch.long))
        out = lab.amax(dim=0).to(labels.device)
    return torch.where(out < 0, torch.full_like(out, num_classes), out)


class DenseRepPointsV2Head(DenseRepPointsHead):
    """Dense RepPoints V2 head (module doc). Arguments of :class:`DenseRepPointsHead`, plus:

    Args:
        shared_stacked_convs: convs of the shared verification trunk (1).
        loss_contour_heatmap_weight, loss_contour_offset_weight, loss_contour_offset_beta,
        loss_sem_weight: contour focal 1.0, contour offset SmoothL1 1.0 with beta 1/9, semantic
            focal 1.0 (the Dense V2 configs' value; the head default there is 0.1).
        contour_score_thr: contour probability above which a snapped point is kept (0.4).
        contour_snapping: add the snapped points to the mask step (module doc).
    """

    extra_in_channels = CONTOUR_CHANNELS

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        shared_stacked_convs: int = 1,
        loss_contour_heatmap_weight: float = 1.0,
        loss_contour_offset_weight: float = 1.0,
        loss_contour_offset_beta: float = 1.0 / 9,
        loss_sem_weight: float = 1.0,
        contour_score_thr: float = 0.4,
        contour_snapping: bool = True,
        **dense_kwargs,
    ) -> None:
        super().__init__(num_classes, in_channels, **dense_kwargs)
        if self.norm is None:
            raise ValueError("DenseRepPointsV2Head needs GroupNorm (norm='gn') for its verification trunk")
        feat, groups = self.feat_channels, self.norm_groups
        self.loss_contour_heatmap_weight = float(loss_contour_heatmap_weight)
        self.loss_contour_offset_weight = float(loss_contour_offset_weight)
        self.loss_contour_offset_beta = float(loss_contour_offset_beta)
        self.loss_sem_weight = float(loss_sem_weight)
        self.contour_score_thr = float(contour_score_thr)
        self.contour_snapping = bool(contour_snapping)
        self.shared_convs, self.sem_out, self.sem_embed = foreground_trunk(feat, groups, num_classes,
                                                                          shared_stacked_convs)
        self.cont_score = nn.Conv2d(feat, 1, 3, padding=1)
        self.cont_offset = nn.Conv2d(feat, 2, 3, padding=1)
        prior = -math.log((1 - 0.01) / 0.01)
        for conv in (self.sem_out, self.cont_score, self.cont_offset):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        for conv in (self.sem_out, self.cont_score):
            nn.init.constant_(conv.bias, prior)

    # ------------------------------------------------------------------ forward
    def forward(self, features: Sequence[Tensor]) -> DenseOutputs:  # type: ignore[override]
        """Dense V1's outputs plus ``out.cont_scores`` [B, 1, H, W], ``out.cont_offsets``
        [B, 2, H, W] and ``out.sem_scores`` [B, C, H, W] per level."""
        if len(features) != len(self.point_strides):
            raise ValueError(f"expected {len(self.point_strides)} pyramid levels, got {len(features)}")
        cls, init, refine, mask_feats, cont_s, cont_o, sem = [], [], [], [], [], [], []
        for x in features:
            cls_feat, pts_feat = self.cls_convs(x), self.reg_convs(x)
            shared = self.shared_convs(pts_feat)
            sem_scores = self.sem_out(shared)
            sem_feat = self.sem_embed(shared)
            cls_feat = cls_feat + sem_feat
            pts_feat = pts_feat + sem_feat
            cont_feat = shared + sem_feat
            score, offset = self.cont_score(cont_feat), self.cont_offset(cont_feat)
            contour = torch.cat([score, offset], dim=1)
            c, pi, pr = self._points_and_scores(torch.cat([cls_feat, contour], 1), pts_feat,
                                                torch.cat([pts_feat, contour], 1))
            cls.append(c)
            init.append(pi)
            refine.append(pr)
            mask_feats.append(self.mask_convs(x) + sem_feat)
            cont_s.append(score)
            cont_o.append(offset)
            sem.append(sem_scores)
        return DenseOutputs(cls, init, refine, self._score_maps(mask_feats), cont_s, cont_o, sem)

    # ------------------------------------------------------------------ training
    def verification_loss(self, out: DenseOutputs, gt_labels: Sequence[Tensor], gt_masks: Sequence[Tensor]
                          ) -> dict[str, Tensor]:
        """``loss_contour_heatmap``, ``loss_contour_offset`` and ``loss_sem`` (module doc)."""
        cont_scores, cont_offsets, sem_scores = out.cont_scores, out.cont_offsets, out.sem_scores
        device = cont_scores[0].device
        sizes = [tuple(s.shape[-2:]) for s in cont_scores]
        b = cont_scores[0].shape[0]
        heat = torch.cat([s.float().flatten(1) for s in cont_scores], 1)  # [B, M]
        offs = torch.cat([o.float().flatten(2) for o in cont_offsets], 2).permute(0, 2, 1)  # [B, M, 2]
        pos, off_t = [], []
        for m in gt_masks:
            pix = [contour_pixels(k) for k in m.detach().cpu().numpy()]
            pix_t = torch.from_numpy(np.concatenate(pix) if pix else np.zeros((0, 2), np.int64)).to(device)
            p, o = contour_targets(pix_t, sizes, self.point_strides)
            pos.append(p)
            off_t.append(o)
        pos_t, off_tt = torch.stack(pos), torch.stack(off_t)
        num_pos = max(int(pos_t.sum()), 1)
        labels = torch.where(pos_t, 0, 1).reshape(-1)
        loss_heat = sigmoid_focal_loss(heat.reshape(-1, 1), labels, None, 2.0, 0.25, "mean", num_pos)
        loss_off = smooth_l1_loss(offs[pos_t], off_tt[pos_t], self.loss_contour_offset_beta, reduction="sum")
        loss_off = (loss_off + 0.0 * offs.sum()) / num_pos
        # foreground: stride-8 class map, nearest-resized to every level
        first = sizes[0]
        sem_map = torch.stack([semantic_targets(gt_masks[i], gt_labels[i].to(device), self.num_classes, first,
                                                self.point_strides[0]) for i in range(b)])  # [B, H0, W0]
        preds, targets = [], []
        for s in sem_scores:
            t = F.interpolate(sem_map[:, None].float(), size=tuple(s.shape[-2:]), mode="nearest")[:, 0].long()
            preds.append(s.float().permute(0, 2, 3, 1).reshape(-1, self.num_classes))
            targets.append(t.reshape(-1))
        sem_t = torch.cat(targets)
        num_fg = max(int((sem_t < self.num_classes).sum()), 1)
        loss_sem = sigmoid_focal_loss(torch.cat(preds), sem_t, None, 2.0, 0.25, "mean", num_fg)
        return {
            "loss_contour_heatmap": self.loss_contour_heatmap_weight * loss_heat,
            "loss_contour_offset": self.loss_contour_offset_weight * loss_off,
            "loss_sem": self.loss_sem_weight * loss_sem,
        }

    def forward_train(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],  # type: ignore[override]
                      gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                      gt_ignore: Sequence[Tensor | None] | None = None,
                      gt_masks: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
        if gt_masks is None:
            raise ValueError("Dense RepPoints V2 needs gt instance masks (set data.with_masks: true)")
        out = self(features)
        losses, _ = self.dense_loss(out, image_sizes, gt_boxes, gt_labels, gt_masks, gt_ignore)
        losses.update(self.verification_loss(out, gt_labels, gt_masks))
        return losses

    # ------------------------------------------------------------------ inference
    def snap_points(self, out: DenseOutputs, level: Tensor, image_ids: Tensor, points: Tensor, limits: Tensor
                    ) -> tuple[Tensor, Tensor]:
        """Contour-snapped copies of detections' points (module doc).

        Args:
            level: LongTensor[K] pyramid level of each detection; image_ids: LongTensor[K];
            points: FloatTensor[K, N, 2] input pixels; limits: FloatTensor[K, 2] (w, h).
        Returns:
            snapped points FloatTensor[K, N, 2] (NaN where dropped) and scores FloatTensor[K, N]
            (0.5 where kept, 0 where dropped).
        """
        k, n = points.shape[:2]
        snapped = torch.full_like(points, float("nan"))
        scores = points.new_zeros(k, n)
        cont_scores, cont_offsets = out.cont_scores, out.cont_offsets
        for src in (0, 1):
            sel = ((level >= 1) & ((level - 1) // 2 == src)).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            heat = cont_scores[src].float().sigmoid()  # [B, 1, H, W]
            _, _, h, w = heat.shape
            if h < 2 or w < 2:
                continue
            stride = float(self.point_strides[src])
            pooled, argmax = F.max_pool2d(heat, 2, stride=1, return_indices=True)  # [B, 1, H-1, W-1]
            pts = points[sel]
            j = torch.floor(pts[..., 0] / stride).clamp(0, w - 2).long()
            i = torch.floor(pts[..., 1] / stride).clamp(0, h - 2).long()
            img = image_ids[sel][:, None].expand(-1, n)
            flat = argmax[img, 0, i, j]  # [k, N] index into H*W
            best = pooled[img, 0, i, j]
            off = cont_offsets[src].float().flatten(2)  # [B, 2, H*W]
            ox, oy = off[img, 0, flat], off[img, 1, flat]
            new = torch.stack([((flat % w).float() + ox) * stride, ((flat // w).float() + oy) * stride], dim=-1)
            new = torch.minimum(new.clamp(min=0), limits[sel][:, None, :])
            keep = best > self.contour_score_thr
            snapped[sel] = torch.where(keep[..., None], new, torch.full_like(new, float("nan")))
            scores[sel] = keep.float() * 0.5
        return snapped, scores

    def extra_points(self, out: DenseOutputs, level: Tensor, image_ids: Tensor, points: Tensor,
                     limits: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.contour_snapping:
            return None
        return self.snap_points(out, level, image_ids, points, limits)
