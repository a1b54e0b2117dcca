"""Dense RepPoints V1 head (Yang et al. 2020, "Dense RepPoints"), spec reppoints.md §3.1-§3.5:
boxes and instance masks from 729 points per cell.

Per pyramid level (weights shared over P3-P7, strides 8..128), with ``x`` FloatTensor[B, C_in,
H, W], ``F`` = ``feat_channels``, ``N`` = ``num_points`` (729 = 27 x 27):

1. the V1 towers (:class:`~models.reppoints.reppoints_head.RepPointsHead`): ``cls_feat``,
   ``pts_feat`` [B, F, H, W];
2. init points ``p_init = conv1x1(ReLU(conv3x3(pts_feat))) + base`` [B, 2N, H, W], interleaved
   **(x, y)** pairs in stride units from the cell's prior point, where ``base`` is the regular
   27 x 27 grid over ``[-point_base_scale / 2, +point_base_scale / 2]^2`` (row-major: point
   ``k = 27 r + c`` starts at ``(lin[c], lin[r])``); ``p' = (1 - g) stopgrad(p_init) + g p_init``
   with ``g = gradient_mul`` (0.1);
3. classification by group sampling: the N points form ``num_group`` (9) consecutive groups;
   ``cls_feat`` is sampled bilinearly (``grid_sample``, ``align_corners=True``, border padding)
   at the **first point of each group** of ``p'`` -> [B, 9 F, H, W] (group-major channels) ->
   1x1 conv (``point_feat_channels``) -> ReLU -> 1x1 conv -> C logits (prior 0.01);
4. refinement by an offset field: ``field = conv1x1(ReLU(conv3x3(pts_feat)))`` [B, 2N, H, W];
   point k samples **its own** 2-channel slice ``field[2k:2k+2]`` at its own location ``p'_k``
   (same sampling) and ``p_refine = sampled + p'``;
5. point mask scores: every level's FPN map goes through ``stacked_mask_convs`` (7) x [3x3 conv,
   GN, ReLU] (shared over levels); each is bilinearly resized to P3's size and added to P3's;
   then a 3x3 conv + ReLU (``mask_fuse``), a 3x3 conv + ReLU and a 1x1 conv give
   ``num_score_group`` (121 = 11 x 11) position-sensitive logit maps ``score_maps`` [B, 121, H3,
   W3] at stride 8. A point's logit is read on channel ``g = 11 floor(11 ny) + floor(11 nx)``,
   with ``(nx, ny)`` its position inside the minmax box of its (detached) point set, bilinearly at
   its image position / 8 (:func:`point_score_logits`). Training reads it at the init points
   ``p'`` of the refine positives, inference at the refined points. No gradient reaches the
   points from this loss.

Targets (per image, as in V1 with ``transform_method='minmax'``): PointAssigner over the prior
points (init) and ATSS (topk 9) over the minmax pseudo boxes of the detached init points
(refine; classification labels). Each assigned gt's point set comes from distance-transform
sampling (DTS, :func:`~models.dense_reppoints.distance_sampling.sample_boundary_points`: 56 x 56
crop, contour band of 2 px, 729 jittered samples), drawn anew for each stage at every
iteration from the gt masks; a gt whose crop has no contour is left out of the point loss. The
point-score label of a point is the gt mask's value at the pixel under the init point.

Losses (keys ``loss_cls``, ``loss_bbox_init``, ``loss_bbox_refine``, ``loss_pts_init``,
``loss_pts_refine``, ``loss_mask_score``), summed over levels, normalised by the global positive
counts (``sum_i max(n_pos_i, 1)``): focal (2, 0.25) x 1.0; minmax pseudo boxes against the gt box,
both divided by ``4 * stride``, SmoothL1 (beta 0.11) x 0.5 / 1.0 or GIoU x 1.0 / 2.0; Chamfer
(:func:`~models.dense_reppoints.chamfer_loss.chamfer_loss_2d`, both point sets divided by ``4 * stride``)
x 0.5 init / 1.0 refine, summed over positives and divided by their number; binary
cross-entropy on the point logits x 1.0, mean over the 729 points and over refine positives.

Inference: the class scores of a cell are multiplied by its mask score, the mean of its point
probabilities above 0.5 (``sum(p [p > 0.5]) / (count + 1e-6)``); per level the ``nms_pre`` (1000)
best cells; the refined points clamped to the image and their minmax box; ``score_thr``
(0.05), class-wise NMS at ``nms_iou`` (0.6, points and point scores kept aligned with their
boxes) and ``max_per_img`` (100). Masks: the mask step
(Delaunay triangulation of the points plus 4 corner anchors of score 0, linear interpolation
of the point probabilities, > 0.5), by default at every pixel of each kept box in the original
image, all detections at once
(:func:`~models.dense_reppoints.mask_from_points.points_to_full_masks`, in the evaluation), or on
a ``mask_out_size`` grid over each box
(:func:`~models.dense_reppoints.mask_from_points.points_to_box_score_maps`), pasted by the
evaluation (decision 5).

Decisions on the spec's flags and open points:

1. **Group index spill** (§3.2 [FLAG]): ``floor(11 n)`` is clamped to ``0..10`` per axis, so a
   point on the right / bottom edge of its box reads the last column / row of groups instead of
   spilling into the next row (or past channel 120, where the reference relies on border
   padding).
2. **P3 alignment of the score maps** (§3.2): a point at image position ``(x, y)`` is read at
   ``(x / 8, y / 8)`` on the stride-8 maps (cell ``(i, j)`` sits at ``(8 j, 8 i)``), border-clamped.
   The reference maps each level's cell grid onto P3 through ``(w_level - 1)``, which aligns
   only approximately; we use the exact position.
3. **Point-score labels** are read at the pixel ``floor(x), floor(y)`` under the init point (our
   pixel ``u`` covers ``[u, u + 1)``, as in the DTS module; the reference rounds, which is the
   same lookup under its integer-centre convention); points outside the image get label 0.
4. The mask fuse conv has a ReLU (mmcv ``ConvModule`` without norm keeps its activation).
5. **Mask output** (``mask_resolution``): ``"full"`` (default, the reference's
   ``get_seg_masks``) returns each detection's scored points (``mask_points``,
   ``mask_point_scores``) and the evaluation interpolates them at every pixel of the box in
   the original image (:func:`~models.dense_reppoints.mask_from_points.points_to_full_masks`,
   batched); ``"box_grid"`` returns the interpolated point probabilities on a
   ``mask_out_size`` (56) grid over the box, pasted bilinearly by the evaluation. On the
   trained CPU Dense V2 the grid cost 0.11 mask AP on minival, so full resolution is the
   default (README, Dense RepPoints section).
6. Init: normal(std 0.01) for every conv (biases 0, the cls output's bias at prior 0.01), as
   the V1 head.
7. The V1 head's decisions 1 (valid cells inside the unpadded image), 2 ("+1" GIoU in the GIoU
   presets), 6 (ignore regions) and 9 (float32 point and loss arithmetic) apply.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.reppoints.reppoints_head import PointTargets, RepPointsHead, points_to_boxes
from models.common.layers.nms import batched_nms_per_image
from models.common.layers.norm import build_norm
from models.dense_reppoints.chamfer_loss import chamfer_loss_2d
from models.reppoints.focal_loss import sigmoid_focal_loss
from models.dense_reppoints.distance_sampling import sample_boundary_points
from models.dense_reppoints.mask_from_points import points_to_box_score_maps


def grid_offsets(num_points: int, half_extent: float) -> Tensor:
    """The regular ``k x k`` base grid (``k^2 = num_points``) over ``[-half_extent, half_extent]^2``:
    FloatTensor[2 num_points], interleaved (x, y), row-major (point ``k r + c`` at ``(lin[c], lin[r])``)."""
    k = int(round(math.sqrt(num_points)))
    lin = torch.linspace(-half_extent, half_extent, k, device="cpu") if k > 1 else torch.zeros(1, device="cpu")
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).reshape(-1)


def sample_at_points(feat: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear samples of ``feat`` FloatTensor[B, C, H, W] at cell + offset.

    ``offsets``: FloatTensor[B, K, 2, H, W] (x, y) in cells (stride units) from each cell; returns
    FloatTensor[B, C, K, H, W]. ``grid_sample`` with ``align_corners=True`` (cell ``j`` at
    normalised ``-1 + 2 j / (W - 1)``) and border padding."""
    b, c, h, w = feat.shape
    k = offsets.shape[1]
    xs = torch.arange(w, dtype=offsets.dtype, device=offsets.device)[None, None, None, :] + offsets[:, :, 0]
    ys = torch.arange(h, dtype=offsets.dtype, device=offsets.device)[None, None, :, None] + offsets[:, :, 1]
    grid = torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], dim=-1)  # [B, K, H, W, 2]
    out = F.grid_sample(feat, grid.reshape(b, k * h, w, 2).to(feat.dtype), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(b, c, k, h, w)


def point_score_logits(score_maps: Tensor, image_ids: Tensor, points: Tensor, stride: float) -> Tensor:
    """Position-sensitive point logits (module doc, step 5 and decisions 1-2).

    Args:
        score_maps: FloatTensor[B, G, H, W], ``G = g^2`` group maps at ``stride``.
        image_ids: LongTensor[P] image of each point set.
        points: FloatTensor[P, N, 2] (x, y) image pixels (used without gradient).
    Returns:
        FloatTensor[P, N] logits (differentiable w.r.t. ``score_maps``).
    """
    b, g2, h, w = score_maps.shape
    g = int(round(math.sqrt(g2)))
    pts = points.detach().float()
    if pts.shape[0] == 0:
        return score_maps.new_zeros(pts.shape[:2]) + 0.0 * score_maps.sum()
    lo = pts.amin(dim=1, keepdim=True)
    span = (pts.amax(dim=1, keepdim=True) - lo).clamp(min=1e-6)
    cell = torch.floor((pts - lo) / span * g).clamp(0, g - 1).long()  # decision 1
    chan = cell[..., 1] * g + cell[..., 0]  # [P, N]
    u = (pts[..., 0] / stride).clamp(0, w - 1)
    v = (pts[..., 1] / stride).clamp(0, h - 1)
    u0, v0 = u.floor(), v.floor()
    du, dv = u - u0, v - v0
    u0, v0 = u0.long(), v0.long()
    u1, v1 = (u0 + 1).clamp(max=w - 1), (v0 + 1).clamp(max=h - 1)
    flat = score_maps.float().reshape(-1)  # [B*G*H*W]
    base = (image_ids[:, None] * g2 + chan) * (h * w)

    def at(vv: Tensor, uu: Tensor) -> Tensor:
        return flat[base + vv * w + uu]

    return ((1 - dv) * ((1 - du) * at(v0, u0) + du * at(v0, u1))
            + dv * ((1 - du) * at(v1, u0) + du * at(v1, u1)))


def mask_score_of_points(probs: Tensor, thr: float = 0.5, eps: float = 1e-6) -> Tensor:
    """Mean of the point probabilities above ``thr`` over the last dim (0 when none is)."""
    above = (probs > thr).to(probs.dtype)
    return (probs * above).sum(-1) / (above.sum(-1) + eps)


@dataclass
class DenseOutputs:
    """Per-level head outputs (lists over levels) plus the stride-8 point-score maps."""

    cls_scores: list[Tensor]  # [B, C, H, W]
    pts_init: list[Tensor]  # [B, 2N, H, W] (x, y) stride units
    pts_refine: list[Tensor]  # [B, 2N, H, W]
    score_maps: Tensor  # [B, G, H3, W3] logits
    # Dense V2 only, per level: contour logits [B, 1, H, W], contour offsets [B, 2, H, W], foreground logits [B, C, H, W]
    cont_scores: list[Tensor] | None = None
    cont_offsets: list[Tensor] | None = None
    sem_scores: list[Tensor] | None = None


class DenseRepPointsHead(RepPointsHead):
    """Dense RepPoints V1 head (module doc). Arguments of :class:`RepPointsHead` (``num_points``
    729, ``transform_method`` minmax; its ``loss_init_weight`` / ``loss_refine_weight`` weigh the
    pseudo-box losses), plus:

    Args:
        num_group: point groups sampled for classification (9).
        num_score_group: position-sensitive score maps (121 = 11 x 11).
        stacked_mask_convs: convs of the mask-score trunk (7).
        mask_size, dist_sample_thr: DTS crop size (56) and band half-width (2, crop pixels).
        loss_chamfer_init_weight, loss_chamfer_refine_weight: Chamfer weights (0.5 / 1.0).
        loss_mask_score_weight: point-score BCE weight (1.0).
        pts_score_thr: point probability threshold of the mask score and the masks (0.5).
        mask_out_size: side of the box grid the masks are returned on (56).
        mask_resolution: ``"full"`` (the points, for masks at every image pixel of the box, as
            the reference) or ``"box_grid"`` (masks on the ``mask_out_size`` grid); module doc,
            decision 5.
        seed: seed of the DTS sampler (None: drawn from torch's generator, so the run's seed
            fixes it).
    """

    #: channels appended to cls_feat and pts_feat before the group sampling / field conv (V2: 3)
    extra_in_channels: int = 0

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        num_points: int = 729,
        num_group: int = 9,
        num_score_group: int = 121,
        stacked_mask_convs: int = 7,
        mask_size: int = 56,
        dist_sample_thr: float = 2.0,
        loss_chamfer_init_weight: float = 0.5,
        loss_chamfer_refine_weight: float = 1.0,
        loss_mask_score_weight: float = 1.0,
        pts_score_thr: float = 0.5,
        mask_out_size: int = 56,
        mask_resolution: str = "full",
        transform_method: str = "minmax",
        nms_iou: float = 0.6,
        **v1_kwargs,
    ) -> None:
        if num_points % num_group != 0:
            raise ValueError(f"num_points ({num_points}) must be a multiple of num_group ({num_group})")
        g = int(round(math.sqrt(num_score_group)))
        if g * g != num_score_group:
            raise ValueError(f"num_score_group must be a square, got {num_score_group}")
        self.num_group = int(num_group)
        self.num_score_group = int(num_score_group)
        self.stacked_mask_convs = int(stacked_mask_convs)
        super().__init__(num_classes, in_channels, num_points=num_points, transform_method=transform_method,
                         nms_iou=nms_iou, **v1_kwargs)
        self.mask_size = int(mask_size)
        self.dist_sample_thr = float(dist_sample_thr)
        self.loss_chamfer_init_weight = float(loss_chamfer_init_weight)
        self.loss_chamfer_refine_weight = float(loss_chamfer_refine_weight)
        self.loss_mask_score_weight = float(loss_mask_score_weight)
        self.pts_score_thr = float(pts_score_thr)
        self.mask_out_size = int(mask_out_size)
        if mask_resolution not in ("box_grid", "full"):
            raise ValueError(f"mask_resolution must be 'box_grid' or 'full', got {mask_resolution!r}")
        self.mask_resolution = mask_resolution

    def _build_point_layers(self) -> None:
        feat, pfeat, n = self.feat_channels, self.point_feat_channels, self.num_points
        ext = feat + self.extra_in_channels
        self.pts_init_conv = nn.Conv2d(feat, pfeat, 3, padding=1)
        self.pts_init_out = nn.Conv2d(pfeat, 2 * n, 1)
        self.cls_group_conv = nn.Conv2d(self.num_group * ext, pfeat, 1)
        self.cls_out = nn.Conv2d(pfeat, self.num_classes, 1)
        self.pts_refine_conv = nn.Conv2d(ext, pfeat, 3, padding=1)
        self.pts_refine_out = nn.Conv2d(pfeat, 2 * n, 1)
        layers: list[nn.Module] = []
        for i in range(self.stacked_mask_convs):
            layers += [nn.Conv2d(self.in_channels if i == 0 else feat, feat, 3, padding=1, bias=self.norm is None)]
            if self.norm is not None:
                layers.append(build_norm(self.norm, feat, self.norm_groups))
            layers.append(nn.ReLU(inplace=True))
        self.mask_convs = nn.Sequential(*layers)
        self.mask_fuse_conv = nn.Conv2d(feat, feat, 3, padding=1)
        self.mask_score_conv = nn.Conv2d(feat, pfeat, 3, padding=1)
        self.mask_score_out = nn.Conv2d(pfeat, self.num_score_group, 1)
        self.register_parameter("moment_transfer", None)
        self.register_buffer("points_base", grid_offsets(n, self.point_base_scale / 2).reshape(1, -1, 1, 1),
                             persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - 0.01) / 0.01))

    # ------------------------------------------------------------------ forward
    def _points_and_scores(self, cls_feat: Tensor, pts_feat: Tensor, pts_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 2-4 from the towers' outputs: ``pts_feat`` feeds the init points, ``cls_feat``
        and ``pts_in`` (``pts_feat`` plus any extra channels) the group sampling and the field."""
        b, _, h, w = pts_feat.shape
        n, ng = self.num_points, self.num_group
        pts_init = self.pts_init_out(F.relu(self.pts_init_conv(pts_feat))) + self.points_base.to(pts_feat.dtype)
        g = self.gradient_mul
        p_mul = ((1 - g) * pts_init.detach() + g * pts_init).float()
        p5 = p_mul.reshape(b, n, 2, h, w)
        group_first = p5[:, :: n // ng]  # [B, 9, 2, H, W]
        sampled = sample_at_points(cls_feat.float(), group_first)  # [B, C, 9, H, W]
        cls_in = sampled.permute(0, 2, 1, 3, 4).reshape(b, ng * cls_feat.shape[1], h, w).to(cls_feat.dtype)
        cls_out = self.cls_out(F.relu(self.cls_group_conv(cls_in)))
        field = self.pts_refine_out(F.relu(self.pts_refine_conv(pts_in))).float()  # [B, 2N, H, W]
        own = sample_at_points(field.reshape(b * n, 2, h, w), p5.reshape(b * n, 1, 2, h, w))  # [B*N, 2, 1, H, W]
        pts_refine = own.reshape(b, 2 * n, h, w) + p_mul
        return cls_out, pts_init, pts_refine

    def _score_maps(self, mask_feats: Sequence[Tensor]) -> Tensor:
        """Fused stride-8 trunk -> FloatTensor[B, G, H3, W3] point-score logits."""
        size = mask_feats[0].shape[-2:]
        fused = mask_feats[0]
        for m in mask_feats[1:]:
            fused = fused + F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        fused = F.relu(self.mask_fuse_conv(fused))
        return self.mask_score_out(F.relu(self.mask_score_conv(fused)))

    def forward(self, features: Sequence[Tensor]) -> DenseOutputs:  # type: ignore[override]
        if len(features) != len(self.point_strides):
            raise ValueError(f"expected {len(self.point_strides)} pyramid levels, got {len(features)}")
        cls, init, refine, mask_feats = [], [], [], []
        for x in features:
            cls_feat, pts_feat = self.cls_convs(x), self.reg_convs(x)
            c, pi, pr = self._points_and_scores(cls_feat, pts_feat, pts_feat)
            cls.append(c)
            init.append(pi)
            refine.append(pr)
            mask_feats.append(self.mask_convs(x))
        return DenseOutputs(cls, init, refine, self._score_maps(mask_feats))

    # ------------------------------------------------------------------ layout
    def _flatten_points(self, preds: Sequence[Tensor], priors: Sequence[Tensor]) -> Tensor:
        """Levels of [B, 2N, H, W] (x, y) stride units -> FloatTensor[B, M, N, 2] input pixels."""
        out = []
        for p, pri in zip(preds, priors):
            xy = p.permute(0, 2, 3, 1).reshape(p.shape[0], -1, self.num_points, 2).float()
            out.append(xy * pri[None, :, None, 2:3] + pri[None, :, None, :2])
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------ training
    def _dts_targets(self, gt_masks: Sequence[np.ndarray], gt_boxes: Sequence[Tensor], device: torch.device
                     ) -> tuple[list[Tensor], list[Tensor]]:
        """One DTS draw per gt: per image FloatTensor[G, N, 2] (zeros where no contour) and
        BoolTensor[G] (has a contour)."""
        pts_all, ok_all = [], []
        seed = int(torch.randint(0, 2 ** 31 - 1, (), device="cpu").item())  # the CPU generator
        rng = np.random.default_rng(seed)
        for masks, boxes in zip(gt_masks, gt_boxes):
            boxes_np = boxes.detach().cpu().numpy()
            pts = np.zeros((len(boxes_np), self.num_points, 2), np.float32)
            ok = np.zeros(len(boxes_np), bool)
            for k, box in enumerate(boxes_np):
                s = sample_boundary_points(masks[k], box, self.num_points, self.mask_size, self.dist_sample_thr, rng)
                if s is not None:
                    pts[k], ok[k] = s, True
            pts_all.append(torch.from_numpy(pts).to(device))
            ok_all.append(torch.from_numpy(ok).to(device))
        return pts_all, ok_all

    def _chamfer(self, pred: Tensor, bi: Tensor, mi: Tensor, gt_inds: Tensor, gt_pts: Sequence[Tensor],
                 gt_ok: Sequence[Tensor], norm: Tensor, weight: float, avg_factor: int) -> Tensor:
        """Chamfer loss of the positives (image ``bi``, cell ``mi``) against their gt's DTS points."""
        if bi.numel() == 0:
            return 0.0 * pred.sum()
        # per-image gt lists -> one [B, G_max, N, 2] table indexed by (image, gt)
        target = torch.nn.utils.rnn.pad_sequence(list(gt_pts), batch_first=True)[bi, gt_inds]
        valid = torch.nn.utils.rnn.pad_sequence(list(gt_ok), batch_first=True)[bi, gt_inds]
        scale = norm[mi][:, None, None]
        per = chamfer_loss_2d(pred[bi, mi] / scale, target / scale, valid=valid)
        return weight * per.sum() / avg_factor

    def _point_labels(self, gt_masks: Sequence[Tensor], bi: Tensor, gt_inds: Tensor, points: Tensor) -> Tensor:
        """FloatTensor[P, N]: the gt mask under each point (decision 3)."""
        labels = points.new_zeros(points.shape[:2])
        for b in bi.unique().tolist():
            sel = (bi == b).nonzero().squeeze(1)
            m = gt_masks[b]
            h, w = m.shape[-2:]
            x = points[sel, :, 0].floor().long()
            y = points[sel, :, 1].floor().long()
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            val = m[gt_inds[sel][:, None].expand_as(x), y.clamp(0, h - 1), x.clamp(0, w - 1)].float()
            labels[sel] = val * inside
        return labels

    def dense_loss(self, out: DenseOutputs, image_sizes: Sequence[tuple[int, int]], gt_boxes: Sequence[Tensor],
                   gt_labels: Sequence[Tensor], gt_masks: Sequence[Tensor],
                   gt_ignore: Sequence[Tensor | None] | None = None) -> tuple[dict[str, Tensor], PointTargets]:
        """The six losses of the module doc and the targets they used."""
        cls_scores = out.cls_scores
        device = cls_scores[0].device
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors_lvl = self.point_generator.grid_points(featmap_sizes, device)
        priors = torch.cat(priors_lvl)
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, self.num_classes) for c in cls_scores], 1)
        xy_init = self._flatten_points(out.pts_init, priors_lvl)  # [B, M, N, 2]
        xy_refine = self._flatten_points(out.pts_refine, priors_lvl)
        box_init = points_to_boxes(xy_init, self.transform_method)
        box_refine = points_to_boxes(xy_refine, self.transform_method)
        valid = self._valid(featmap_sizes, image_sizes, device)
        t = self.get_targets(priors, [p.shape[0] for p in priors_lvl], box_init.detach(), valid, gt_boxes,
                             gt_labels, gt_ignore)
        loss_cls = self.loss_cls_weight * sigmoid_focal_loss(
            cls.reshape(-1, self.num_classes), t.labels.reshape(-1), t.label_weights.reshape(-1),
            self.loss_cls_gamma, self.loss_cls_alpha, "mean", t.num_pos_refine)
        norm = priors[:, 2] * self.point_base_scale  # [M]
        bi, mi = t.init_pos.nonzero(as_tuple=True)
        br, mr = t.refine_pos.nonzero(as_tuple=True)
        losses = {
            "loss_cls": loss_cls,
            "loss_bbox_init": self._points_loss(box_init[bi, mi], t.init_gt[bi, mi], norm[mi], self.loss_init_weight,
                                                t.num_pos_init),
            "loss_bbox_refine": self._points_loss(box_refine[br, mr], t.refine_gt[br, mr], norm[mr],
                                                  self.loss_refine_weight, t.num_pos_refine),
        }
        masks_np = [m.detach().cpu().numpy() for m in gt_masks]
        for stage, (pred, b_, m_, inds, w, n) in {
            "init": (xy_init, bi, mi, t.init_gt_inds[bi, mi], self.loss_chamfer_init_weight, t.num_pos_init),
            "refine": (xy_refine, br, mr, t.refine_gt_inds[br, mr], self.loss_chamfer_refine_weight, t.num_pos_refine),
        }.items():
            gt_pts, gt_ok = self._dts_targets(masks_np, gt_boxes, device)  # a fresh draw per stage
            losses[f"loss_pts_{stage}"] = self._chamfer(pred, b_, m_, inds, gt_pts, gt_ok, norm, w, n)
        # point scores at the init points of the refine positives
        pts = xy_init[br, mr].detach()
        logits = point_score_logits(out.score_maps, br, pts, float(self.point_strides[0]))
        labels = self._point_labels(gt_masks, br, t.refine_gt_inds[br, mr], pts)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / self.num_points
        losses["loss_mask_score"] = self.loss_mask_score_weight * bce / t.num_pos_refine
        return losses, t

    def forward_train(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],  # type: ignore[override]
                      gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                      gt_ignore: Sequence[Tensor | None] | None = None,
                      gt_masks: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
        if gt_masks is None:
            raise ValueError("Dense RepPoints needs gt instance masks (set data.with_masks: true)")
        losses, _ = self.dense_loss(self(features), image_sizes, gt_boxes, gt_labels, gt_masks, gt_ignore)
        return losses

    # ------------------------------------------------------------------ inference
    def extra_points(self, out: DenseOutputs, level: Tensor, image_ids: Tensor, points: Tensor,
                     limits: Tensor) -> tuple[Tensor, Tensor] | None:
        """Points added to each detection's set before the mask step (Dense V2's contour
        snapping); None for V1."""
        return None

    @torch.no_grad()
    def get_detections(self, out: DenseOutputs, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` FloatTensor[K, 4], ``scores`` [K], ``labels`` [K], ``points``
        [K, N, 2] and ``point_scores`` [K, N], and for the masks (module doc, decision 5) either
        ``masks`` FloatTensor[K, 1, S, S] (point probabilities interpolated over the box, ``S =
        mask_out_size``; ``mask_resolution="box_grid"``) or ``mask_points`` [K, N', 2] and
        ``mask_point_scores`` [K, N'] (the points the mask is interpolated from, V2's snapped
        contour points included; ``"full"``)."""
        cls_scores = out.cls_scores
        device = cls_scores[0].device
        b = cls_scores[0].shape[0]
        n = self.num_points
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors_lvl = self.point_generator.grid_points(featmap_sizes, device)
        valid_lvl = [torch.stack(f) for f in zip(*[self.point_generator.valid_flags(featmap_sizes, s, device)
                                                   for s in image_sizes])]
        limits = torch.tensor([[w, h] for h, w in image_sizes], dtype=torch.float32, device=device)  # [B, 2]
        stride3 = float(self.point_strides[0])
        all_scores, all_pts, all_probs, all_levels = [], [], [], []
        img_rows = torch.arange(b, device=device)
        for level, (cls, pts, pri, valid) in enumerate(zip(cls_scores, out.pts_refine, priors_lvl, valid_lvl)):
            scores = cls.permute(0, 2, 3, 1).reshape(b, -1, self.num_classes).float().sigmoid()
            xy = self._flatten_points([pts], [pri])  # [B, HW, N, 2]
            hw = xy.shape[1]
            logits = point_score_logits(out.score_maps, img_rows.repeat_interleave(hw), xy.reshape(b * hw, n, 2),
                                        stride3)
            probs = logits.sigmoid().reshape(b, hw, n)
            scores = scores * mask_score_of_points(probs, self.pts_score_thr)[..., None] * valid[..., None]
            if 0 < self.nms_pre < hw:
                _, top = scores.max(dim=2).values.topk(self.nms_pre, dim=1)
            else:
                top = torch.arange(hw, device=device).expand(b, -1)
            all_scores.append(torch.gather(scores, 1, top[..., None].expand(-1, -1, self.num_classes)))
            xy = torch.gather(xy, 1, top[..., None, None].expand(-1, -1, n, 2))
            all_pts.append(torch.minimum(xy.clamp(min=0), limits[:, None, None, :]))
            all_probs.append(torch.gather(probs, 1, top[..., None].expand(-1, -1, n)))
            all_levels.append(torch.full(top.shape, level, dtype=torch.long, device=device))
        scores = torch.cat(all_scores, 1)
        pts = torch.cat(all_pts, 1)  # [B, K, N, 2]
        probs = torch.cat(all_probs, 1)
        levels = torch.cat(all_levels, 1)
        boxes = points_to_boxes(pts, "minmax")
        img, cell, label = (scores > self.score_thr).nonzero(as_tuple=True)
        keep, counts = batched_nms_per_image(boxes[img, cell], scores[img, cell, label], img * self.num_classes + label,
                                             img, b, self.nms_iou, self.max_per_img)
        img, cell, label = img[keep], cell[keep], label[keep]
        det_boxes, det_pts, det_probs = boxes[img, cell], pts[img, cell], probs[img, cell]
        mask_pts, mask_probs = det_pts, det_probs
        extra = self.extra_points(out, levels[img, cell], img, det_pts, limits[img])
        if extra is not None:
            mask_pts = torch.cat([det_pts, extra[0]], dim=1)
            mask_probs = torch.cat([det_probs, extra[1]], dim=1)
        det_scores = scores[img, cell, label]
        dets = [{"boxes": bx, "scores": sc, "labels": lb, "points": pt, "point_scores": ps}
                for bx, sc, lb, pt, ps in zip(det_boxes.split(counts), det_scores.split(counts),
                                              label.split(counts), det_pts.split(counts), det_probs.split(counts))]
        if self.mask_resolution == "full":
            for det, pt, ps in zip(dets, mask_pts.split(counts), mask_probs.split(counts)):
                det.update(mask_points=pt, mask_point_scores=ps)
        else:
            masks = points_to_box_score_maps(mask_pts, mask_probs, det_boxes, self.mask_out_size)[:, None]
            for det, mk in zip(dets, masks.split(counts)):
                det["masks"] = mk
        return dets

    def simple_test(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
                    ) -> list[dict[str, Tensor]]:
        return self.get_detections(self(features), image_sizes)
