"""RepPoints V1 head (Yang et al. 2019), spec reppoints.md §1 (head, point-set boxes,
targets, losses, inference), §4 (neck) and §8 (pitfalls).

Architecture (weights shared over the pyramid levels P3-P7, strides 8..128), per level:

- ``cls_convs`` / ``reg_convs``: ``stacked_convs`` x [3x3 conv (no bias with GN) -> GN -> ReLU];
- init points: ``reg_feat`` -> 3x3 conv (``point_feat_channels``, bias) -> ReLU -> 1x1 conv
  -> 2N channels (N = ``num_points`` = 9): offsets in **stride units** from the cell's prior
  point, as interleaved **(y, x)** pairs (torchvision / mmcv DCN offset layout);
  ``center_init``: nothing is added (points_init = 0);
- DCN offset ``(1 - g) * stopgrad(p_init) + g * p_init - dcn_base_offset`` with
  ``g = gradient_mul`` (0.1) and ``dcn_base_offset`` the regular 3x3 kernel grid (dy, dx) in
  row-major tap order, so the 3x3 DCNv1 (no mask, no bias; ``torchvision.ops.deform_conv2d``)
  samples exactly at the predicted points (on CPU computed by bilinear sampling + a matmul,
  :func:`deform_conv2d_sampled`, the same values, ~3x faster training iterations than with
  torchvision's CPU kernel; torchvision's kernel on CUDA);
- classification: DCN(``cls_feat``) -> ReLU -> 1x1 conv -> C sigmoid logits (bias prior 0.01);
- refinement: DCN(``reg_feat``, same offset) -> ReLU -> 1x1 conv -> 2N, added to
  ``stopgrad(p_init)``;
- init: every conv normal(std 0.01), biases 0 except the cls output.

Point set -> box (:func:`points_to_boxes`, points in (x, y)): ``minmax``, ``partial_minmax``
(first 4 points), ``moment`` (mean +- unbiased std * exp(lambda), lambda a learnable global
2-vector whose gradient is scaled by ``moment_mul`` = 0.01) and ``exact_minmax`` (point 0 =
(left, top), point 1 = (right, bottom); RPv2 repo).

Training targets, per image, over the cells whose prior point lies inside the image:

- init stage: :class:`~models.reppoints.point_assigner.PointAssigner` (scale 4, pos_num 1)
  over the prior points; positives regress the gt box with the pseudo box of the init points;
- refine stage: candidates are the pseudo boxes of the **detached** init points in input
  pixels, assigned by :class:`~models.common.task_modules.assigners.MaxIoUAssigner` (original V1:
  0.5 / 0.4, ``min_pos_iou`` 0, low-quality matching, every tie claimed) or
  :class:`~models.reppoints.atss_assigner.ATSSAssigner` (RPv2 repo: topk 9). The refine
  assignment gives the classification labels (background = C; ignored cells weight 0) and
  the refine regression positives.

Losses (keys ``loss_cls``, ``loss_pts_init``, ``loss_pts_refine``), summed over levels and
images: sigmoid focal (gamma 2, alpha 0.25) with ``avg_factor`` = refine positives; the
pseudo boxes and the gt boxes both divided by ``point_base_scale * stride`` (4 s, the stride
of the positive's own level) and compared by SmoothL1 (beta 0.11, summed over the 4
coordinates; weights 0.5 init / 1.0 refine) or GIoU (weights 1.0 / 2.0), each divided by its
stage's number of positives. Positive counts are ``sum over images of max(n_pos, 1)``.

Inference (mmdetection ``get_bboxes``): per level the ``nms_pre`` cells of highest max
sigmoid score, boxes from the **refined** points in input pixels clipped to the image
(``[0, w] x [0, h]``), then over all levels: ``score > score_thr`` per (cell, class),
class-wise NMS at ``nms_iou`` and the ``max_per_img`` best.

Decisions on the spec's flags and open points:

1. **Valid cells** (§1.3 [FLAG]; the RPv2 repo and mmdetection use the per-image
   ``pad_shape``): a cell is used when its prior point lies inside the image's *unpadded*
   size (``PointGenerator.valid_flags(..., image_size)``), in training (targets; other cells
   get label weight 0) and in inference (other cells are never reported). Our batches pad
   all images to the largest one, so the per-image pad shape is not known here; this makes
   training and inference see the same cells and keeps a gt from claiming a point outside
   its image.
2. **"+1" GIoU** (§1.4 [FLAG], §8.2): the ``giou_legacy`` argument. Presets: the GIoU preset
   (RPv2 repo "improved V1") replicates it (``true``, both scales, since it acts on boxes in
   ``4 * stride`` units and so behaves the same at both scales); the SmoothL1 preset does not
   use GIoU.
3. **Inverted exact_minmax boxes** (§1.2 [FLAG], §8.7): training uses the raw corners (as the
   RPv2 repo: the loss sees and corrects inverted boxes; IoUs of the refine assigner treat
   them as zero-area via the clamped intersection); at **inference** the two corners are
   re-ordered (min / max of points 0 and 1), so reported boxes always have x1 <= x2,
   y1 <= y2. This deviates from the RPv2 repo only for boxes that it would report inverted.
4. **Zero-IoU low-quality matches** of the original V1 refine assigner (MaxIoU with
   ``min_pos_iou = 0`` and ``gt_max_assign_all``): a gt that overlaps no candidate has best
   IoU 0 and would claim *every* candidate of IoU 0 (mmdetection's behaviour, possible early
   in training for gts smaller than a stride). With ``drop_zero_iou_matches`` (default, both
   presets) a MaxIoU refine positive whose IoU with its assigned gt is 0 becomes a negative.
   ATSS positives are left alone: their centre lies inside the gt, and at the start of
   training (collapsed exact_minmax boxes, IoU 0 everywhere, threshold 0) they are the only
   positives the classifier and the refinement get, as in the RPv2 repo.
5. **moment std**: the unbiased variance is floored at 1e-12 before the square root, so a
   collapsed point set (all points equal) gives a finite gradient instead of NaN; the value
   differs from ``torch.std`` only below 1e-6.
6. **Ignore regions**: passed to the refine assigner, which uses them only when its
   ``ignore_iof_thr`` enables them (off in both presets, as in the references).
7. **NMS IoU**: a test argument; 0.5 for the original V1 preset, 0.6 for the RPv2 preset.
   torchvision's NMS (no "+1"), identical to mmdetection's kernel (§1.5).
8. **Refine assigner per preset** (§1.3, §1.7): ``reppoints_moment_r50_fpn_gn_1x`` (original V1,
   SmoothL1, moment) uses MaxIoU 0.5 / 0.4 / min_pos 0; the ``reppoints_v1_*`` presets
   reproduce the RPv2 repo's "improved V1" configs and therefore use ATSS (topk 9) with
   exact_minmax. ``ATSSAssigner`` takes all candidates of a level with fewer
   than 9 cells (§8.7).
9. **Precision**: the DCNs, the point / box arithmetic and all losses run in float32 (also
   under autocast); detections are float32.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from models.common.layers.nms import batched_nms_per_image
from models.common.layers.norm import build_norm
from models.reppoints.focal_loss import sigmoid_focal_loss
from models.reppoints.giou_loss import giou_loss
from models.common.losses.smooth_l1 import smooth_l1_loss
from models.common.task_modules.assigners import MaxIoUAssigner
from models.reppoints.atss_assigner import ATSSAssigner, pairwise_iou
from models.reppoints.point_assigner import PointAssigner
from models.reppoints.point_generator import PointGenerator

TRANSFORMS = ("minmax", "partial_minmax", "moment", "exact_minmax")
BBOX_LOSSES = ("smooth_l1", "giou")


def deform_conv2d_sampled(x: Tensor, offset: Tensor, weight: Tensor, padding: int) -> Tensor:
    """DCNv1 (stride 1, dilation 1, one offset group, no bias) by bilinear sampling + matmul.

    Same result as ``torchvision.ops.deform_conv2d(x, offset, weight, padding=padding)`` for a
    ``k x k`` kernel with ``padding = k // 2`` (same-size output): tap ``t = r * k + c`` of
    output cell (i, j) reads ``x`` bilinearly at ``(i + r - padding + offset[2t], j + c - padding
    + offset[2t + 1])``, corners outside the map counting as 0 (``grid_sample`` with zero
    padding and ``align_corners=False`` on pixel coordinates). Used on CPU, where it is ~5x
    faster than torchvision's kernel (forward + backward, 64 channels, P3 of a batch of 8 at
    160 x 256; ~3x per CPU-scale training iteration); it keeps the ``[B, C * k * k, H * W]``
    samples in memory, so CUDA keeps torchvision's kernel.

    Args:
        x: FloatTensor[B, C, H, W]; offset: FloatTensor[B, 2 k^2, H, W] interleaved (dy, dx);
        weight: FloatTensor[C_out, C, k, k]; padding: ``k // 2``.
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    if weight.shape[-2] != k or padding != k // 2 or offset.shape[1] != 2 * k * k:
        raise ValueError("deform_conv2d_sampled: square kernel, padding k // 2 and one offset group only")
    base = torch.arange(k, dtype=x.dtype, device=x.device) - padding
    tap_dy = base.repeat_interleave(k)[:, None, None]  # [k2, 1, 1], row-major taps
    tap_dx = base.repeat(k)[:, None, None]
    off = offset.reshape(b, k * k, 2, h, w).to(x.dtype)
    ys = torch.arange(h, dtype=x.dtype, device=x.device)[:, None] + tap_dy + off[:, :, 0]  # [B, k2, H, W]
    xs = torch.arange(w, dtype=x.dtype, device=x.device)[None, :] + tap_dx + off[:, :, 1]
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], dim=-1).reshape(b, k * k * h, w, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, C, k2*H, W]
    out = weight.reshape(weight.shape[0], -1) @ samples.reshape(b, c * k * k, h * w)
    return out.reshape(b, -1, h, w)


