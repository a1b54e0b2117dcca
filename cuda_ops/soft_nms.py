"""Soft-NMS (Bodla et al., 2017) as mmdet v1's ``nms_cpu.soft_nms``, which D2Det runs as its
final detection step (spec d2det.md §3.5 step 6: linear, IoU threshold 0.5, min score 1e-3).

The algorithm is inherently sequential; this reference reproduces the C++ loop of mmdet v1
step for step, including its bookkeeping, so that ties and drop order come out identical:

for ``i = 0, 1, ...`` while ``i < n`` (``n`` shrinks as boxes are dropped):

1. pick the first position in ``i..n-1`` with the highest current score and swap it with
   position ``i`` (it is kept, with its current score);
2. for every later position ``pos`` (``i+1..n-1``), in order: decay its score by
   ``w(IoU(box_i, box_pos))`` and, if the decayed score is ``< min_score``, drop it by
   copying the last live box into ``pos`` and shrinking ``n`` (the moved box is then
   processed at ``pos``).

Weights: ``linear``: ``1 - IoU`` if ``IoU > iou_threshold`` else 1; ``gaussian``:
``exp(-IoU^2 / sigma)`` (no threshold). IoU uses the legacy ``+1`` width/height when
``legacy_plus_one`` (areas ``(x2-x1+1)(y2-y1+1)``, intersection ``max(0, min-max+1)``).

As in mmdet v1, a box's score is only tested against ``min_score`` after a decay step, so
the box picked last (or a lone box) is kept even when its score is below ``min_score``.

Step 2's decay is vectorised over all later boxes (each is decayed exactly once per step,
whatever the drop order); only the O(n) drop/compaction bookkeeping runs in Python, once per
kept box. Works on CPU and GPU tensors (one host sync per kept box).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_nms", "batched_soft_nms"]

_METHODS = ("linear", "gaussian")


def _iou_one_to_many(box: Tensor, boxes: Tensor, offset: float) -> Tensor:
    """IoU of ``box`` [4] against ``boxes`` [M, 4] (xyxy, pixels), in the boxes' dtype.

    Arithmetic order follows mmdet v1's C++: areas are ``(x2-x1+o)*(y2-y1+o)``,
    ``inter = max(0, xx2-xx1+o) * max(0, yy2-yy1+o)``, ``iou = inter / (a_i + a_j - inter)``.
    """
    area_i = (box[2] - box[0] + offset) * (box[3] - box[1] + offset)
    areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    xx1 = torch.maximum(box[0], boxes[:, 0])
    yy1 = torch.maximum(box[1], boxes[:, 1])
    xx2 = torch.minimum(box[2], boxes[:, 2])
    yy2 = torch.minimum(box[3], boxes[:, 3])
    w = (xx2 - xx1 + offset).clamp(min=0)
    h = (yy2 - yy1 + offset).clamp(min=0)
    inter = w * h
    return inter / (area_i + areas - inter)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    min_score: float = 1e-3,
    method: str = "linear",
    legacy_plus_one: bool = True,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS over one set of boxes (one class).

    Args:
        boxes: ``[N, 4]`` float boxes ``(x1, y1, x2, y2)`` in pixels.
        scores: ``[N]`` float scores.
        iou_threshold: linear method only: boxes with IoU ``>`` this are decayed.
        sigma: gaussian method only: ``w = exp(-IoU^2 / sigma)``.
        min_score: a box whose score falls below this after a decay step is dropped.
        method: ``"linear"`` or ``"gaussian"``.
        legacy_plus_one: IoU with the ``+1`` pixel convention (mmdet v1, as D2Det uses).

    Returns:
        ``keep``: ``[K]`` int64 indices into the input, in selection order (non-increasing
        decayed score); ``new_scores``: ``[K]`` the decayed scores, dtype of ``scores``.
        Both on the input device. No gradient flows (the result is a selection).
        float16/bfloat16 boxes and scores are processed in float32 (IoUs and decays as for the
        float32 values they hold); only ``new_scores`` is cast back to the dtype of ``scores``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be [N] = [{boxes.shape[0]}], got {tuple(scores.shape)}")
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return (torch.empty(0, dtype=torch.long, device=device),
                torch.empty(0, dtype=scores.dtype, device=device))
    offset = 1.0 if legacy_plus_one else 0.0
    with torch.no_grad():
        work = torch.float32 if boxes.dtype in (torch.float16, torch.bfloat16) else boxes.dtype
        cur_boxes = boxes.detach().to(work).clone()
        cur_scores = scores.detach().to(work).clone()
        cur_inds = torch.arange(n, device=device)
        i = 0
        while i < n:
            # 1. first maximum among the live positions i..n-1 (argmax returns the first)
            m = i + int(torch.argmax(cur_scores[i:n]))
            if m != i:
                swap = torch.tensor([m, i], device=device)
                tgt = torch.tensor([i, m], device=device)
                cur_boxes[tgt] = cur_boxes[swap]
                cur_scores[tgt] = cur_scores[swap]
                cur_inds[tgt] = cur_inds[swap]
            if i + 1 >= n:
                break
            # 2. decay every later box once
            ov = _iou_one_to_many(cur_boxes[i], cur_boxes[i + 1:n], offset)
            if method == "linear":
                weight = torch.where(ov > iou_threshold, 1 - ov, torch.ones_like(ov))
            else:
                weight = torch.exp(-(ov * ov) / sigma)
            decayed = weight * cur_scores[i + 1:n]
            cur_scores[i + 1:n] = decayed
            dropped = (decayed < min_score).tolist()
            if any(dropped):
                # replay the C++ swap-with-last compaction to get the surviving order
                order = list(range(i + 1, n))
                pos, end = 0, len(order) - 1
                while pos <= end:
                    if dropped[order[pos] - i - 1]:
                        order[pos] = order[end]
                        end -= 1
                    else:
                        pos += 1
                live = torch.tensor(order[: end + 1], dtype=torch.long, device=device)
                new_n = i + 1 + live.numel()
                cur_boxes[i + 1:new_n] = cur_boxes[live]
                cur_scores[i + 1:new_n] = cur_scores[live]
                cur_inds[i + 1:new_n] = cur_inds[live]
                n = new_n
            i += 1
        return cur_inds[:n].clone(), cur_scores[:n].to(scores.dtype)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    min_score: float = 1e-3,
    method: str = "linear",
    legacy_plus_one: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-class Soft-NMS: :func:`soft_nms` run separately on each label's boxes, so boxes
    of different classes never decay each other (mmdet v1 ``multiclass_nms`` with a
    ``soft_nms`` config loops over classes the same way).

    Args:
        boxes: ``[N, 4]`` float xyxy boxes in pixels; scores: ``[N]``; labels: ``[N]`` int.
        Other arguments as in :func:`soft_nms`.

    Returns:
        ``keep``: ``[K]`` int64 indices into the input, sorted by decayed score, highest
        first (stable: ties keep ascending-label, then per-class selection order);
        ``new_scores``: ``[K]`` the decayed scores in the same order.
    """
    if labels.shape != scores.shape:
        raise ValueError("labels must have the same shape as scores")
    device = boxes.device
    if boxes.shape[0] == 0:
        return (torch.empty(0, dtype=torch.long, device=device),
                torch.empty(0, dtype=scores.dtype, device=device))
    keeps: list[Tensor] = []
    kept_scores: list[Tensor] = []
    for label in torch.unique(labels).tolist():  # loop over classes, not boxes
        idx = torch.nonzero(labels == label).squeeze(1)
        k, s = soft_nms(boxes[idx], scores[idx], iou_threshold, sigma, min_score, method,
                        legacy_plus_one)
        keeps.append(idx[k])
        kept_scores.append(s)
    keep = torch.cat(keeps)
    new_scores = torch.cat(kept_scores)
    order = torch.sort(new_scores, descending=True, stable=True).indices
    return keep[order], new_scores[order]
