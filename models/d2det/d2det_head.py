"""D2Det's dense local regression (DLR) head and its targets, losses and decoding (spec
d2det.md §3; ``D2DetHead`` and ``D2Det`` of the official code), vectorised.

Conventions (all boxes ``(x1, y1, x2, y2)`` in input pixels):

- For a proposal P with ``wP = px2 - px1``, ``hP = py2 - py1`` (no +1) and grid ``k`` (7),
  cell ``(j, i)`` (row ``j`` = y, column ``i`` = x) has centre ``x_i = px1 + wP*(i+0.5)/k``,
  ``y_j = py1 + hP*(j+0.5)/k``. Per-RoI cells are flattened row-major: ``c = j*k + i``.
- The regression output ``reg`` is FloatTensor[N, 4, k, k], channels ``(l, r, t, b) >= 0``
  in units of the proposal's width (l, r) / height (t, b). A cell decodes to
  ``(x - l*wP, y - t*hP, x + r*wP, y + b*hP)``.
- The decoded *target* of every cell is exactly the gt box, so the regression loss
  compares decoded boxes with the gt box.
- Binary overlap target (detection mode): cell positive iff its centre is inside the gt
  with a margin of at least one cell step ``wP/(k-1)``, ``hP/(k-1)`` (wP/6, hP/6) per side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common.task_modules.regression_sampling import _image_hw, clip_to_image, random_jitter
from models.d2det.iou_loss import IoUWeighting, iou_loss

__all__ = ["DenseLocalRegressionHead", "clip_to_image", "random_jitter", "cell_points", "dense_targets", "encode_dense",
           "decode_dense", "average_positive_cells", "d2det_dense_loss"]

V1_REG_LOSS_WEIGHT = 2.0  # hard-coded in the official D2Det.__init__ (IoULoss(loss_weight=2.0))
MMDET21_REG_LOSS_WEIGHT = 1.0  # the mmdet2.1 port


def cell_points(proposals: Tensor, grid: int = 7) -> Tensor:
    """FloatTensor[N, k*k, 4]: per cell ``(x_c, y_c, wP, hP)`` (pixels), row-major cells."""
    n = proposals.shape[0]
    w = proposals[:, 2] - proposals[:, 0]
    h = proposals[:, 3] - proposals[:, 1]
    frac = (torch.arange(grid, device=proposals.device, dtype=proposals.dtype) + 0.5) / grid
    xs = proposals[:, 0:1] + w[:, None] * frac[None, :]  # [N, k] by column i
    ys = proposals[:, 1:2] + h[:, None] * frac[None, :]  # [N, k] by row j
    x = xs[:, None, :].expand(n, grid, grid).reshape(n, grid * grid)
    y = ys[:, :, None].expand(n, grid, grid).reshape(n, grid * grid)
    return torch.stack([x, y, w[:, None].expand_as(x), h[:, None].expand_as(x)], dim=-1)


def dense_targets(proposals: Tensor, gt_boxes: Tensor, grid: int = 7) -> tuple[Tensor, Tensor]:
    """Targets of the DLR head (v1 ``D2DetHead.get_target``, detection mode).

    Args:
        proposals: FloatTensor[N, 4] (jittered) proposals, pixels.
        gt_boxes: FloatTensor[N, 4] matched gt box per proposal, pixels.
        grid: k.

    Returns:
        ``points`` FloatTensor[N, k*k, 4] ``(x_c, y_c, wP, hP)`` per cell, and ``overlap``
        FloatTensor[N, k*k] in {0, 1}: 1 iff ``l, r >= wP/(k-1)`` and ``t, b >= hP/(k-1)``
        with ``l = x_c - gx1``, ``r = gx2 - x_c``, ``t = y_c - gy1``, ``b = gy2 - y_c``.
    """
    points = cell_points(proposals, grid)
    x, y, w, h = points.unbind(-1)
    g = gt_boxes[:, None, :]
    l, r = x - g[..., 0], g[..., 2] - x
    t, b = y - g[..., 1], g[..., 3] - y
    mw, mh = w / (grid - 1), h / (grid - 1)
    overlap = (l >= mw) & (r >= mw) & (t >= mh) & (b >= mh)
    return points, overlap.to(proposals.dtype)


def encode_dense(proposals: Tensor, gt_boxes: Tensor, grid: int = 7) -> Tensor:
    """Exact regression targets as a head output: FloatTensor[N, 4, k, k] of
    ``(l/wP, r/wP, t/hP, b/hP)`` (may be negative; the head itself outputs >= 0)."""
    n = proposals.shape[0]
    x, y, w, h = cell_points(proposals, grid).unbind(-1)
    g = gt_boxes[:, None, :]
    reg = torch.stack([(x - g[..., 0]) / w, (g[..., 2] - x) / w, (y - g[..., 1]) / h, (g[..., 3] - y) / h], dim=1)
    return reg.reshape(n, 4, grid, grid)


def decode_dense(reg: Tensor, proposals: Tensor) -> Tensor:
    """Per-cell boxes from the head output.

    Args:
        reg: FloatTensor[N, 4, k, k] ``(l, r, t, b)`` in proposal widths/heights.
        proposals: FloatTensor[N, 4] pixels.

    Returns:
        FloatTensor[N, k*k, 4] boxes ``(x - l*w, y - t*h, x + r*w, y + b*h)`` in pixels.
    """
    n, _, k, _ = reg.shape
    x, y, w, h = cell_points(proposals.to(reg.dtype), k).unbind(-1)
    l, r, t, b = reg.reshape(n, 4, k * k).unbind(1)
    return torch.stack([x - l * w, y - t * h, x + r * w, y + b * h], dim=-1)


def average_positive_cells(boxes_per_cell: Tensor, overlap_logits: Tensor,
                           image_sizes_per_box: Tensor | tuple[int, int]) -> Tensor:
    """Final box per RoI (v1 ``get_bboxes_avg``, §3.5 step 5).

    ``sum(box * m) / (sum(m) + 1e-5)`` over the cells with ``m = overlap_logit > 0``
    (sigmoid > 0.5), then clipped to ``[0, W-1] x [0, H-1]``. As in the reference there is
    no fallback: a RoI with no positive cell gets the zero box ``(0, 0, 0, 0)``.

    Args:
        boxes_per_cell: FloatTensor[N, k*k, 4] pixels (from :func:`decode_dense`).
        overlap_logits: FloatTensor[N, k*k] (or [N, 1, k, k]) logits.
        image_sizes_per_box: Tensor[N, 2] of (h, w), or one (h, w).

    Returns:
        FloatTensor[N, 4] pixels.
    """
    n = boxes_per_cell.shape[0]
    m = (overlap_logits.reshape(n, -1) > 0).to(boxes_per_cell.dtype)
    boxes = (boxes_per_cell * m[..., None]).sum(1) / (m.sum(1, keepdim=True) + 1e-5)
    return clip_to_image(boxes, _image_hw(image_sizes_per_box, n, boxes))


def d2det_dense_loss(reg: Tensor, overlap_logits: Tensor, proposals: Tensor, gt_boxes: Tensor,
                     weighting: IoUWeighting = "v1_broadcast",
                     reg_loss_weight: float | None = None, overlap_target: Tensor | None = None,
                     overlap_loss_weight: float = 1.0) -> dict[str, Tensor]:
    """DLR losses (§3.4) on N sampled, jittered positive RoIs.

    Args:
        reg: FloatTensor[N, 4, k, k] head output.
        overlap_logits: FloatTensor[N, 1, k, k] or [N, k*k] logits.
        proposals: FloatTensor[N, 4] the (jittered) proposals the features were pooled from.
        gt_boxes: FloatTensor[N, 4] matched gt boxes.
        weighting: IoU-loss weighting, ``"v1_broadcast"`` (official, README numbers) or
            ``"masked_mean"`` (mmdet2.1), see :mod:`models.d2det.iou_loss`.
        reg_loss_weight: defaults to 2.0 for ``"v1_broadcast"`` (official) and 1.0 for
            ``"masked_mean"`` (mmdet2.1).
        overlap_target: FloatTensor[N, k*k] (or [N, 1, k, k]) 0/1 binary-overlap target; by
            default the detection-mode target of :func:`dense_targets`. The instance
            variant passes the mask-derived target (§3.3, instance mode).
        overlap_loss_weight: weight of the overlap BCE (1.0 in the official code).

    Returns:
        ``{"loss_reg": IoU loss of each cell's decoded box vs the gt, weighted by the overlap
        target; "loss_overlap": BCE-with-logits vs the overlap target averaged over N*k*k}``.
        With N = 0 both are zeros connected to the graph.
    """
    if reg_loss_weight is None:
        reg_loss_weight = V1_REG_LOSS_WEIGHT if weighting == "v1_broadcast" else MMDET21_REG_LOSS_WEIGHT
    n, _, k, _ = reg.shape
    logits = overlap_logits.reshape(n, k * k).float()
    if n == 0:
        zero = reg.sum() * 0.0 + logits.sum() * 0.0
        return {"loss_reg": zero, "loss_overlap": zero.clone()}
    proposals = proposals.to(reg.dtype)
    if overlap_target is None:
        _, target = dense_targets(proposals.detach().float(), gt_boxes.float(), k)
    else:
        target = overlap_target.reshape(n, k * k).float()
    pred_boxes = decode_dense(reg.float(), proposals.detach().float())
    gt_cells = gt_boxes.float()[:, None, :].expand(n, k * k, 4)
    loss_reg = iou_loss(pred_boxes.reshape(-1, 4), gt_cells.reshape(-1, 4), target.reshape(-1),
                        weighting, reg_loss_weight)
    loss_overlap = overlap_loss_weight * F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
    return {"loss_reg": loss_reg, "loss_overlap": loss_overlap}


class DenseLocalRegressionHead(nn.Module):
    """D2Det's DLR head (§3.1).

    Trunk: ``num_convs`` x [conv3x3 (bias-free, pad 1) -> GN(gn_groups) -> ReLU] with
    ``conv_channels`` channels; the first conv has stride 2 (2k x 2k -> k x k). All convs are
    dense (the official ``groups`` is computed but never passed). Kaiming (fan_out, relu,
    normal) init for the trunk, GN weight 1 / bias 0. Outputs: ``reg`` = ReLU(conv3x3 ->
    4) and ``overlap`` = conv3x3 -> 1, both normal(std=0.001) with bias 0.

    Args:
        in_channels: C of the RoIAlign features (256).
        conv_channels: trunk width (576).
        num_convs: trunk depth (8).
        gn_groups: GroupNorm groups (36).
        grid: k (7); the input must be 2k x 2k (14x14).

    Forward:
        FloatTensor[N, C, 2k, 2k] -> ``reg`` FloatTensor[N, 4, k, k] (l, r, t, b >= 0, in
        proposal widths/heights) and ``overlap_logits`` FloatTensor[N, 1, k, k].
    """

    def __init__(self, in_channels: int = 256, conv_channels: int = 576, num_convs: int = 8,
                 gn_groups: int = 36, grid: int = 7) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError("num_convs must be >= 1")
        self.grid = int(grid)
        self.conv_channels = int(conv_channels)
        layers: list[nn.Module] = []
        for i in range(num_convs):
            conv = nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3,
                             stride=2 if i == 0 else 1, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers += [conv, nn.GroupNorm(gn_groups, conv_channels), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.reg = nn.Conv2d(conv_channels, 4, 3, padding=1)
        self.overlap = nn.Conv2d(conv_channels, 1, 3, padding=1)
        for m in (self.reg, self.overlap):
            nn.init.normal_(m.weight, std=0.001)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != 2 * self.grid or x.shape[-2] != 2 * self.grid:
            raise ValueError(f"expected {2 * self.grid}x{2 * self.grid} RoI features, got {tuple(x.shape)}")
        if x.shape[0] == 0:  # GroupNorm rejects empty batches on some versions
            k = self.grid
            zero = 0.0 * sum(p.sum() for p in self.parameters()) + x.sum() * 0.0
            return x.new_zeros((0, 4, k, k)) + zero, x.new_zeros((0, 1, k, k)) + zero
        return self.predict(self.trunk(x))

    def forward_trunk(self, x: Tensor) -> Tensor:
        """FloatTensor[N, C, 2k, 2k] -> trunk features FloatTensor[N, conv_channels, k, k]
        (shared with the instance branch of the mask variant)."""
        if x.shape[-1] != 2 * self.grid or x.shape[-2] != 2 * self.grid:
            raise ValueError(f"expected {2 * self.grid}x{2 * self.grid} RoI features, got {tuple(x.shape)}")
        return self.trunk(x)

    def predict(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Trunk features [N, conv_channels, k, k] -> (``reg`` [N, 4, k, k] >= 0, ``overlap_logits`` [N, 1, k, k])."""
        return F.relu(self.reg(feat)), self.overlap(feat)

    def loss(self, reg: Tensor, overlap_logits: Tensor, proposals: Tensor, gt_boxes: Tensor,
             weighting: IoUWeighting = "v1_broadcast", reg_loss_weight: float | None = None,
             overlap_target: Tensor | None = None, overlap_loss_weight: float = 1.0) -> dict[str, Tensor]:
        """See :func:`d2det_dense_loss`."""
        return d2det_dense_loss(reg, overlap_logits, proposals, gt_boxes, weighting, reg_loss_weight,
                                overlap_target, overlap_loss_weight)

    def predict_boxes(self, reg: Tensor, overlap_logits: Tensor, proposals: Tensor,
                      image_sizes_per_box: Tensor | tuple[int, int]) -> Tensor:
        """FloatTensor[N, 4]: :func:`decode_dense` then :func:`average_positive_cells`."""
        return average_positive_cells(decode_dense(reg, proposals), overlap_logits, image_sizes_per_box)
