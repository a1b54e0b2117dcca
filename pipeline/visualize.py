"""Pictures of detections: boxes, labels and masks drawn on images, and grids of them.

Small images (the synthetic set has a 160 px short side) are upscaled by an integer
factor before drawing, so that the short side is at least :data:`MIN_SHORT_SIDE` pixels
and the label text stays readable; boxes and masks are scaled with the image. Every
class has a fixed colour (:func:`class_color`), the same in every picture. Labels sit
just above their box (inside it only where the box touches the top of the image), so a
small object is not hidden under its own label.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks, make_grid

from pipeline.checkpoint import atomic_write_bytes
from pipeline.data.collate import collate_detection
from pipeline.evaluation import instance_masks, to_original_coords

MIN_SHORT_SIDE = 320
BOX_WIDTH = 2
GT_BOX_WIDTH = 1
GT_COLOR: tuple[int, int, int] = (255, 255, 255)
MASK_ALPHA = 0.45

# Sasha Trubetskoy's 20 distinct colours (white left out: ground truth is drawn in white).
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def class_color(label: int) -> tuple[int, int, int]:
    """The fixed RGB colour of contiguous class ``label``.

    The first 20 classes take a palette of distinct colours; later ones a hue stepped by
    the golden ratio, so the colour depends on the label alone.
    """
    if 0 <= label < len(_PALETTE):
        return _PALETTE[label]
    h = (label * 0.618033988749895) % 1.0
    s, v = 0.85, 0.95
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def upscale_factor(height: int, width: int, min_short_side: int = MIN_SHORT_SIDE) -> int:
    """The smallest integer factor that brings the short side to ``min_short_side`` (1 if it is already)."""
    short = min(int(height), int(width))
    if short <= 0:
        raise ValueError(f"image of size {width}x{height} has no pixels")
    return max(1, math.ceil(min_short_side / short))


def _upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of a [C, H, W] tensor to [C, H * factor, W * factor]."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str],
    masks: torch.Tensor | None = None,
    score_thr: float = 0.3,
    gt_boxes: torch.Tensor | None = None,
    points: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw the detections scoring at least ``score_thr`` on an (upscaled) copy of ``image``.

    Args:
        image: UInt8Tensor [3, H, W], RGB.
        boxes: FloatTensor [K, 4], xyxy pixels of ``image``.
        labels: LongTensor [K], contiguous class labels (index into ``class_names``).
        scores: FloatTensor [K].
        class_names: name of each contiguous label.
        masks: optional BoolTensor [K, H, W], one instance mask per detection.
        score_thr: detections scoring below it are not drawn.
        gt_boxes: optional FloatTensor [G, 4], xyxy pixels of ``image``; ground truth,
            drawn as thin white boxes under the detections.
        points: optional FloatTensor [K, N, 2], (x, y) pixels of ``image``: each detection's
            point set (Dense RepPoints), drawn as one-pixel dots in the class colour over the mask.

    Returns:
        UInt8Tensor [3, H * f, W * f] with f = :func:`upscale_factor` (H, W): the image
        upscaled (nearest neighbour), masks filled in the class colour, boxes outlined in
        the class colour and labelled ``"name 0.87"``; the highest score is drawn last.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a uint8 [3, H, W] tensor, got {image.dtype} {list(image.shape)}")
    h, w = int(image.shape[1]), int(image.shape[2])
    k = int(boxes.shape[0])
    if labels.shape[0] != k or scores.shape[0] != k or (masks is not None and masks.shape[0] != k):
        raise ValueError(
            f"boxes, labels, scores (and masks) must have one row per detection; got {k}, "
            f"{labels.shape[0]}, {scores.shape[0]}" + (f", {masks.shape[0]}" if masks is not None else "")
        )
    if masks is not None and tuple(masks.shape[1:]) != (h, w):
        raise ValueError(f"masks are {list(masks.shape[1:])} but the image is {[h, w]}")
    factor = upscale_factor(h, w)
    canvas = _upscale(image.detach().cpu(), factor)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32)

    def to_canvas(b: torch.Tensor) -> torch.Tensor:
        """[N, 4] image boxes -> [N, 4] canvas boxes, inside the canvas, x1 <= x2, y1 <= y2."""
        b = torch.minimum(b.detach().float().cpu().reshape(-1, 4).clamp(min=0), limit) * factor
        b = torch.minimum(b, torch.tensor([w * factor - 1, h * factor - 1] * 2, dtype=torch.float32))
        b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])
        return b

    if gt_boxes is not None and gt_boxes.numel():
        canvas = draw_bounding_boxes(canvas, to_canvas(gt_boxes), colors=GT_COLOR, width=GT_BOX_WIDTH)

    scores = scores.detach().float().cpu()
    keep = torch.nonzero(scores >= score_thr).flatten()
    keep = keep[torch.argsort(scores[keep])]  # ascending: the best detection ends up on top
    if keep.numel() == 0:
        return canvas
    labels_k = [int(v) for v in labels.detach().cpu()[keep]]
    colors = [class_color(lab) for lab in labels_k]
    if masks is not None:
        m = _upscale(masks.detach().cpu()[keep].bool(), factor)
        canvas = draw_segmentation_masks(canvas, m, alpha=MASK_ALPHA, colors=colors)
    if points is not None:
        for k, colour in zip(keep.tolist(), colors):
            pts = points[k].detach().float().cpu()
            pts = pts[torch.isfinite(pts).all(1)][None] * factor
            canvas = draw_keypoints(canvas, pts, colors=colour, radius=1)
    names = [class_names[lab] if 0 <= lab < len(class_names) else f"class {lab}" for lab in labels_k]
    text = [f"{n} {float(s):.2f}" for n, s in zip(names, scores[keep])]
    drawn = to_canvas(boxes[keep.to(boxes.device)])
    canvas = draw_bounding_boxes(canvas, drawn, colors=colors, width=BOX_WIDTH)
    return _draw_labels(canvas, drawn, text, colors)


def _draw_labels(
    canvas: torch.Tensor, boxes: torch.Tensor, texts: Sequence[str], colors: Sequence[tuple[int, int, int]]
) -> torch.Tensor:
    """Write ``texts`` on filled tags in ``colors`` just above ``boxes`` of a [3, H, W] uint8 canvas.

    ``boxes`` is (N, 4) xyxy canvas pixels. A tag goes inside the box's top edge when there
    is no room above it and is shifted left to stay inside the canvas. Returns a new
    [3, H, W] uint8 tensor. The font is Pillow's default, as torchvision draws with.
    """
    width = int(canvas.shape[2])
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for (x1, y1, _, _), text, colour in zip(boxes.tolist(), texts, colors):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 2, bottom - top + 2
        x = min(max(int(x1), 0), max(width - tag_w, 0))
        y = int(y1) - tag_h
        if y < 0:
            y = int(y1) + BOX_WIDTH
        draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=colour)
        draw.text((x + 1 - left, y + 1 - top), text, fill=_text_color(colour), font=font)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a UInt8Tensor [3, H, W] as a PNG, atomically (temp file + rename), creating parent folders."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a uint8 [3, H, W] tensor, got {image.dtype} {list(image.shape)}")
    path = Path(path)
    buf = io.BytesIO()
    Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _ground_truth_boxes(dataset: Any, idx: int) -> torch.Tensor:
    """FloatTensor [G, 4]: xyxy original-image boxes of the non-crowd annotations of image ``idx``."""
    anns = dataset.coco.imgToAnns.get(dataset.ids[idx], [])
    xywh = [a["bbox"] for a in anns if not a.get("iscrowd", 0)]
    b = torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    return b


def _pad_to(tile: torch.Tensor, height: int, width: int, value: int = 0) -> torch.Tensor:
    """Pad a [3, h, w] tile at the bottom and right to [3, height, width]."""
    return F.pad(tile, (0, width - tile.shape[2], 0, height - tile.shape[1]), value=value)


def draw_output(
    image: torch.Tensor,
    out: dict[str, torch.Tensor],
    target: dict[str, Any],
    class_names: Sequence[str],
    score_thr: float = 0.3,
    gt_boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one image's detector output on the ORIGINAL image.

    Args:
        image: UInt8Tensor [3, H0, W0], the original image.
        out: the detector's output for it (``boxes`` in resized-image pixels, ``scores``,
            ``labels``, optionally masks (``masks`` (K, 1, M, M) probabilities, or
            ``mask_points``: see :func:`pipeline.evaluation.instance_masks`) and ``points``
            (K, N, 2) resized-image pixels).
        target: the dataset target (``scale_factor``, ``orig_size``) that maps boxes back.
        gt_boxes: optional FloatTensor [G, 4] original-image boxes drawn thin white.
    Returns:
        UInt8Tensor [3, H, W], upscaled as :func:`draw_detections` does.
    """
    boxes = to_original_coords(out["boxes"], target["scale_factor"], target["orig_size"])
    scores = out["scores"].detach().float().cpu()
    labels = out["labels"].detach().cpu()
    masks = points = None
    keep = scores >= score_thr
    pasted = instance_masks(out, torch.nonzero(keep).squeeze(1), boxes[keep], target)
    if pasted is not None:
        masks = torch.from_numpy(pasted).bool()
    if "points" in out:
        sx, sy = (float(v) for v in target["scale_factor"][:2])
        points = out["points"][keep.to(out["points"].device)].detach().float().cpu() / torch.tensor([sx, sy])
    if masks is not None or points is not None:
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return draw_detections(image, boxes, labels, scores, list(class_names), masks=masks, score_thr=score_thr,
                           gt_boxes=gt_boxes, points=points)


