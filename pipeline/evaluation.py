"""COCO evaluation: detections to COCO result records, COCOeval's 12 numbers, result files.

Detector outputs are in the coordinates of the resized input image; they are mapped back
to the original image by the dataset's ``scale_factor`` and clipped to it. Masks, when a
model predicts them, arrive as ``(K, 1, M, M)`` probabilities in box coordinates and are
pasted into the original image, thresholded at 0.5 and RLE-encoded.

Scoring (:func:`coco_evaluate`) runs one of two engines (``evaluate.engine`` in params.yaml):
``faster`` (default), faster-coco-eval's ``COCOeval_faster`` (per-image matching and
accumulation in C++), or ``pycocotools``, pycocotools' own Python ``COCOeval``, the reference.
Both read the same pycocotools ``COCO`` objects (ground truth and ``gt.loadRes(results)``) and
give the same 12 numbers; ``tests/test_coco_eval_engines.py`` checks them, the precision and the
recall arrays against each other. Result records are checked before either sees them
(:func:`check_result_records`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.dense_reppoints.mask_from_points import points_to_full_masks
from pipeline.checkpoint import atomic_write_bytes, atomic_write_text
from pipeline.errors import ConfigError, DataError, short_repr

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

#: ``evaluate.engine`` values: faster-coco-eval's C++ COCOeval (default) and pycocotools' Python
#: COCOeval (the reference).
ENGINES: tuple[str, ...] = ("faster", "pycocotools")
DEFAULT_ENGINE = "faster"

#: pycocotools' summary lines, one per number of :data:`STAT_NAMES`: (AP or AR, IoU, area, maxDets)
SUMMARY_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100),
)


def to_original_coords(
    boxes: torch.Tensor, scale_factor: torch.Tensor, orig_size: tuple[int, int]
) -> torch.Tensor:
    """Map ``(K, 4)`` xyxy boxes from the resized image back to the original image.

    Args:
        boxes: (K, 4) pixels in the resized image.
        scale_factor: (2,) = (sx, sy), original -> resized.
        orig_size: (h0, w0) of the original image.
    Returns:
        (K, 4) xyxy pixels in the original image, clipped to it.
    """
    sx, sy = float(scale_factor[0]), float(scale_factor[1])
    out = boxes.detach().float().cpu().clone()
    out[:, 0::2] /= sx
    out[:, 1::2] /= sy
    h0, w0 = orig_size
    out[:, 0::2] = out[:, 0::2].clamp(0, w0)
    out[:, 1::2] = out[:, 1::2].clamp(0, h0)
    return out


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, orig_size: tuple[int, int],
                chunk: int = 1) -> np.ndarray:
    """Paste ``(K, 1, M, M)`` mask probabilities at ``(K, 4)`` original-image boxes.

    Every image pixel ``(u, v)`` (covering ``[u, u + 1) x [v, v + 1)``) inside a box takes the
    bilinearly interpolated probability at its centre ``(u + 0.5, v + 0.5)``, where mask cell
    ``i`` covers ``[x1 + i w / M, x1 + (i + 1) w / M)`` of the exact (fractional) box
    (``grid_sample`` with ``align_corners=False``, zeros outside the box), then ``>= 0.5``.
    This is detectron2's paste; torchvision's ``paste_masks_in_image`` (used before) rounds the
    box to whole pixels and resizes onto ``x2 - x1 + 1`` of them, one pixel too wide, which
    costs small objects several IoU points. Boxes are pasted ``chunk`` at a time (default one,
    as detectron2 does on CPU), each chunk only over the pixels its boxes cover: 100 boxes of
    16-600 px in an 800 x 1333 image take ~45 ms one by one and ~0.8 s in chunks of 16, whose
    joint region is most of the image.

    Returns a ``(K, h0, w0)`` uint8 array of binary masks.
    """
    h0, w0 = orig_size
    k = mask_probs.shape[0]
    out = np.zeros((k, h0, w0), dtype=np.uint8)
    if k == 0 or h0 <= 0 or w0 <= 0:
        return out
    probs = mask_probs.detach().float().cpu()
    bx = boxes.detach().to(torch.float64).cpu().reshape(-1, 4)
    for s in range(0, k, chunk):
        b, m = bx[s:s + chunk], probs[s:s + chunk]
        x0 = int(min(max(np.floor(float(b[:, 0].min())), 0), w0))
        y0 = int(min(max(np.floor(float(b[:, 1].min())), 0), h0))
        x1 = int(min(max(np.ceil(float(b[:, 2].max())), x0), w0))
        y1 = int(min(max(np.ceil(float(b[:, 3].max())), y0), h0))
        if x1 <= x0 or y1 <= y0:
            continue
        xs = torch.arange(x0, x1, dtype=torch.float64) + 0.5
        ys = torch.arange(y0, y1, dtype=torch.float64) + 0.5
        bw = (b[:, 2] - b[:, 0]).clamp(min=1e-6)[:, None]
        bh = (b[:, 3] - b[:, 1]).clamp(min=1e-6)[:, None]
        gx = ((xs[None] - b[:, 0:1]) / bw * 2 - 1).float()  # [k, W']
        gy = ((ys[None] - b[:, 1:2]) / bh * 2 - 1).float()  # [k, H']
        grid = torch.stack([gx[:, None, :].expand(-1, len(ys), -1), gy[:, :, None].expand(-1, -1, len(xs))], dim=-1)
        pasted = torch.nn.functional.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[s:s + len(b), y0:y1, x0:x1] = (pasted[:, 0] >= 0.5).numpy()
    return out


def instance_masks(output: dict[str, torch.Tensor], order: torch.Tensor, boxes: torch.Tensor,
                   target: dict[str, Any]) -> np.ndarray | None:
    """Binary masks ``(K, h0, w0)`` uint8 of the detections ``order`` of one image's output, in
    the original image; ``None`` when the model predicts no masks.

    ``boxes``: the same detections' boxes in original-image pixels (:func:`to_original_coords`).
    Two representations: ``masks`` (K, 1, M, M) probabilities over each box, pasted by
    :func:`paste_masks`; or ``mask_points`` (K, N, 2) resized-image (x, y) with
    ``mask_point_scores`` (K, N) (Dense RepPoints with ``mask_resolution: full``), mapped to the
    original image and interpolated at every pixel of the box there, thresholded at 0.5, as the
    reference's ``get_seg_masks`` (:func:`~models.dense_reppoints.mask_from_points.points_to_full_masks`).
    """
    if "masks" in output:
        return paste_masks(output["masks"][order.to(output["masks"].device)], boxes, target["orig_size"])
    if "mask_points" in output:
        sx, sy = (float(v) for v in target["scale_factor"])
        points = output["mask_points"][order.to(output["mask_points"].device)].detach().float().cpu()
        points = points / torch.tensor([sx, sy])
        scores = output["mask_point_scores"][order.to(output["mask_point_scores"].device)].detach().cpu()
        return points_to_full_masks(points, scores, boxes, target["orig_size"]).astype(np.uint8)
    return None


def detections_to_coco(
    output: dict[str, torch.Tensor],
    target: dict[str, Any],
    cat_ids: list[int],
    max_dets: int = 100,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Turn one image's detector output into COCO bbox (and segm) result records.

    Args:
        output: ``boxes`` (K,4) resized-image xyxy, ``scores`` (K,), ``labels`` (K,)
            contiguous, optionally ``masks`` (K,1,M,M) probabilities (or ``mask_points`` and
            ``mask_point_scores``, see :func:`instance_masks`) and ``mask_scores``
            (K,) (the segm records' scores; the box scores by default).
        target: the dataset's target for the image (``image_id``, ``scale_factor``,
            ``orig_size``).
        cat_ids: contiguous label -> COCO category id.
        max_dets: keep at most this many, highest score first (COCO's cap is 100).
    Returns:
        (bbox records, segm records); segm is empty when the model predicts no masks.
    """
    scores = output["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True)[:max_dets]
    scores = scores[order]
    labels = output["labels"].detach().cpu()[order]
    boxes = to_original_coords(output["boxes"][order.to(output["boxes"].device)], target["scale_factor"], target["orig_size"])
    image_id = int(target["image_id"])
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    bbox_records = [
        {
            "image_id": image_id,
            "category_id": int(cat_ids[int(l)]),
            "bbox": [round(float(v), 2) for v in b],
            "score": round(float(s), 5),
        }
        for b, s, l in zip(xywh.tolist(), scores.tolist(), labels.tolist())
    ]
    segm_records: list[dict[str, Any]] = []
    masks = instance_masks(output, order, boxes, target)
    if masks is not None:
        mask_scores = scores
        if "mask_scores" in output:  # e.g. D2Det: class score + 0.3 * predicted mask IoU
            mask_scores = output["mask_scores"].detach().float().cpu()[order]
        if len(masks):
            rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
            for rle, s, l in zip(rles, mask_scores.tolist(), labels.tolist()):
                rle["counts"] = rle["counts"].decode("ascii")
                segm_records.append(
                    {"image_id": image_id, "category_id": int(cat_ids[int(l)]), "segmentation": rle, "score": round(float(s), 5)}
                )
    return bbox_records, segm_records


def load_coco_quietly(ann_file: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` over a deep copy of an in-memory COCO ``dataset`` (``images``,
    ``annotations``, ``categories``), indexed quietly; the caller's dict is never touched."""
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def check_engine(engine: str) -> str:
    """``engine`` when it is one of :data:`ENGINES`, else a :class:`ConfigError` naming the
    setting (``evaluate.engine``) and the choices."""
    if engine not in ENGINES:
        raise ConfigError(f"evaluate.engine: {short_repr(engine)} is not one of {list(ENGINES)}")
    return engine


def _finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _record_problem(record: Any, iou_type: str, gt: COCO) -> str | None:
    """What is wrong with one result record, or None (see :func:`check_result_records`)."""
    if not isinstance(record, dict):
        return f"not a mapping but {type(record).__name__}"
    for key in ("image_id", "category_id", "score"):
        if key not in record:
            return f"no '{key}'"
    image_id, category_id = record["image_id"], record["category_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral) or image_id not in gt.imgs:
        return f"image_id {short_repr(image_id)} is not an image of the ground truth"
    if isinstance(category_id, bool) or not isinstance(category_id, numbers.Integral) or category_id not in gt.cats:
        return f"category_id {short_repr(category_id)} is not a category of the ground truth"
    if not _finite_number(record["score"]):
        return f"score {short_repr(record['score'])} is not a finite number"
    if iou_type == "bbox" or "bbox" in record:
        box = record.get("bbox")
        if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:  # an array: loadRes adds one
            return f"bbox {short_repr(box)} is not [x, y, width, height]"
        if not all(_finite_number(v) for v in list(box)):
            return f"bbox {short_repr(box)} has a value that is not a finite number"
        if box[2] < 0 or box[3] < 0:
            return f"bbox {short_repr(box)} has a negative width or height"
    if iou_type == "segm":
        seg = record.get("segmentation")
        img = gt.imgs[image_id]
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            return f"segmentation {short_repr(seg)} is not an RLE mapping with 'counts' and 'size'"
        if not isinstance(seg["counts"], (str, bytes)):
            return f"segmentation counts is {type(seg['counts']).__name__}, not a compressed RLE string"
        if not isinstance(seg["size"], (list, tuple)) or list(seg["size"]) != [img.get("height"), img.get("width")]:
            return (f"segmentation size {short_repr(seg['size'])} differs from the image's "
                    f"[height, width] {[img.get('height'), img.get('width')]}")
    return None


def check_result_records(records: Any, gt: COCO, iou_type: str = "bbox", source: str | None = None) -> None:
    """Refuse result records that COCOeval would silently mis-score or crash on.

    Each record needs an integer ``image_id`` of an image of ``gt``, an integer ``category_id``
    of a category of ``gt``, a finite ``score`` and, for ``iou_type`` ``"bbox"`` (or whenever the
    record has one), a ``bbox`` of 4 finite numbers ``[x, y, w, h]`` in pixels with ``w, h >= 0``;
    for ``"segm"`` a ``segmentation``: a compressed RLE mapping (``counts`` a string) whose
    ``size`` is the image's ``[height, width]`` (what :func:`detections_to_coco` writes;
    pycocotools' ``loadRes`` takes no polygons for results).

    Raises :class:`~pipeline.errors.DataError` at the first bad record, naming ``source`` (the
    result file or where the records came from), the record's index, ``image_id`` and
    ``category_id``, and what is wrong.
    """
    where = source or "result records"
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of result records, got {type(records).__name__}")
    for index, record in enumerate(records):
        problem = _record_problem(record, iou_type, gt)
        if problem is not None:
            ids = ""
            if isinstance(record, dict):
                ids = (f" (image_id {short_repr(record.get('image_id'))}, "
                       f"category_id {short_repr(record.get('category_id'))})")
            raise DataError(f"{where}: result record {index}{ids}: {problem}")


def summary_text(stats: dict[str, float], iou_type: str, engine: str) -> str:
    """pycocotools' 12 summary lines for ``stats`` (by :data:`STAT_NAMES`), after a line naming
    the engine. The same text for either engine when the numbers are the same (no timings)."""
    lines = [f"COCO {iou_type} evaluation, engine {engine}"]
    for name, (kind, iou, area, max_dets) in zip(STAT_NAMES, SUMMARY_ROWS):
        title = "Average Precision" if kind == "AP" else "Average Recall"
        lines.append(f" {title:<18} ({kind}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = "
                     f"{stats[name]:0.3f}")
    return "\n".join(lines) + "\n"


def make_coco_eval(gt: COCO, dt: COCO, iou_type: str, engine: str = DEFAULT_ENGINE):
    """The evaluator of ``engine`` (:data:`ENGINES`) for ground truth ``gt`` and detections ``dt``
    (both pycocotools ``COCO``; ``dt`` from ``gt.loadRes``), not yet run.

    ``faster``: ``faster_coco_eval.COCOeval_faster`` (reads pycocotools ``COCO`` objects as
    they are; it adds ``ignore`` and, for segm, a cached ``rle`` to the ground-truth annotation
    dicts, as pycocotools' own ``evaluate`` adds ``ignore`` and turns polygons into RLE there).
    ``pycocotools``: ``pycocotools.cocoeval.COCOeval``. Either, after ``evaluate()``,
    ``accumulate()`` and ``summarize()``, has ``stats`` (12,), ``eval["precision"]``
    [T=10 IoUs, R=101 recalls, K categories, A=4 areas, M=3 maxDets], ``eval["recall"]``
    [T, K, A, M] (-1 where there is no ground truth) and ``params.recThrs`` (101,).
    """
    check_engine(engine)
    if engine == "pycocotools":
        return COCOeval(gt, dt, iou_type)
    from faster_coco_eval import COCOeval_faster

    return COCOeval_faster(gt, dt, iou_type, print_function=print)


def coco_evaluate(
    gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int] | None = None,
    engine: str = DEFAULT_ENGINE, source: str | None = None,
) -> tuple[dict[str, float], Any, str]:
    """Run COCOeval and return its 12 summary numbers.

    Args:
        gt: ground truth.
        results: COCO result records (``bbox`` or ``segmentation`` per ``iou_type``), checked
            first by :func:`check_result_records` (a bad one is a DataError naming ``source``).
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: restrict evaluation to these images (all ground-truth images if None).
        engine: ``"faster"`` (faster-coco-eval, default) or ``"pycocotools"`` (the reference);
            :func:`make_coco_eval`. Anything else is a ConfigError.
        source: the result file or where the records came from, for error messages.
    Returns:
        (stats by name, the evaluator (COCOeval or COCOeval_faster; ``.eval["precision"]``
        [T, R, K, A, M]) or None when there were no detections, the summary text:
        :func:`summary_text`). With no detections every number is 0.0, as COCO would score it.
    """
    check_engine(engine)
    check_result_records(results, gt, iou_type, source)
    if not results:
        return {k: 0.0 for k in STAT_NAMES}, None, "no detections: every metric is 0\n"
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes writes into each record (id, area, a numpy bbox for segm): give it copies, so
        # the caller's records can be written or scored again unchanged.
        dt = gt.loadRes([dict(r) for r in results])
    ev = make_coco_eval(gt, dt, iou_type, engine)
    if image_ids is not None:
        ev.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    return stats, ev, summary_text(stats, iou_type, engine)


def submission_name(model_name: str, split: str = "test-dev2017", suffix: str = "") -> str:
    """COCO's result file name, ``detections_<split>_<alg>_results.json``.

    The evaluation server splits the name on ``_``, so underscores in the algorithm name
    become ``-``.
    """
    alg = model_name.replace("_", "-") + suffix
    return f"detections_{split}_{alg}_results.json"


def write_results(records: list[dict[str, Any]], path: Path, zip_it: bool = False) -> list[Path]:
    """Write result records as JSON (and, for a submission, a zip holding that JSON)."""
    text = json.dumps(records, separators=(",", ":"))
    atomic_write_text(path, text)
    written = [path]
    if zip_it:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo(path.name, date_time=(2017, 1, 1, 0, 0, 0))  # fixed date: reproducible bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
        zpath = path.with_suffix(".zip")
        atomic_write_bytes(zpath, buf.getvalue())
        written.append(zpath)
    return written
