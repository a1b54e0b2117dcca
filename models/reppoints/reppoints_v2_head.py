"""RepPoints V2 head (Chen et al. 2020, "Verification Meets Regression"), spec
reppoints.md §2: the V1 head (:class:`~models.reppoints.reppoints_head.RepPointsHead`,
same towers, points, DCNs, targets and point losses) plus two verification tasks whose
outputs are fused into the classification and refinement features.

Per level, with ``x`` FloatTensor[B, C_in, H, W] and ``F`` = ``feat_channels``:

1. ``cls_feat = cls_convs(x)``, ``pts_feat = reg_convs(x)`` (V1 towers);
2. ``shared = shared_convs(pts_feat)``: ``shared_stacked_convs`` x [3x3 conv, GN, ReLU];
3. foreground verification: ``sem_scores = sem_out(shared)`` (1x1 conv -> C logits, prior
   0.01) and ``sem_feat = sem_embed(shared)`` (1x1 conv, GN, ReLU; F channels);
4. additive fusion: ``cls_feat += sem_feat``, ``pts_feat += sem_feat``,
   ``hem_feat = shared + sem_feat``;
5. corner verification: ``tl = TLPool(hem_feat)``, ``br = BRPool(hem_feat)``
   (:class:`~models.reppoints.corner_pool_block.CornerPoolBlock`, ``corner_dim`` wide), each
   followed by a 3x3 score conv (1 logit, prior 0.01) and a 3x3 offset conv (2 channels, x then
   y, in stride units); ``hm_scores`` = [tl, br] FloatTensor[B, 2, H, W] (logits),
   ``hm_offsets`` = [tl_x, tl_y, br_x, br_y] FloatTensor[B, 4, H, W];
6. init points from the fused ``pts_feat`` (V1);
7. concatenation fusion: the 6 raw corner channels (not detached) are appended to
   ``cls_feat`` and ``pts_feat`` (F + 6 channels), which feed V1's two DCNs with V1's offsets.

Outputs per level: ``cls`` [B, C, H, W], ``pts_init`` / ``pts_refine`` [B, 2N, H, W] ((y, x)
pairs, stride units), ``hm_scores`` [B, 2, H, W], ``hm_offsets`` [B, 4, H, W], ``sem_scores``
[B, C, H, W].

Targets and losses (keys ``loss_cls``, ``loss_pts_init``, ``loss_pts_refine`` as in V1, plus):

- corners (:func:`corner_targets`, the repository's ``PointHMAssigner(gaussian_bump=True,
  gaussian_iou=0.7)``): on **every** level, each gt's top-left and bottom-right corner make
  the nearest cell positive (heatmap 1) with offset target ``corner / stride - cell``; other
  cells within CornerNet's radius (:func:`gaussian_radius`, image pixels, min overlap 0.7)
  get ``exp(-d^2 / 2 sigma^2)``, ``sigma = (2 r + 1) / 6``, the max over gts.
  ``loss_heatmap`` = 0.25 x Gaussian focal loss (alpha 2, gamma 4) of each corner divided by
  its number of positives, averaged over TL and BR; ``loss_offset`` = 1.0 x SmoothL1 (beta
  1/9) at the positives divided by their number, averaged over TL and BR;
- foreground (:func:`foreground_targets`, the repository's ``LoadRPDV2Annotations``): a
  per-class map at the first level's stride (8) where every gt box covers the cells
  ``int(y1 / 8) .. int(y2 / 8)`` by ``int(x1 / 8) .. int(x2 / 8)`` (inclusive), each positive
  weighted by 1 / area of the smallest box of that class covering it; nearest-resized to
  every level; ``loss_sem`` = 0.1 x the separately normalised focal loss
  (:func:`~models.reppoints.separate_focal_loss.separate_focal_loss`, gamma 2, alpha 0.25).
  ``sem_scores`` are not used at inference (as in the repository).

Joint inference (spec §2.4; ``corner_snapping``, on by default): boxes of P4 and P5 are
snapped to the P3 corner maps, boxes of P6 and P7 to the P4 maps; P3 boxes are kept. For a
box corner (x, y) and a map of stride s: ``heat = sigmoid(map)``, a 2x2 max-pool (stride 1)
with argmax indices, the pooled cell ``(floor(x / s), floor(y / s))`` (clamped), and the new
corner ``(cx + off_x, cy + off_y) * s`` at the argmax ``(cx, cy)`` of the 2x2 window, clamped
to the image. The corner score is not used (no threshold, no rescoring), as in the
repository; classification scores are unchanged. ``corner_snapping=False`` reports the V1
decoding of the same model.

Decisions on the spec's flags (beyond those of the V1 head, which all apply):

1. **Shared nearest cell** (§2.2 [FLAG]): when several gts' corners share a nearest cell, the
   offset target is the **last** gt's (in annotation order), deterministically (the
   reference writes them in an unspecified order on GPU).
2. **Cells used by the verification losses**: every cell of the padded batch (the reference
   uses every prior point of its per-image padded map); our batch padding may add cells
   beyond an image, which are negatives (an image's corners and boxes never reach them).
3. **log(p)** in the foreground and heatmap losses: taken from the logits (``logsigmoid``),
   never NaN (§2.3 [FLAG]); the foreground loss's negative term is divided by
   ``max(N_pos_cells, 1)`` and so is finite for a batch without objects. Box areas are
   floored at 1 px^2 in the foreground weights.
4. **Snapped boxes** are re-ordered (x1 <= x2, y1 <= y2) after snapping (the repository may
   report a box whose snapped top-left passed its bottom-right); a source map smaller than
   2 x 2 leaves the boxes unchanged.
5. **Initialisation** as in the repository: normal(std 0.01) for the towers, the shared convs,
   the point, DCN and six output convs (the three score outputs with the 0.01 prior); Kaiming
   (mmcv ConvModule) for the foreground embedding and the corner-pool blocks' conv units.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.reppoints.reppoints_head import RepPointsHead
from models.reppoints.corner_pool_block import CornerPoolBlock, conv_gn_relu
from models.common.layers.norm import build_norm
from models.reppoints.gaussian_focal_loss import gaussian_focal_loss
from models.reppoints.separate_focal_loss import separate_focal_loss
from models.common.losses.smooth_l1 import smooth_l1_loss

CORNER_CHANNELS = 6  # 2 heatmap logits + 4 offsets, appended to both DCN inputs


def gaussian_radius(heights: Tensor, widths: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CornerNet's corner radius (pixels) per box: the largest shift of one corner pair that
    keeps IoU >= ``min_overlap`` in each of CornerNet's three cases, i.e. the minimum of the
    three quadratic roots (spec §2.2). FloatTensor[G] heights, widths -> FloatTensor[G]."""
    h, w, m = heights.float(), widths.float(), float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - m) / (1 + m)
    r1 = (b1 - torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - m) * w * h
    r2 = (b2 - torch.sqrt(b2 ** 2 - 16 * c2)) / 8
    b3 = -2 * m * (h + w)
    c3 = (m - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 16 * m * c3)) / (8 * m)
    return torch.minimum(torch.minimum(r1, r2), r3)