def points_to_boxes(points: Tensor, transform: str, moment_transfer: Tensor | None = None) -> Tensor:
    """Pseudo boxes of point sets.

    Args:
        points: FloatTensor[..., N, 2], points in **(x, y)** order (any unit: pixels or
            stride units; every transform commutes with scaling and shifting).
        transform: one of :data:`TRANSFORMS` (module doc; spec §1.2).
        moment_transfer: ``moment`` only: FloatTensor[2] ``(lambda_w, lambda_h)``, the
            log scale of the half width / height relative to the std of the points (already
            gradient-scaled by the caller); None = zeros.

    Returns:
        FloatTensor[..., 4] xyxy. ``exact_minmax`` boxes may be inverted (x2 < x1).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
    n = points.shape[-2]
    x, y = points[..., 0], points[..., 1]
    if transform == "minmax" or transform == "partial_minmax":
        if transform == "partial_minmax":
            if n < 4:
                raise ValueError(f"partial_minmax needs >= 4 points, got {n}")
            x, y = x[..., :4], y[..., :4]
        return torch.stack([x.min(-1).values, y.min(-1).values, x.max(-1).values, y.max(-1).values], dim=-1)
    if transform == "exact_minmax":
        if n < 2:
            raise ValueError(f"exact_minmax needs >= 2 points, got {n}")
        return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    # moment
    if n < 2:
        raise ValueError(f"moment needs >= 2 points, got {n}")
    cx, cy = x.mean(-1), y.mean(-1)
    std_x = x.var(-1, unbiased=True).clamp(min=1e-12).sqrt()
    std_y = y.var(-1, unbiased=True).clamp(min=1e-12).sqrt()
    if moment_transfer is None:
        half_w, half_h = std_x, std_y
    else:
        half_w = std_x * torch.exp(moment_transfer[0])
        half_h = std_y * torch.exp(moment_transfer[1])
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


@dataclass
class PointTargets:
    """Training targets of a batch over the M cells of all levels (level after level).

    Attributes:
        labels: LongTensor[B, M] refine-stage class (``num_classes`` = background).
        label_weights: FloatTensor[B, M] 1 for refine positives and negatives, 0 for ignored
            and invalid cells.
        init_pos: BoolTensor[B, M] init-stage positives; ``init_gt``: FloatTensor[B, M, 4]
            their gt boxes (zeros elsewhere).
        refine_pos, refine_gt: the same for the refine stage.
        num_pos_init, num_pos_refine: sum over images of ``max(n_pos, 1)``.
        init_gt_inds, refine_gt_inds: LongTensor[B, M] index of the assigned gt within its
            image (-1 for non-positives); Dense RepPoints reads the gt's mask through it.
    """

    labels: Tensor
    label_weights: Tensor
    init_pos: Tensor
    init_gt: Tensor
    refine_pos: Tensor
    refine_gt: Tensor
    num_pos_init: int
    num_pos_refine: int
    init_gt_inds: Tensor
    refine_gt_inds: Tensor


class RepPointsHead(nn.Module):
    """RepPoints V1 dense head (module doc).

    Args:
        num_classes: foreground classes C (sigmoid outputs; labels 0..C-1).
        in_channels: channels of every pyramid level.
        feat_channels: width of the two towers.
        point_feat_channels: width of the init-points conv and of the two DCNs.
        stacked_convs: convs per tower.
        num_points: N, a square of an odd number (9 = 3x3 DCN kernel).
        gradient_mul: share of the gradient of the recognition / refine losses that reaches
            the init points through the DCN offsets.
        point_strides: stride of every pyramid level (P3-P7: 8..128).
        point_base_scale: the loss normaliser is ``point_base_scale * stride``; the init
            assigner's ``scale`` normally equals it.
        norm: ``"gn"`` or None for the tower convs; ``norm_groups``: GN groups.
        transform_method: one of :data:`TRANSFORMS`.
        moment_mul: gradient multiplier of the moment transfer (``moment`` only).
        init_assigner: :class:`PointAssigner`; ``refine_assigner``: :class:`MaxIoUAssigner`
            or :class:`ATSSAssigner`.
        drop_zero_iou_matches: MaxIoU refine positives of IoU 0 with their gt become
            negatives (module doc, decision 4; no effect with ATSS).
        loss_cls_gamma, loss_cls_alpha, loss_cls_weight: focal loss.
        loss_bbox: ``"smooth_l1"`` or ``"giou"`` (both stages).
        loss_bbox_beta: SmoothL1 beta; ``giou_legacy``: the RPv2 "+1" GIoU (decision 2).
        loss_init_weight, loss_refine_weight: weights of the two point losses.
        nms_pre, score_thr, nms_iou, max_per_img: inference (module doc).
    """

    #: channels appended to the tower features before the two DCNs (RepPoints V2: 6 corner maps)
    dcn_extra_in_channels: int = 0

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int = 256,
        point_feat_channels: int = 256,
        stacked_convs: int = 3,
        num_points: int = 9,
        gradient_mul: float = 0.1,
        point_strides: Sequence[int] = (8, 16, 32, 64, 128),
        point_base_scale: float = 4.0,
        norm: str | None = "gn",
        norm_groups: int = 32,
        transform_method: str = "moment",
        moment_mul: float = 0.01,
        init_assigner: PointAssigner | None = None,
        refine_assigner: MaxIoUAssigner | ATSSAssigner | None = None,
        drop_zero_iou_matches: bool = True,
        loss_cls_gamma: float = 2.0,
        loss_cls_alpha: float = 0.25,
        loss_cls_weight: float = 1.0,
        loss_bbox: str = "smooth_l1",
        loss_bbox_beta: float = 0.11,
        giou_legacy: bool = False,
        loss_init_weight: float = 0.5,
        loss_refine_weight: float = 1.0,
        nms_pre: int = 1000,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__()
        kernel = int(round(math.sqrt(num_points)))
        if kernel * kernel != num_points or kernel % 2 != 1:
            raise ValueError(f"num_points must be the square of an odd number (3x3 DCN: 9), got {num_points}")
        if transform_method not in TRANSFORMS:
            raise ValueError(f"unknown transform_method {transform_method!r}; expected one of {TRANSFORMS}")
        if loss_bbox not in BBOX_LOSSES:
            raise ValueError(f"unknown loss_bbox {loss_bbox!r}; expected one of {BBOX_LOSSES}")
        if not 0.0 <= gradient_mul <= 1.0:
            raise ValueError(f"gradient_mul must be in [0, 1], got {gradient_mul}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.point_feat_channels = int(point_feat_channels)
        self.num_points = int(num_points)
        self.dcn_kernel = kernel
        self.dcn_pad = kernel // 2
        self.gradient_mul = float(gradient_mul)
        self.point_strides = [int(s) for s in point_strides]
        self.point_base_scale = float(point_base_scale)
        self.transform_method = transform_method
        self.moment_mul = float(moment_mul)
        self.norm = norm
        self.norm_groups = int(norm_groups)
        self.point_generator = PointGenerator(self.point_strides)
        self.init_assigner = init_assigner if init_assigner is not None else PointAssigner(4.0, 1)
        self.refine_assigner = refine_assigner if refine_assigner is not None else MaxIoUAssigner(0.5, 0.4, 0.0)
        if not isinstance(self.refine_assigner, (MaxIoUAssigner, ATSSAssigner)):
            raise TypeError(f"refine_assigner must be a MaxIoUAssigner or an ATSSAssigner, "
                            f"got {type(self.refine_assigner).__name__}")
        self.drop_zero_iou_matches = bool(drop_zero_iou_matches)
        self.loss_cls_gamma = float(loss_cls_gamma)
        self.loss_cls_alpha = float(loss_cls_alpha)
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_bbox = loss_bbox
        self.loss_bbox_beta = float(loss_bbox_beta)
        self.giou_legacy = bool(giou_legacy)
        self.loss_init_weight = float(loss_init_weight)
        self.loss_refine_weight = float(loss_refine_weight)
        self.nms_pre = int(nms_pre)
        self.score_thr = float(score_thr)
        self.nms_iou = float(nms_iou)
        self.max_per_img = int(max_per_img)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(stacked_convs):
                chn = in_channels if i == 0 else feat_channels
                layers.append(nn.Conv2d(chn, feat_channels, 3, padding=1, bias=norm is None))
                if norm is not None:
                    layers.append(build_norm(norm, feat_channels, norm_groups))
                layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.cls_convs = tower()
        self.reg_convs = tower()
        self._build_point_layers()

    def _build_point_layers(self) -> None:
        """The layers after the two towers: init points, the two DCNs and their outputs, the
        moment transfer (V1 / V2; Dense RepPoints overrides this)."""
        kernel, feat_channels, point_feat_channels = self.dcn_kernel, self.feat_channels, self.point_feat_channels
        pts_out = 2 * self.num_points
        self.pts_init_conv = nn.Conv2d(feat_channels, point_feat_channels, 3, padding=1)
        self.pts_init_out = nn.Conv2d(point_feat_channels, pts_out, 1)
        # the two DCNv1 kernels (feat (+ extra, V2) -> point_feat, no bias), applied with torchvision's op
        dcn_in = feat_channels + self.dcn_extra_in_channels
        self.cls_dcn_weight = nn.Parameter(torch.empty(point_feat_channels, dcn_in, kernel, kernel))
        self.cls_out = nn.Conv2d(point_feat_channels, self.num_classes, 1)
        self.pts_refine_dcn_weight = nn.Parameter(torch.empty(point_feat_channels, dcn_in, kernel, kernel))
        self.pts_refine_out = nn.Conv2d(point_feat_channels, pts_out, 1)
        if self.transform_method == "moment":
            self.moment_transfer = nn.Parameter(torch.zeros(2))
        else:
            self.register_parameter("moment_transfer", None)
        base = torch.arange(-self.dcn_pad, self.dcn_pad + 1, dtype=torch.float32)
        dy = base.repeat_interleave(kernel)  # row-major taps: dy of tap r * k + c is base[r]
        dx = base.repeat(kernel)
        self.register_buffer("dcn_base_offset", torch.stack([dy, dx], dim=1).reshape(1, -1, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_dcn_weight, std=0.01)
        nn.init.normal_(self.pts_refine_dcn_weight, std=0.01)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - 0.01) / 0.01))

    # ------------------------------------------------------------------ forward
    def effective_moment_transfer(self) -> Tensor | None:
        """The moment transfer with its gradient scaled by ``moment_mul`` (None unless ``moment``)."""
        if self.moment_transfer is None:
            return None
        return self.moment_mul * self.moment_transfer + (1 - self.moment_mul) * self.moment_transfer.detach()

    def _dcn(self, x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        """3x3 DCNv1 in float32: torchvision's kernel, or on CPU the equivalent sampling form
        (:func:`deform_conv2d_sampled`, ~5x faster there)."""
        x, offset, weight = x.float(), offset.float(), weight.float()
        if x.device.type == "cpu":
            return deform_conv2d_sampled(x, offset, weight, self.dcn_pad)
        return deform_conv2d(x, offset, weight, padding=self.dcn_pad)

    def forward_single(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One level FloatTensor[B, in_channels, H, W] -> cls logits [B, C, H, W], init and
        refined points [B, 2N, H, W] ((y, x) pairs, stride units, relative to the prior point)."""
        cls_feat = self.cls_convs(x)
        pts_feat = self.reg_convs(x)
        pts_init = self.pts_init_out(F.relu(self.pts_init_conv(pts_feat)))
        g = self.gradient_mul
        pts_grad_mul = (1 - g) * pts_init.detach() + g * pts_init
        offset = pts_grad_mul - self.dcn_base_offset.to(pts_init.dtype)
        cls_out = self.cls_out(F.relu(self._dcn(cls_feat, offset, self.cls_dcn_weight)))
        pts_delta = self.pts_refine_out(F.relu(self._dcn(pts_feat, offset, self.pts_refine_dcn_weight)))
        pts_refine = pts_delta + pts_init.detach()
        return cls_out, pts_init, pts_refine

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(features) != len(self.point_strides):
            raise ValueError(f"expected {len(self.point_strides)} pyramid levels, got {len(features)}")
        outs = [self.forward_single(x) for x in features]
        return [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs]

    # ------------------------------------------------------------------ layout helpers
    def _flatten(self, cls_scores: Sequence[Tensor], pts_preds: Sequence[Sequence[Tensor]],
                 priors: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Levels -> cls FloatTensor[B, M, C] and, per points output, FloatTensor[B, M, N, 2]
        (x, y) in input pixels."""
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, self.num_classes) for c in cls_scores], 1)
        out = []
        for preds in pts_preds:
            levels = []
            for p, pri in zip(preds, priors):
                b = p.shape[0]
                yx = p.permute(0, 2, 3, 1).reshape(b, -1, self.num_points, 2).float()
                xy = yx.flip(-1) * pri[None, :, None, 2:3] + pri[None, :, None, :2]
                levels.append(xy)
            out.append(torch.cat(levels, dim=1))
        return cls, out

    def _valid(self, featmap_sizes: list[tuple[int, int]], image_sizes: Sequence[tuple[int, int]],
               device: torch.device) -> Tensor:
        """BoolTensor[B, M]: the cell's prior point lies inside the image (decision 1)."""
        return torch.stack([torch.cat(self.point_generator.valid_flags(featmap_sizes, s, device))
                            for s in image_sizes])

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def get_targets(self, priors: Tensor, num_level_points: Sequence[int], init_boxes: Tensor, valid: Tensor,
                    gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                    gt_ignore: Sequence[Tensor | None] | None = None) -> PointTargets:
        """Both stages' targets.

        Args:
            priors: FloatTensor[M, 3] ``(x, y, stride)`` of all levels' cells.
            num_level_points: cells per level (sums to M).
            init_boxes: FloatTensor[B, M, 4] pseudo boxes of the init points (input pixels).
            valid: BoolTensor[B, M] cells used (module doc, decision 1).
            gt_boxes, gt_labels: per image FloatTensor[G, 4] (xyxy pixels), LongTensor[G].
            gt_ignore: per image FloatTensor[K, 4] or None.
        """
        b, m = valid.shape
        device = priors.device
        labels = torch.full((b, m), self.num_classes, dtype=torch.long, device=device)
        label_weights = torch.zeros((b, m), device=device)
        init_pos = torch.zeros((b, m), dtype=torch.bool, device=device)
        refine_pos = torch.zeros((b, m), dtype=torch.bool, device=device)
        init_gt = torch.zeros((b, m, 4), device=device)
        refine_gt = torch.zeros((b, m, 4), device=device)
        init_inds = torch.full((b, m), -1, dtype=torch.long, device=device)
        refine_inds = torch.full((b, m), -1, dtype=torch.long, device=device)
        num_init = num_refine = 0
        level_ids = torch.repeat_interleave(torch.arange(len(num_level_points), device=device),
                                            torch.tensor(list(num_level_points), device=device))
        for i in range(b):
            idx = valid[i].nonzero().squeeze(1)
            gts = gt_boxes[i].float()
            labs = gt_labels[i]
            ign = None if gt_ignore is None else gt_ignore[i]
            # init stage: prior points
            res = self.init_assigner.assign(priors[idx], gts, labs)
            pos = res.gt_inds > 0
            init_pos[i, idx[pos]] = True
            init_gt[i, idx[pos]] = gts[res.gt_inds[pos] - 1]
            init_inds[i, idx[pos]] = res.gt_inds[pos] - 1
            num_init += max(int(pos.sum()), 1)
            # refine stage: pseudo boxes of the detached init points
            cand = init_boxes[i, idx].float()
            if isinstance(self.refine_assigner, ATSSAssigner):
                counts = torch.bincount(level_ids[idx], minlength=len(num_level_points)).tolist()
                res = self.refine_assigner.assign(cand, counts, gts, labs, ign)
            else:
                res = self.refine_assigner.assign(cand, gts, labs, ign)
            gt_inds = res.gt_inds.clone()
            pos = gt_inds > 0
            if self.drop_zero_iou_matches and isinstance(self.refine_assigner, MaxIoUAssigner) and pos.any():
                iou = pairwise_iou(cand[pos], gts)[torch.arange(int(pos.sum()), device=device), gt_inds[pos] - 1]
                drop = pos.nonzero().squeeze(1)[iou <= 0]
                gt_inds[drop] = 0
                pos = gt_inds > 0
            neg = gt_inds == 0
            refine_pos[i, idx[pos]] = True
            refine_gt[i, idx[pos]] = gts[gt_inds[pos] - 1]
            refine_inds[i, idx[pos]] = gt_inds[pos] - 1
            labels[i, idx[pos]] = labs[gt_inds[pos] - 1]
            label_weights[i, idx[pos | neg]] = 1.0
            num_refine += max(int(pos.sum()), 1)
        return PointTargets(labels, label_weights, init_pos, init_gt, refine_pos, refine_gt, num_init, num_refine,
                            init_inds, refine_inds)

    def _points_loss(self, pred: Tensor, target: Tensor, norm: Tensor, weight: float, avg_factor: int) -> Tensor:
        pred = pred / norm[:, None]
        target = target / norm[:, None]
        if self.loss_bbox == "giou":
            return weight * giou_loss(pred, target, legacy=self.giou_legacy, avg_factor=avg_factor)
        return weight * smooth_l1_loss(pred, target, self.loss_bbox_beta, avg_factor=avg_factor)

    def loss(self, cls_scores: Sequence[Tensor], pts_init: Sequence[Tensor], pts_refine: Sequence[Tensor],
             image_sizes: Sequence[tuple[int, int]], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
             gt_ignore: Sequence[Tensor | None] | None = None) -> dict[str, Tensor]:
        """Losses of the head outputs (see :meth:`forward`) against per-image gts."""
        device = cls_scores[0].device
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors_lvl = self.point_generator.grid_points(featmap_sizes, device)
        priors = torch.cat(priors_lvl)
        cls, (xy_init, xy_refine) = self._flatten(cls_scores, (pts_init, pts_refine), priors_lvl)
        mt = self.effective_moment_transfer()
        box_init = points_to_boxes(xy_init, self.transform_method, mt)  # [B, M, 4]
        box_refine = points_to_boxes(xy_refine, self.transform_method, mt)
        valid = self._valid(featmap_sizes, image_sizes, device)
        t = self.get_targets(priors, [p.shape[0] for p in priors_lvl], box_init.detach(), valid, gt_boxes,
                             gt_labels, gt_ignore)

        loss_cls = self.loss_cls_weight * sigmoid_focal_loss(
            cls.reshape(-1, self.num_classes), t.labels.reshape(-1), t.label_weights.reshape(-1),
            self.loss_cls_gamma, self.loss_cls_alpha, "mean", t.num_pos_refine)
        norm = priors[:, 2] * self.point_base_scale  # [M]
        bi, mi = t.init_pos.nonzero(as_tuple=True)
        loss_init = self._points_loss(box_init[bi, mi], t.init_gt[bi, mi], norm[mi], self.loss_init_weight,
                                      t.num_pos_init)
        br, mr = t.refine_pos.nonzero(as_tuple=True)
        loss_refine = self._points_loss(box_refine[br, mr], t.refine_gt[br, mr], norm[mr], self.loss_refine_weight,
                                        t.num_pos_refine)
        return {"loss_cls": loss_cls, "loss_pts_init": loss_init, "loss_pts_refine": loss_refine}

    def forward_train(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                      gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                      gt_ignore: Sequence[Tensor | None] | None = None) -> dict[str, Tensor]:
        cls_scores, pts_init, pts_refine = self(features)
        return self.loss(cls_scores, pts_init, pts_refine, image_sizes, gt_boxes, gt_labels, gt_ignore)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_bboxes(self, cls_scores: Sequence[Tensor], pts_refine: Sequence[Tensor],
                   image_sizes: Sequence[tuple[int, int]],
                   box_refiner: Callable[[int, Tensor, Tensor], Tensor] | None = None) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes`` FloatTensor[K, 4] (input pixels, clipped),
        ``scores`` FloatTensor[K] (decreasing), ``labels`` LongTensor[K].

        ``box_refiner(level, boxes, limits)``, if given, rewrites each level's clipped boxes
        FloatTensor[B, k, 4] before NMS (``limits`` FloatTensor[B, 4] = ``(w, h, w, h)``); RepPoints
        V2's corner snapping."""
        device = cls_scores[0].device
        b = cls_scores[0].shape[0]
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors_lvl = self.point_generator.grid_points(featmap_sizes, device)
        valid_lvl = [torch.stack(f) for f in zip(*[self.point_generator.valid_flags(featmap_sizes, s, device)
                                                   for s in image_sizes])]  # per level [B, HW]
        mt = self.effective_moment_transfer()
        transform = "minmax" if self.transform_method == "exact_minmax" else self.transform_method
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=torch.float32, device=device)
        all_scores, all_boxes = [], []
        for level, (cls, pts, pri, valid) in enumerate(zip(cls_scores, pts_refine, priors_lvl, valid_lvl)):
            scores = cls.permute(0, 2, 3, 1).reshape(b, -1, self.num_classes).float().sigmoid()
            scores = scores * valid[..., None]
            if 0 < self.nms_pre < scores.shape[1]:
                _, top = scores.max(dim=2).values.topk(self.nms_pre, dim=1)  # [B, k]
            else:
                top = torch.arange(scores.shape[1], device=device).expand(b, -1)
            scores = torch.gather(scores, 1, top[..., None].expand(-1, -1, self.num_classes))
            yx = pts.permute(0, 2, 3, 1).reshape(b, -1, self.num_points, 2)
            yx = torch.gather(yx, 1, top[..., None, None].expand(-1, -1, self.num_points, 2)).float()
            if self.transform_method == "exact_minmax":
                yx = yx[:, :, :2]  # decision 3: the two corner points, re-ordered by min / max
            xy = yx.flip(-1) * pri[top][..., None, 2:3] + pri[top][..., None, :2]
            boxes = torch.minimum(points_to_boxes(xy, transform, mt).clamp(min=0), limits[:, None, :])
            if box_refiner is not None:
                boxes = box_refiner(level, boxes, limits)
            all_boxes.append(boxes)
            all_scores.append(scores)
        scores = torch.cat(all_scores, dim=1)  # [B, K, C]
        boxes = torch.cat(all_boxes, dim=1)  # [B, K, 4]
        img, cell, label = (scores > self.score_thr).nonzero(as_tuple=True)
        det_boxes = boxes[img, cell]
        det_scores = scores[img, cell, label]
        keep, counts = batched_nms_per_image(det_boxes, det_scores, img * self.num_classes + label, img, b,
                                             self.nms_iou, self.max_per_img)
        return [{"boxes": bx, "scores": sc, "labels": lb}
                for bx, sc, lb in zip(det_boxes[keep].split(counts), det_scores[keep].split(counts),
                                      label[keep].split(counts))]

    def simple_test(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
                    ) -> list[dict[str, Tensor]]:
        cls_scores, _, pts_refine = self(features)
        return self.get_bboxes(cls_scores, pts_refine, image_sizes)
