"""Choosing the positive RoIs a second-stage localisation branch trains on.

D2Det's dense local regression, Grid R-CNN's grid branch and CPM R-CNN's first grid stage
all train on a subset of the classifier's sampled positives instead of on every sampled
RoI. The rules differ only in two knobs:

- **jitter**: each positive is jittered by ``U(-a, a)`` of its size (centre and size, then
  clipped to ``[0, W-1] x [0, H-1]``, :func:`random_jitter`)
  with ``a = 0.15`` (D2Det, mmdet / STVIR Grid R-CNN), or left as it is (CPM R-CNN,
  ``RANDOM_JITTER`` off; spec cpm_rcnn.md §6.9);
- **cap**: at most ``max_num`` RoIs of the *whole batch* (192: D2Det, mmdet Grid R-CNN's
  ``max_num_grid``), or at most ``max_num`` of *each image* (96: CPM's
  ``MAX_SAMPLE_NUM_GRID``; spec §6.8), drawn by a random permutation.

:func:`select_positive_rois` implements both. Random draws, in this order: the jitter
offsets of every image with positives (``torch.rand``, images in order), then the cap's
permutation(s) (``torch.randperm`` on CPU; batch scope: one, only when the batch has more
than ``max_num`` positives; image scope: one per image over the cap, images in order).
Everything uses torch's global RNG unless a ``generator`` is given, so a seed fixes the
result. With the batch scope and a jitter this is exactly what ``D2DetRoIHead`` did before
the function was shared (same draws, same order, same outputs).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from models.common.task_modules.samplers import SamplingResult

__all__ = ["CapScope", "clip_to_image", "random_jitter", "select_positive_rois"]

CapScope = Literal["batch", "image"]


def _image_hw(image_sizes_per_box: Tensor | tuple[int, int], n: int, like: Tensor) -> Tensor:
    """FloatTensor[n, 2] of (h, w) from a Tensor[n, 2] or one (h, w) for every box."""
    if isinstance(image_sizes_per_box, Tensor):
        hw = image_sizes_per_box.to(device=like.device, dtype=like.dtype).reshape(-1, 2)
        return hw.expand(n, 2) if hw.shape[0] == 1 else hw
    return like.new_tensor([float(image_sizes_per_box[0]), float(image_sizes_per_box[1])]).expand(n, 2)


def clip_to_image(boxes: Tensor, hw: Tensor) -> Tensor:
    """Clip FloatTensor[N, 4] to ``[0, w-1] x [0, h-1]`` (mmdet v1 ``img_shape - 1``)."""
    xmax = (hw[:, 1] - 1)[:, None]
    ymax = (hw[:, 0] - 1)[:, None]
    xs = torch.minimum(boxes[:, 0::2].clamp(min=0), xmax)
    ys = torch.minimum(boxes[:, 1::2].clamp(min=0), ymax)
    return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)


def random_jitter(boxes: Tensor, image_sizes_per_box: Tensor | tuple[int, int], amplitude: float = 0.15,
                  generator: torch.Generator | None = None) -> Tensor:
    """Jitter positive proposals before the DLR head (v1 ``_random_jitter``, §3.2).

    With ``w = |x2 - x1|``, ``h = |y2 - y1|`` and ``u ~ U(-amplitude, amplitude)^4`` per box:
    ``cx += w*u0``, ``cy += h*u1``, ``w *= 1 + u2``, ``h *= 1 + u3``; then clipped to
    ``[0, W-1] x [0, H-1]``.

    Args:
        boxes: FloatTensor[N, 4] in pixels.
        image_sizes_per_box: Tensor[N, 2] of (h, w) per box, or one (h, w).
        amplitude: half-width of the uniform jitter (relative to w, h).
        generator: optional RNG (the offsets are drawn on CPU, then moved).

    Returns:
        FloatTensor[N, 4] jittered boxes (no gradient to ``boxes`` is intended; detached).
    """
    boxes = boxes.detach()
    n = boxes.shape[0]
    u = (torch.rand((n, 4), generator=generator, dtype=torch.float32, device="cpu") * 2 - 1) * amplitude
    u = u.to(device=boxes.device, dtype=boxes.dtype)
    cxcy = (boxes[:, :2] + boxes[:, 2:4]) / 2
    wh = (boxes[:, 2:4] - boxes[:, :2]).abs()
    new_cxcy = cxcy + wh * u[:, :2]
    new_wh = wh * (1 + u[:, 2:])
    jittered = torch.cat([new_cxcy - new_wh / 2, new_cxcy + new_wh / 2], dim=1)
    return clip_to_image(jittered, _image_hw(image_sizes_per_box, n, boxes))


def _randperm_keep(n: int, max_num: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """LongTensor of the kept indices of ``n``: all of them in order when ``n <= max_num``,
    else the first ``max_num`` of a random permutation (drawn on CPU)."""
    if n <= max_num:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=generator, device="cpu")[:max_num].to(device)


def select_positive_rois(
    sampling_results: Sequence[SamplingResult],
    image_sizes: Sequence[tuple[int, int]],
    max_num: int | None = 192,
    cap_scope: CapScope = "batch",
    jitter_amplitude: float | None = 0.15,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The positives of every image, optionally jittered, capped per batch or per image.

    Args:
        sampling_results: per image, the classifier's sampled RoIs (positives first).
        image_sizes: unpadded (h, w) per image; bounds the jittered boxes.
        max_num: the cap (None: keep every positive).
        cap_scope: ``"batch"`` (at most ``max_num`` in all) or ``"image"`` (at most
            ``max_num`` per image).
        jitter_amplitude: relative jitter ``a`` (0.15), or None for no jitter (the boxes are
            then the positives unchanged, not clipped, and no random number is drawn for
            them). 0.0 still goes through the jitter (so the boxes are clipped).
        generator: optional CPU RNG for the jitter and the permutations (default: global).

    Returns:
        dict of the R kept RoIs, images in order (batch scope: in the permutation's order
        when capped; image scope: each image's in its permutation's order when capped):

        - ``rois`` FloatTensor[R, 5]: image index + (jittered) box in pixels;
        - ``gt_boxes`` FloatTensor[R, 4]: the matched gt box;
        - ``labels`` LongTensor[R]: its class;
        - ``gt_index`` LongTensor[R]: index of the matched gt within its image;
        - ``is_gt`` BoolTensor[R]: whether the RoI is a gt box added as a proposal.
    """
    if cap_scope not in ("batch", "image"):
        raise ValueError(f"cap_scope must be 'batch' or 'image', got {cap_scope!r}")
    if max_num is not None and max_num < 0:
        raise ValueError(f"max_num must be >= 0 or None, got {max_num}")
    if len(sampling_results) != len(image_sizes):
        raise ValueError(f"{len(sampling_results)} sampling results for {len(image_sizes)} image sizes")
    boxes, gts, labels, gt_index, is_gt, images = [], [], [], [], [], []
    for i, (res, (h, w)) in enumerate(zip(sampling_results, image_sizes)):
        pos = res.pos_boxes
        if jitter_amplitude is not None and pos.numel():
            pos = random_jitter(pos, (h, w), jitter_amplitude, generator=generator)
        boxes.append(pos.reshape(-1, 4))
        gts.append(res.pos_gt_boxes.reshape(-1, 4))
        labels.append(res.pos_gt_labels.reshape(-1))
        gt_index.append(res.pos_assigned_gt_inds.reshape(-1))
        is_gt.append(res.pos_is_gt.reshape(-1).to(torch.bool))
        images.append(torch.full((pos.shape[0],), i, dtype=torch.long, device=pos.device))
    all_boxes = torch.cat(boxes)
    device = all_boxes.device
    n = all_boxes.shape[0]
    if max_num is None:
        keep = torch.arange(n, device=device)
    elif cap_scope == "batch":
        keep = _randperm_keep(n, max_num, device, generator)
    else:
        parts, start = [], 0
        for b in boxes:
            parts.append(_randperm_keep(b.shape[0], max_num, device, generator) + start)
            start += b.shape[0]
        keep = torch.cat(parts) if parts else torch.zeros((0,), dtype=torch.long, device=device)
    img = torch.cat(images)[keep]
    return {
        "rois": torch.cat([img[:, None].to(all_boxes.dtype), all_boxes[keep]], dim=1),
        "gt_boxes": torch.cat(gts)[keep],
        "labels": torch.cat(labels)[keep],
        "gt_index": torch.cat(gt_index)[keep],
        "is_gt": torch.cat(is_gt)[keep],
    }