def corner_targets(priors: Sequence[Tensor], featmap_sizes: Sequence[tuple[int, int]], gt_boxes: Tensor,
                   gaussian_iou: float = 0.7) -> tuple[Tensor, Tensor, Tensor]:
    """Corner heatmap and offset targets of one image over all levels' cells (level after level).

    Args:
        priors: per level FloatTensor[H*W, 3] ``(x, y, stride)`` (row-major cells).
        featmap_sizes: per level (H, W).
        gt_boxes: FloatTensor[G, 4] xyxy, input pixels.

    Returns:
        heatmap FloatTensor[2, M] (TL, BR; 1 at positives, Gaussian < 1 around them),
        offsets FloatTensor[2, M, 2] ((x, y) in stride units; set at positives),
        positive mask BoolTensor[2, M] (the nearest cell of each gt corner on each level).
    """
    device = gt_boxes.device
    m = sum(p.shape[0] for p in priors)
    heat = torch.zeros(2, m, device=device)
    offsets = torch.zeros(2, m, 2, device=device)
    pos = torch.zeros(2, m, dtype=torch.bool, device=device)
    g = gt_boxes.shape[0]
    if g == 0:
        return heat, offsets, pos
    gts = gt_boxes.float()
    radius = gaussian_radius(gts[:, 3] - gts[:, 1], gts[:, 2] - gts[:, 0], gaussian_iou)  # [G]
    sigma = (2 * radius + 1) / 6
    start = 0
    for pri, (h, w) in zip(priors, featmap_sizes):
        stride = pri[0, 2] if pri.shape[0] else 1.0
        for c, corner in enumerate((gts[:, :2], gts[:, 2:])):
            # nearest prior point (j s, i s); ties go to the lower index, as an argmin would
            j = torch.ceil(corner[:, 0] / stride - 0.5).clamp(0, w - 1).long()
            i = torch.ceil(corner[:, 1] / stride - 0.5).clamp(0, h - 1).long()
            cell = i * w + j  # [G]
            dist = torch.cdist(pri[:, :2], corner)  # [HW, G] pixels
            bump = torch.exp(-dist ** 2 / (2 * sigma ** 2)[None])
            bump = torch.where(dist < radius[None], bump, torch.zeros_like(bump)).amax(dim=1)
            heat[c, start:start + h * w] = bump
            # decision 1: among gts sharing a cell, the last one sets the offset
            winner = torch.full((h * w,), -1, dtype=torch.long, device=device)
            winner.scatter_reduce_(0, cell, torch.arange(g, device=device), reduce="amax")
            cells = (winner >= 0).nonzero().squeeze(1)
            won = winner[cells]
            offsets[c, start + cells, 0] = corner[won, 0] / stride - j[won].float()
            offsets[c, start + cells, 1] = corner[won, 1] / stride - i[won].float()
            heat[c, start + cells] = 1.0
            pos[c, start + cells] = True
        start += h * w
    return heat, offsets, pos