@torch.no_grad()
def prediction_grid(
    model: torch.nn.Module,
    dataset: Any,
    cat_ids: Sequence[int],
    class_names: Sequence[str],
    device: torch.device,
    num_images: int = 8,
    ncols: int = 4,
    score_thr: float = 0.3,
    gt: bool = True,
    batch_size: int = 4,
    size_divisor: int = 32,
    padding: int = 4,
) -> torch.Tensor:
    """Run ``model`` on the first images of a test dataset and arrange the pictures in a grid.

    Args:
        model: a detector; in eval mode ``model(images, image_sizes, None)`` returns one
            dict per image with ``boxes`` (K, 4) xyxy resized-image pixels, ``scores``
            (K,), ``labels`` (K,) and optionally ``masks`` (K, 1, M, M) probabilities in
            box coordinates. It is put in eval mode.
        dataset: a test-transform :class:`~pipeline.data.dataset.CocoDetectionDataset`.
        cat_ids: contiguous label -> COCO category id the model was trained with; must
            equal the dataset's.
        class_names: name of each contiguous label.
        device: where the model runs.
        num_images: the first ``num_images`` images of the dataset (fewer if it is smaller).
        ncols: tiles per grid row.
        score_thr: detections scoring below it are not drawn.
        gt: also draw the non-crowd ground-truth boxes (thin white).
        batch_size: images per forward pass.
        size_divisor: batch padding, as in the model's data configuration.
        padding: pixels between tiles (black).

    Returns:
        UInt8Tensor [3, rows * (Ht + padding) + padding, cols * (Wt + padding) + padding]
        with cols = min(ncols, n), rows = ceil(n / cols), and (Ht, Wt) the largest drawn
        tile (each image on its original pixels, upscaled by :func:`draw_detections`;
        smaller tiles are padded at the bottom/right). A single image is returned as its
        tile without padding (``make_grid``'s convention).
    """
    if list(dataset.cat_ids) != list(cat_ids):
        raise ValueError(f"the dataset's categories {list(dataset.cat_ids)} differ from the model's {list(cat_ids)}")
    n = min(int(num_images), len(dataset))
    if n <= 0:
        raise ValueError("prediction_grid needs at least one image")
    model.eval()
    tiles: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        idxs = list(range(start, min(start + batch_size, n)))
        images, image_sizes, targets = collate_detection([dataset[i] for i in idxs], size_divisor=size_divisor)
        outputs = model(images.to(device), image_sizes, None)
        for idx, out, tgt in zip(idxs, outputs, targets):
            image = torch.from_numpy(dataset.load_image(idx).copy()).permute(2, 0, 1).contiguous()
            tiles.append(
                draw_output(image, out, tgt, class_names, score_thr,
                            gt_boxes=_ground_truth_boxes(dataset, idx) if gt else None)
            )
    th = max(t.shape[1] for t in tiles)
    tw = max(t.shape[2] for t in tiles)
    return make_grid([_pad_to(t, th, tw) for t in tiles], nrow=ncols, padding=padding, pad_value=0)
