"""RepPoints V1 init-stage assigner: each gt claims its nearest prior points on one FPN level.

Spec reppoints.md §1.3 "Init stage"; the facts follow mmdetection's ``PointAssigner`` and the
RPv2 repo's vectorised ``PointAssignerV2`` (both give the same result), implemented here
without a Python loop over gts:

1. **Point level** ``lvl(p) = log2(stride(p))`` (3 for stride 8, ..., 7 for stride 128).
2. **Gt level** ``trunc((log2(w / scale) + log2(h / scale)) / 2)``, clamped to the range of
   point levels present in ``points`` ([3, 7] for P3-P7 points). ``trunc`` rounds toward
   zero like the official ``.int()``; any box with ``sqrt(w h) < 8 * scale`` px ends up on
   the lowest present level either way, so this equals ``floor`` once clamped (the point
   levels are >= 0). With ``scale=4``: 32 px -> P3, 64 -> P4, 128 -> P5, 256 -> P6,
   >= 512 -> P7. ``w``/``h`` are clamped to >= 1e-6 (degenerate boxes) as in the official
   code.
3. **Distance** of point ``p`` to gt ``g``: ``|| (p_xy - c_g) / (w_g, h_g) ||_2`` with ``c_g``
   the box centre (normalised by the gt size).
4. **Selection**: each gt takes the ``pos_num`` points of smallest distance *on its own
   level* (fewer if the level has fewer points; ties inside the top-k are broken by
   ``torch.topk``, as in the official code).
5. **Overlaps**: a point claimed by several gts goes to the gt with the smallest
   distance; on an exact tie the gt with the lower index wins (``min`` picks the first,
   the official loop's strict ``<`` does the same).
6. Every other point is negative (``gt_inds = 0``); there is no ignore state and
   ``gt_boxes_ignore`` is not used (spec: unused in the official code).

The returned :class:`AssignResult` has ``max_overlaps`` all zero (no IoU is computed).
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.common.task_modules.assigners import AssignResult


class PointAssigner:
    """Assign prior points ``(x, y, stride)`` to gt boxes by level and normalised centre distance.

    Args:
        scale: the gt level is ``log2(sqrt(w h) / scale)`` (``point_base_scale``, 4 in every
            RepPoints config).
        pos_num: number of points each gt claims on its level (1 in every RepPoints config).
    """

    def __init__(self, scale: float = 4.0, pos_num: int = 1) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if pos_num < 1:
            raise ValueError(f"pos_num must be >= 1, got {pos_num}")
        self.scale = float(scale)
        self.pos_num = int(pos_num)

    def gt_levels(self, gt_boxes: Tensor, lvl_min: int, lvl_max: int) -> Tensor:
        """LongTensor[G]: the FPN level (3 = stride 8) of each gt box FloatTensor[G, 4] (xyxy px)."""
        wh = (gt_boxes[:, 2:4] - gt_boxes[:, 0:2]).float().clamp(min=1e-6)
        lvl = ((torch.log2(wh[:, 0] / self.scale) + torch.log2(wh[:, 1] / self.scale)) / 2).trunc().long()
        return lvl.clamp(min=lvl_min, max=lvl_max)

    def assign(
        self,
        points: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor | None = None,
        gt_boxes_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign ``points`` FloatTensor[N, 3] ``(x, y, stride)`` (input pixels) to ``gt_boxes``.

        Args:
            points: prior points of all levels, e.g. the concatenated
                :meth:`PointGenerator.grid_points` (optionally filtered by valid flags).
            gt_boxes: FloatTensor[G, 4] xyxy in input pixels.
            gt_labels: LongTensor[G] in 0..num_classes-1, or None.
            gt_boxes_ignore: accepted for interface parity, unused.

        Returns:
            AssignResult with ``gt_inds`` LongTensor[N] (0 negative, k + 1 gt k), ``labels``
            LongTensor[N] (gt class at positives, -1 elsewhere; None without ``gt_labels``)
            and ``max_overlaps`` zeros FloatTensor[N].
        """
        del gt_boxes_ignore
        num_gts, num_points = gt_boxes.shape[0], points.shape[0]
        device = points.device
        gt_inds = torch.zeros(num_points, dtype=torch.long, device=device)
        max_overlaps = torch.zeros(num_points, dtype=torch.float32, device=device)
        if num_gts == 0 or num_points == 0:
            labels = None if gt_labels is None else torch.full((num_points,), -1, dtype=torch.long, device=device)
            return AssignResult(num_gts, gt_inds, max_overlaps, labels)

        points = points.float()
        gt_boxes = gt_boxes[:, :4].float()
        points_lvl = torch.log2(points[:, 2]).round().long()  # [N]
        gt_lvl = self.gt_levels(gt_boxes, int(points_lvl.min()), int(points_lvl.max()))  # [G]

        gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        gt_wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
        dist = ((points[:, None, :2] - gt_ctr[None]) / gt_wh[None]).norm(dim=2)  # [N, G]
        inf = torch.tensor(float("inf"), device=device)
        dist = torch.where(points_lvl[:, None] == gt_lvl[None, :], dist, inf)

        k = min(self.pos_num, num_points)
        top_dist, top_idx = dist.topk(k, dim=0, largest=False)  # [k, G]
        claims = torch.full_like(dist, float("inf"))
        gt_cols = torch.arange(num_gts, device=device).expand(k, num_gts)
        claims[top_idx, gt_cols] = top_dist  # inf where the level had fewer than k points
        best_dist, best_gt = claims.min(dim=1)  # first (lowest) gt index on ties
        pos = torch.isfinite(best_dist)
        gt_inds[pos] = best_gt[pos] + 1

        labels = None
        if gt_labels is not None:
            labels = torch.full((num_points,), -1, dtype=torch.long, device=device)
            labels[pos] = gt_labels.to(device).long()[best_gt[pos]]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)