def foreground_targets(gt_boxes: Tensor, gt_labels: Tensor, num_classes: int, size: tuple[int, int],
                       stride: int) -> tuple[Tensor, Tensor]:
    """Per-class box-interior map of one image at ``stride`` and the positive weights.

    Returns FloatTensor[C, H, W] map (1 inside a box of that class) and FloatTensor[C, H, W]
    weights (1 / area in pixels of the smallest box of that class covering the cell; 0
    outside). Box ``b`` covers rows ``int(y1 / s) .. int(y2 / s)`` and columns ``int(x1 / s) ..
    int(x2 / s)``, inclusive, clipped to the map.
    """
    h, w = size
    device = gt_boxes.device
    weights = torch.zeros(num_classes, h, w, device=device)
    if gt_boxes.shape[0] == 0:
        return weights.clone(), weights
    gts = gt_boxes.float()
    x1 = (gts[:, 0] / stride).floor().clamp(0, w - 1)
    y1 = (gts[:, 1] / stride).floor().clamp(0, h - 1)
    x2 = (gts[:, 2] / stride).floor().clamp(0, w - 1)
    y2 = (gts[:, 3] / stride).floor().clamp(0, h - 1)
    cols = torch.arange(w, device=device, dtype=torch.float32)
    rows = torch.arange(h, device=device, dtype=torch.float32)
    inside = (((rows[None, :, None] >= y1[:, None, None]) & (rows[None, :, None] <= y2[:, None, None]))
              & ((cols[None, None, :] >= x1[:, None, None]) & (cols[None, None, :] <= x2[:, None, None])))
    area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])).clamp(min=1.0)  # decision 3
    per_box = (inside.float() / area[:, None, None]).flatten(1)  # [G, H*W]
    index = gt_labels.long()[:, None].expand(-1, h * w)
    weights = weights.flatten(1).scatter_reduce(0, index, per_box, reduce="amax").reshape(num_classes, h, w)
    return (weights > 0).float(), weights  # the smallest box of a class sets its cells' weight


