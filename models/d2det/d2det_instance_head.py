"""The instance-segmentation branch of D2Det (spec d2det.md §5): per-class 28x28 masks and a
mask-IoU regressor on the dense local regression head's trunk, with their targets and losses.

Both paths start from the DLR trunk features ``x0`` FloatTensor[N, C, k, k] (C = 576, k = 7
at paper scale):

- mask path: ConvTranspose2d(C -> D, 2, s2) -> GN(16) -> ReLU -> ConvTranspose2d(D -> D, 2,
  s2) -> ReLU -> Conv3x3(D -> num_classes): FloatTensor[N, num_classes, 4k, 4k] logits
  (D = 256). The official code hard-codes 81 output channels (COCO classes + background
  in mmdet v1's labels); here it is ``num_classes`` and channel ``c`` is label ``c``
  (the mmdet2.1 port's fix).
- mask-IoU path: the logits of the gt class (train) / detected class (test), **detached**,
  max-pooled (k4, s4, pad 1: 28 -> 7), sigmoid, concatenated to ``x0`` -> (N, C+1, k, k) ->
  flatten -> FC(1024) -> ReLU -> FC(1024) -> ReLU -> FC(num_classes).

Targets (all positives are the jittered, at most ``max_num_reg`` RoIs of the DLR head):

- mask target: the matched gt mask cropped to the RoI and resized to 28x28. Here with
  RoIAlign (aligned, adaptive sampling) on the binary mask, then ``>= 0.5`` (mmdetection
  v2's ``BitmapMasks.crop_and_resize``); the official v1 code crops the int-cast box and
  resizes the uint8 crop bilinearly. Both give a binary 28x28 target.
- mask-IoU target (Mask Scoring R-CNN's): the predicted mask binarised as **raw logits >
  0.5** (as the official code does; ``logit_threshold`` makes it a choice), the full gt
  area estimated as ``target area / area ratio`` where the area ratio is the fraction of
  the gt mask's pixels inside the (int) RoI; ``IoU = inter / (pred + full_gt - inter)``.

Losses: ``loss_instance`` = BCE-with-logits on the gt-class channel averaged over N*28*28
(weight 1.0); ``loss_mask_iou`` = ``0.5 * mean((pred - target)^2)`` over the RoIs whose
target is in (0.1, 1.0] (the official weighting; averaged over those RoIs, as Mask
Scoring R-CNN averages over its selected RoIs).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = ["D2DetInstanceBranch", "mask_targets", "mask_area_ratios", "mask_iou_targets", "overlap_from_masks",
           "instance_losses", "concat_gt_masks"]


class D2DetInstanceBranch(nn.Module):
    """Mask and mask-IoU outputs of D2Det's instance variant (see the module docstring).

    Args:
        trunk_channels: C of the DLR trunk (576).
        num_classes: foreground classes.
        grid: k of the trunk's k x k map (7); masks are 4k x 4k (28).
        deconv_channels: D, width of the two deconvolutions (256).
        deconv_gn_groups: GroupNorm groups after the first deconvolution (16).
        iou_fc_channels: width of the two FCs of the mask-IoU path (1024).

    Init (as the official head): deconvolutions kaiming-normal fan_out with zero bias; the
    mask conv kaiming-normal fan_out with zero bias (mmcv ``kaiming_init`` of the 8-conv
    head applies to every Conv2d); the IoU FCs kaiming-uniform (a=1, fan_in) with zero bias;
    the IoU output normal(0, 0.01).
    """

    def __init__(self, trunk_channels: int = 576, num_classes: int = 80, grid: int = 7, deconv_channels: int = 256,
                 deconv_gn_groups: int = 16, iou_fc_channels: int = 1024) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.grid = int(grid)
        self.mask_size = 4 * self.grid
        self.deconv1 = nn.ConvTranspose2d(trunk_channels, deconv_channels, 2, stride=2)
        self.deconv1_norm = nn.GroupNorm(deconv_gn_groups, deconv_channels)
        self.deconv2 = nn.ConvTranspose2d(deconv_channels, deconv_channels, 2, stride=2)
        self.mask_logits = nn.Conv2d(deconv_channels, self.num_classes, 3, padding=1)
        self.iou_fcs = nn.ModuleList([
            nn.Linear((trunk_channels + 1) * self.grid * self.grid, iou_fc_channels),
            nn.Linear(iou_fc_channels, iou_fc_channels),
        ])
        self.fc_mask_iou = nn.Linear(iou_fc_channels, self.num_classes)
        for m in (self.deconv1, self.deconv2, self.mask_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        for fc in self.iou_fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_mask_iou.weight, std=0.01)
        nn.init.zeros_(self.fc_mask_iou.bias)

    def forward_masks(self, trunk: Tensor) -> Tensor:
        """FloatTensor[N, C, k, k] -> per-class mask logits FloatTensor[N, num_classes, 4k, 4k]."""
        x = F.relu(self.deconv1_norm(self.deconv1(trunk)))
        x = F.relu(self.deconv2(x))
        return self.mask_logits(x)

    def forward_iou(self, trunk: Tensor, class_mask_logits: Tensor) -> Tensor:
        """Predicted mask IoU of every class, FloatTensor[N, num_classes].

        Args:
            trunk: FloatTensor[N, C, k, k].
            class_mask_logits: FloatTensor[N, 4k, 4k] logits of the gt / detected class
                (detached here: the IoU loss does not train the mask path).
        """
        pooled = torch.sigmoid(F.max_pool2d(class_mask_logits.detach()[:, None], 4, stride=4, padding=1))
        x = torch.cat([trunk, pooled.to(trunk.dtype)], dim=1).flatten(1)
        for fc in self.iou_fcs:
            x = F.relu(fc(x))
        return self.fc_mask_iou(x)


def _rois_per_gt(boxes: Tensor, gt_index: Tensor) -> Tensor:
    return torch.cat([gt_index[:, None].to(boxes.dtype), boxes], dim=1)


def mask_targets(boxes: Tensor, gt_masks: Tensor, gt_index: Tensor, mask_size: int) -> Tensor:
    """Binary mask targets of N RoIs.

    Args:
        boxes: FloatTensor[N, 4] RoIs, input pixels.
        gt_masks: UInt8/Bool/FloatTensor[G, H, W] the image's (or batch's concatenated) gt
            masks at the input resolution.
        gt_index: LongTensor[N] index into ``gt_masks`` of each RoI's matched object.
        mask_size: M (28).

    Returns:
        FloatTensor[N, M, M] in {0, 1}.
    """
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros((0, mask_size, mask_size))
    masks = gt_masks.to(device=boxes.device, dtype=torch.float32)[:, None]
    rois = _rois_per_gt(boxes.float(), gt_index)
    crops = roi_align(masks, rois, (mask_size, mask_size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).float()


def mask_area_ratios(boxes: Tensor, gt_masks: Tensor, gt_index: Tensor) -> Tensor:
    """FloatTensor[N]: fraction of each matched gt mask's pixels inside the RoI.

    The RoI is cast to integers as the reference (``x1, y1`` floored, ``x2, y2`` floored and
    made inclusive, clipped to the mask). A gt mask with no pixel gives ratio 0.
    """
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros((0,))
    masks = gt_masks.to(device=boxes.device, dtype=torch.float32)
    g, h, w = masks.shape
    integral = F.pad(masks.cumsum(1).cumsum(2), (1, 0, 1, 0))  # [G, H+1, W+1]
    b = boxes.detach().floor().long()
    x1 = b[:, 0].clamp(0, w)
    y1 = b[:, 1].clamp(0, h)
    x2 = (b[:, 2] + 1).clamp(0, w)
    y2 = (b[:, 3] + 1).clamp(0, h)
    x2, y2 = torch.maximum(x2, x1), torch.maximum(y2, y1)
    ii = integral[gt_index]
    rows = torch.arange(n, device=boxes.device)
    inside = ii[rows, y2, x2] - ii[rows, y1, x2] - ii[rows, y2, x1] + ii[rows, y1, x1]
    total = ii[:, h, w]
    return torch.where(total > 0, inside / total.clamp(min=1.0), torch.zeros_like(total))


def mask_iou_targets(class_mask_logits: Tensor, targets: Tensor, area_ratios: Tensor,
                     logit_threshold: float = 0.5) -> Tensor:
    """Mask Scoring R-CNN IoU targets, FloatTensor[N].

    Args:
        class_mask_logits: FloatTensor[N, M, M] logits of the gt class.
        targets: FloatTensor[N, M, M] binary mask targets.
        area_ratios: FloatTensor[N] from :func:`mask_area_ratios`.
        logit_threshold: predicted mask = ``logits > logit_threshold`` (official: 0.5 on raw
            logits, i.e. probability > 0.62).
    """
    pred = (class_mask_logits.detach() > logit_threshold).float()
    inter = (pred * targets).sum((1, 2))
    pred_area = pred.sum((1, 2))
    valid = area_ratios > 0
    full_gt = targets.sum((1, 2)) / area_ratios.clamp(min=1e-7)
    union = pred_area + full_gt - inter
    iou = inter / union.clamp(min=1e-7)
    return torch.where(valid & (union > 0), iou, torch.zeros_like(iou))


def overlap_from_masks(targets: Tensor, grid: int) -> Tensor:
    """Instance-mode binary-overlap target (§3.3): the 4k x 4k mask target bilinearly resized
    to k x k and thresholded at ``> 0.5``. FloatTensor[N, M, M] -> FloatTensor[N, k*k]."""
    n = targets.shape[0]
    if n == 0:
        return targets.new_zeros((0, grid * grid))
    small = F.interpolate(targets[:, None], size=(grid, grid), mode="bilinear", align_corners=False)
    return (small.reshape(n, grid * grid) > 0.5).float()


def instance_losses(mask_logits: Tensor, mask_iou_pred: Tensor, labels: Tensor, targets: Tensor,
                    iou_targets: Tensor, mask_loss_weight: float = 1.0,
                    mask_iou_loss_weight: float = 0.5) -> dict[str, Tensor]:
    """``loss_instance`` and ``loss_mask_iou`` (see the module docstring).

    Args:
        mask_logits: FloatTensor[N, num_classes, M, M].
        mask_iou_pred: FloatTensor[N, num_classes].
        labels: LongTensor[N] gt classes.
        targets: FloatTensor[N, M, M] binary mask targets.
        iou_targets: FloatTensor[N] mask-IoU targets.
    """
    n = mask_logits.shape[0]
    if n == 0:
        zero = mask_logits.sum() * 0.0 + mask_iou_pred.sum() * 0.0
        return {"loss_instance": zero, "loss_mask_iou": zero.clone()}
    rows = torch.arange(n, device=mask_logits.device)
    class_logits = mask_logits[rows, labels].float()
    loss_instance = mask_loss_weight * F.binary_cross_entropy_with_logits(class_logits, targets, reduction="mean")
    iou_pred = mask_iou_pred[rows, labels].float()
    selected = (iou_targets > 0.1) & (iou_targets <= 1.0)
    sq = (iou_pred - iou_targets) ** 2 * selected.float()
    loss_iou = mask_iou_loss_weight * sq.sum() / selected.sum().clamp(min=1)
    return {"loss_instance": loss_instance, "loss_mask_iou": loss_iou}


def concat_gt_masks(gt_masks: Sequence[Tensor], gt_counts: Sequence[int]) -> tuple[Tensor, list[int]]:
    """Stack per-image gt masks [G_i, H_i, W_i] padded to a common (H, W) and return the
    offset of each image's first mask in the stack."""
    h = max((int(m.shape[-2]) for m in gt_masks), default=1)
    w = max((int(m.shape[-1]) for m in gt_masks), default=1)
    padded, offsets, total = [], [], 0
    for m, count in zip(gt_masks, gt_counts):
        if m.shape[0] != count:
            raise ValueError(f"{m.shape[0]} gt masks for {count} gt boxes")
        offsets.append(total)
        total += count
        padded.append(F.pad(m.to(torch.uint8), (0, w - m.shape[-1], 0, h - m.shape[-2])))
    if not padded:
        return torch.zeros((0, h, w), dtype=torch.uint8), offsets
    return torch.cat(padded), offsets
