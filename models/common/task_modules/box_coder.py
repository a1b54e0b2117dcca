"""Box <-> delta encoding (R-CNN's (dx, dy, dw, dh) parametrisation).

For a reference box P (anchor or proposal) and a target G, both xyxy in input pixels::

    dx = (gx - px) / pw,  dy = (gy - py) / ph,  dw = log(gw / pw),  dh = log(gh / ph)

normalised as ``(d - means) / stds``. Widths follow mmdetection v2 (``w = x2 - x1``);
``legacy_plus_one=True`` gives mmdetection v1 (``w = x2 - x1 + 1``, decoded corners
``gx -/+ (gw - 1) / 2`` and clipping to ``W - 1`` / ``H - 1``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class DeltaXYWHBBoxCoder:
    """Encode boxes as normalised deltas w.r.t. reference boxes and decode them back.

    Args:
        target_means: means subtracted from the raw deltas (dx, dy, dw, dh).
        target_stds: stds the deltas are divided by (RPN 1, R-CNN 0.1/0.1/0.2/0.2).
        wh_ratio_clip: decoded |dw|, |dh| are clamped to ``|log(wh_ratio_clip)|`` (about 4.1
            for 16/1000), so a box grows at most ~62x its reference.
        legacy_plus_one: mmdetection v1 "+1" widths and clipping.
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
        legacy_plus_one: bool = False,
    ) -> None:
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        if len(self.means) != 4 or len(self.stds) != 4:
            raise ValueError("target_means and target_stds need 4 values")
        self.max_ratio = abs(math.log(wh_ratio_clip))
        self.offset = 1.0 if legacy_plus_one else 0.0

    def encode(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """FloatTensor[..., 4] normalised deltas taking ``boxes`` to ``gt_boxes`` (same shape)."""
        boxes = boxes.float()
        gt_boxes = gt_boxes.float()
        pw = boxes[..., 2] - boxes[..., 0] + self.offset
        ph = boxes[..., 3] - boxes[..., 1] + self.offset
        px = (boxes[..., 0] + boxes[..., 2]) * 0.5
        py = (boxes[..., 1] + boxes[..., 3]) * 0.5
        gw = gt_boxes[..., 2] - gt_boxes[..., 0] + self.offset
        gh = gt_boxes[..., 3] - gt_boxes[..., 1] + self.offset
        gx = (gt_boxes[..., 0] + gt_boxes[..., 2]) * 0.5
        gy = (gt_boxes[..., 1] + gt_boxes[..., 3]) * 0.5
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int] | Tensor | None = None) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            boxes: FloatTensor[..., 4] reference boxes xyxy.
            deltas: FloatTensor[..., 4 * k]: k boxes per reference (k = 1, or one per class).
            max_shape: clip to the image: ``(h, w)``, or a Tensor[..., 2] of (h, w) that
                broadcasts against ``boxes[..., 0]`` (one size per box, e.g. per image of a
                batch); ``None`` for no clipping.

        Returns:
            float32 tensor with the shape of ``deltas``: decoded boxes xyxy in input pixels
            (computed in float32 whatever the input precision).
        """
        out_shape = deltas.shape
        d = deltas.float().reshape(*deltas.shape[:-1], deltas.shape[-1] // 4, 4)
        means = d.new_tensor(self.means)
        stds = d.new_tensor(self.stds)
        d = d * stds + means
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clamp(-self.max_ratio, self.max_ratio)
        dh = d[..., 3].clamp(-self.max_ratio, self.max_ratio)
        b = boxes.unsqueeze(-2).float()
        pw = b[..., 2] - b[..., 0] + self.offset
        ph = b[..., 3] - b[..., 1] + self.offset
        px = (b[..., 0] + b[..., 2]) * 0.5
        py = (b[..., 1] + b[..., 3]) * 0.5
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        gx = px + pw * dx
        gy = py + ph * dy
        half_w = (gw - self.offset) * 0.5
        half_h = (gh - self.offset) * 0.5
        x1, y1, x2, y2 = gx - half_w, gy - half_h, gx + half_w, gy + half_h
        if max_shape is not None:
            if isinstance(max_shape, Tensor):
                hw = max_shape.float().unsqueeze(-2)  # [..., 1, 2] against the k axis
                max_x = hw[..., 1] - self.offset
                max_y = hw[..., 0] - self.offset
                x1 = torch.minimum(x1, max_x).clamp(min=0)
                x2 = torch.minimum(x2, max_x).clamp(min=0)
                y1 = torch.minimum(y1, max_y).clamp(min=0)
                y2 = torch.minimum(y2, max_y).clamp(min=0)
            else:
                h, w = max_shape
                x1 = x1.clamp(0, w - self.offset)
                x2 = x2.clamp(0, w - self.offset)
                y1 = y1.clamp(0, h - self.offset)
                y2 = y2.clamp(0, h - self.offset)
        return torch.stack([x1, y1, x2, y2], dim=-1).reshape(out_shape)