def foreground_trunk(feat: int, groups: int, num_classes: int, shared_stacked_convs: int
                     ) -> tuple[nn.Sequential, nn.Conv2d, nn.Sequential]:
    """The V2 verification trunk shared by RepPoints V2 and Dense RepPoints V2: ``shared_convs``
    (``shared_stacked_convs`` x [3x3 conv, normal(0.01), GN, ReLU]), the foreground output
    ``sem_out`` (1x1 conv -> C logits; its init is the caller's) and the ``sem_embed``
    embedding (1x1 conv, GN, ReLU, Kaiming), created in this order."""
    shared: list[nn.Module] = []
    for _ in range(shared_stacked_convs):
        conv = nn.Conv2d(feat, feat, 3, padding=1, bias=False)
        nn.init.normal_(conv.weight, std=0.01)
        shared += [conv, build_norm("gn", feat, groups), nn.ReLU(inplace=True)]
    return nn.Sequential(*shared), nn.Conv2d(feat, num_classes, 1), conv_gn_relu(feat, feat, 1, groups)


class RepPointsV2Head(RepPointsHead):
    """RepPoints V2 dense head (module doc). Arguments of :class:`RepPointsHead`, plus:

    Args:
        shared_stacked_convs: 3x3 convs of the shared verification trunk.
        corner_dim: channels of the corner-pooled maps; ``first_kernel_size``,
            ``kernel_size``: kernels of the corner-pool blocks (3, 1).
        gaussian_iou: min overlap of CornerNet's radius (0.7).
        loss_heatmap_weight, loss_heatmap_alpha, loss_heatmap_gamma: Gaussian focal loss.
        loss_offset_weight, loss_offset_beta: corner offset SmoothL1.
        loss_sem_weight, loss_sem_gamma, loss_sem_alpha: foreground loss.
        corner_snapping: joint inference (module doc).
    """

    dcn_extra_in_channels = CORNER_CHANNELS

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        shared_stacked_convs: int = 1,
        corner_dim: int = 64,
        first_kernel_size: int = 3,
        kernel_size: int = 1,
        gaussian_iou: float = 0.7,
        loss_heatmap_weight: float = 0.25,
        loss_heatmap_alpha: float = 2.0,
        loss_heatmap_gamma: float = 4.0,
        loss_offset_weight: float = 1.0,
        loss_offset_beta: float = 1.0 / 9,
        loss_sem_weight: float = 0.1,
        loss_sem_gamma: float = 2.0,
        loss_sem_alpha: float = 0.25,
        corner_snapping: bool = True,
        **v1_kwargs,
    ) -> None:
        super().__init__(num_classes, in_channels, **v1_kwargs)
        if self.norm is None:
            raise ValueError("RepPointsV2Head needs GroupNorm (norm='gn'), as its corner-pool blocks do")
        feat, groups = self.feat_channels, self.norm_groups
        self.gaussian_iou = float(gaussian_iou)
        self.loss_heatmap_weight = float(loss_heatmap_weight)
        self.loss_heatmap_alpha = float(loss_heatmap_alpha)
        self.loss_heatmap_gamma = float(loss_heatmap_gamma)
        self.loss_offset_weight = float(loss_offset_weight)
        self.loss_offset_beta = float(loss_offset_beta)
        self.loss_sem_weight = float(loss_sem_weight)
        self.loss_sem_gamma = float(loss_sem_gamma)
        self.loss_sem_alpha = float(loss_sem_alpha)
        self.corner_snapping = bool(corner_snapping)

        self.shared_convs, self.sem_out, self.sem_embed = foreground_trunk(feat, groups, num_classes,
                                                                          shared_stacked_convs)
        self.tl_pool = CornerPoolBlock(feat, ("top", "left"), corner_dim, first_kernel_size, kernel_size, groups)
        self.br_pool = CornerPoolBlock(feat, ("bottom", "right"), corner_dim, first_kernel_size, kernel_size, groups)
        self.tl_score = nn.Conv2d(feat, 1, 3, padding=1)
        self.tl_offset = nn.Conv2d(feat, 2, 3, padding=1)
        self.br_score = nn.Conv2d(feat, 1, 3, padding=1)
        self.br_offset = nn.Conv2d(feat, 2, 3, padding=1)
        prior = -math.log((1 - 0.01) / 0.01)
        for conv in (self.sem_out, self.tl_score, self.tl_offset, self.br_score, self.br_offset):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        for conv in (self.sem_out, self.tl_score, self.br_score):
            nn.init.constant_(conv.bias, prior)

    # ------------------------------------------------------------------ forward
    def forward_single(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        """One level -> ``(cls, pts_init, pts_refine, hm_scores, hm_offsets, sem_scores)`` (module doc)."""
        cls_feat = self.cls_convs(x)
        pts_feat = self.reg_convs(x)
        shared = self.shared_convs(pts_feat)
        sem_scores = self.sem_out(shared)
        sem_feat = self.sem_embed(shared)
        cls_feat = cls_feat + sem_feat
        pts_feat = pts_feat + sem_feat
        hem_feat = shared + sem_feat
        tl, br = self.tl_pool(hem_feat), self.br_pool(hem_feat)
        hm_scores = torch.cat([self.tl_score(tl), self.br_score(br)], dim=1)
        hm_offsets = torch.cat([self.tl_offset(tl), self.br_offset(br)], dim=1)
        pts_init = self.pts_init_out(F.relu(self.pts_init_conv(pts_feat)))
        g = self.gradient_mul
        offset = (1 - g) * pts_init.detach() + g * pts_init - self.dcn_base_offset.to(pts_init.dtype)
        corner_maps = torch.cat([hm_scores, hm_offsets], dim=1)
        cls_in = torch.cat([cls_feat, corner_maps], dim=1)
        pts_in = torch.cat([pts_feat, corner_maps], dim=1)
        cls_out = self.cls_out(F.relu(self._dcn(cls_in, offset, self.cls_dcn_weight)))
        pts_delta = self.pts_refine_out(F.relu(self._dcn(pts_in, offset, self.pts_refine_dcn_weight)))
        return cls_out, pts_init, pts_delta + pts_init.detach(), hm_scores, hm_offsets, sem_scores

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], ...]:  # type: ignore[override]
        """Pyramid -> six per-level lists (see :meth:`forward_single`)."""
        if len(features) != len(self.point_strides):
            raise ValueError(f"expected {len(self.point_strides)} pyramid levels, got {len(features)}")
        outs = [self.forward_single(x) for x in features]
        return tuple([o[k] for o in outs] for k in range(6))

    # ------------------------------------------------------------------ training
    def verification_loss(self, hm_scores: Sequence[Tensor], hm_offsets: Sequence[Tensor],
                          sem_scores: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                          gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """``loss_heatmap``, ``loss_offset`` and ``loss_sem`` of a batch (module doc)."""
        device = hm_scores[0].device
        featmap_sizes = [tuple(s.shape[-2:]) for s in hm_scores]
        priors = self.point_generator.grid_points(featmap_sizes, device)
        b = hm_scores[0].shape[0]
        heat_pred = torch.cat([s.float().flatten(2) for s in hm_scores], dim=2)  # [B, 2, M]
        off_pred = torch.cat([o.float().flatten(2) for o in hm_offsets], dim=2)  # [B, 4, M]
        off_pred = off_pred.reshape(b, 2, 2, -1).permute(0, 1, 3, 2)  # [B, corner, M, (x, y)]
        targets = [corner_targets(priors, featmap_sizes, gt_boxes[i].to(device), self.gaussian_iou)
                   for i in range(b)]
        heat_t = torch.stack([t[0] for t in targets])  # [B, 2, M]
        off_t = torch.stack([t[1] for t in targets])  # [B, 2, M, 2]
        pos = torch.stack([t[2] for t in targets])  # [B, 2, M]
        loss_heat, loss_off = heat_pred.new_zeros(()), heat_pred.new_zeros(())
        for c in range(2):
            num_pos = pos[:, c].sum().clamp(min=1)
            loss_heat = loss_heat + gaussian_focal_loss(heat_pred[:, c], heat_t[:, c], self.loss_heatmap_alpha,
                                                        self.loss_heatmap_gamma, avg_factor=num_pos)
            sel = pos[:, c]
            loss_off = loss_off + smooth_l1_loss(off_pred[:, c][sel], off_t[:, c][sel], self.loss_offset_beta,
                                                 reduction="sum") / num_pos
        # foreground verification, targets at the first level's stride, nearest-resized per level
        first = featmap_sizes[0]
        maps, weights = zip(*[foreground_targets(gt_boxes[i].to(device), gt_labels[i].to(device),
                                                 self.num_classes, first, self.point_strides[0]) for i in range(b)])
        maps, weights = torch.stack(maps), torch.stack(weights)  # [B, C, H0, W0]
        sem_t, sem_w, sem_p = [], [], []
        for scores in sem_scores:
            size = tuple(scores.shape[-2:])
            sem_t.append(F.interpolate(maps, size=size, mode="nearest").flatten(2))
            sem_w.append(F.interpolate(weights, size=size, mode="nearest").flatten(2))
            sem_p.append(scores.float().flatten(2))
        sem_t_all = torch.cat(sem_t, dim=2)
        loss_sem = separate_focal_loss(torch.cat(sem_p, dim=2), sem_t_all, torch.cat(sem_w, dim=2),
                                       avg_factor=sem_t_all.sum(), gamma=self.loss_sem_gamma,
                                       alpha=self.loss_sem_alpha)
        # a loss of zero positives stays connected to the graph
        loss_off = loss_off + 0.0 * off_pred.sum()
        return {
            "loss_heatmap": self.loss_heatmap_weight * loss_heat / 2,
            "loss_offset": self.loss_offset_weight * loss_off / 2,
            "loss_sem": self.loss_sem_weight * loss_sem,
        }

    def forward_train(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                      gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                      gt_ignore: Sequence[Tensor | None] | None = None) -> dict[str, Tensor]:
        cls, pts_init, pts_refine, hm_scores, hm_offsets, sem_scores = self(features)
        losses = self.loss(cls, pts_init, pts_refine, image_sizes, gt_boxes, gt_labels, gt_ignore)
        losses.update(self.verification_loss(hm_scores, hm_offsets, sem_scores, gt_boxes, gt_labels))
        return losses

    # ------------------------------------------------------------------ inference
    def snap_to_corners(self, level: int, boxes: Tensor, limits: Tensor, hm_scores: Sequence[Tensor],
                        hm_offsets: Sequence[Tensor]) -> Tensor:
        """Joint inference of one level's boxes FloatTensor[B, k, 4] (input pixels): P4/P5 boxes
        snapped with the P3 corner maps, P6/P7 with the P4 maps (module doc); ``limits``
        FloatTensor[B, 4] ``(w, h, w, h)`` clamps the result."""
        if level == 0:
            return boxes
        src = (level - 1) // 2
        stride = float(self.point_strides[src])
        heat = hm_scores[src].float().sigmoid()  # [B, 2, H, W]
        b, _, h, w = heat.shape
        if h < 2 or w < 2:
            return boxes  # decision 4
        _, argmax = F.max_pool2d(heat, 2, stride=1, return_indices=True)  # [B, 2, H-1, W-1], flat in H*W
        offsets = hm_offsets[src].float().reshape(b, 4, h * w)
        out = boxes.clone()
        for c in range(2):
            x, y = boxes[..., 2 * c], boxes[..., 2 * c + 1]
            j = torch.floor(x / stride).clamp(0, w - 2).long()
            i = torch.floor(y / stride).clamp(0, h - 2).long()
            flat = argmax[:, c].reshape(b, -1).gather(1, i * (w - 1) + j)  # [B, k]
            cy, cx = flat // w, flat % w
            ox = offsets[:, 2 * c].gather(1, flat)
            oy = offsets[:, 2 * c + 1].gather(1, flat)
            out[..., 2 * c] = (cx.float() + ox) * stride
            out[..., 2 * c + 1] = (cy.float() + oy) * stride
        out = torch.cat([torch.minimum(out[..., :2], out[..., 2:]), torch.maximum(out[..., :2], out[..., 2:])], -1)
        return torch.minimum(out.clamp(min=0), limits[:, None, :])

    @torch.no_grad()
    def simple_test(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
                    ) -> list[dict[str, Tensor]]:
        cls, _, pts_refine, hm_scores, hm_offsets, _ = self(features)
        refiner = None
        if self.corner_snapping:
            def refiner(level: int, boxes: Tensor, limits: Tensor) -> Tensor:
                return self.snap_to_corners(level, boxes, limits, hm_scores, hm_offsets)
        return self.get_bboxes(cls, pts_refine, image_sizes, box_refiner=refiner)
