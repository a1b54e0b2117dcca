"""The two COCO evaluation engines (``evaluate.engine``) against each other: faster-coco-eval's
``COCOeval_faster`` and pycocotools' ``COCOeval`` (the reference), for bbox and segm.

Per case both engines score the same result records against their own copy of the same ground
truth (each engine adds keys to the annotation dicts it reads: separate copies keep one from
feeding the other). Compared: the 12 summary numbers, ``eval["recall"]`` [T, K, A, M],
``eval["precision"]`` [T=10, R=101, K, A=4, M=3] and ``eval["scores"]`` (same shape).

Exact, bit for bit: the recall and scores arrays, and every precision value but one kind.
pycocotools computes precision as ``tp / (tp + fp + np.spacing(1))``, faster-coco-eval's C++ as
``tp / (tp + fp)``. With ``n = tp + fp`` a whole number, ``n + 2**-52`` rounds back to ``n`` for
every ``n >= 2``, so the two differ only at ``n = 1`` with a true positive: ``1 / (1 + 2**-52) =
1 - 2**-52 = 0.9999999999999998`` in the reference, ``1.0`` in the faster engine. After the
interpolation (running maximum) the reference keeps ``1 - 2**-52`` wherever the first detection
of a list was its only point of precision 1. So wherever the precision arrays differ here, the
reference holds exactly ``1 - 2**-52`` and the faster engine exactly ``1.0`` (asserted as such;
thousands of entries per case), and nowhere else.

The 12 summary numbers are means over those arrays, so they can differ by as much: the largest
difference seen over these cases (and five random seeds tried while writing them) is
``2**-53 = 1.11e-16`` (e.g. APl 0.4999999999999999 vs 0.5; AP50 0.4215812885636389 vs
0.42158128856363897), about half the cases are identical. They are compared with
``atol=2**-52, rtol=0``, the bound the arrays give (each mean moves by at most the largest
element difference); the metrics files keep 6 decimals.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest

from pipeline.evaluation import ENGINES, STAT_NAMES, coco_evaluate, coco_from_dict
from pipeline.figures import pr_curves
from tests.conftest import COCO_MINI

#: the one precision value on which the engines differ: 1 in the faster engine, this in the reference
REFERENCE_ONE = 1.0 / (1.0 + np.spacing(1))  # 1 - 2**-52
#: the largest difference allowed between the engines' summary numbers (see the docstring)
STATS_ATOL = 2.0 ** -52


def compare_engines(dataset: dict, results: list[dict], iou_type: str, image_ids: list[int] | None = None) -> dict:
    """Score ``results`` with both engines; assert they agree (module docstring); return the
    reference's stats."""
    out = {}
    for engine in ENGINES:
        stats, ev, text = coco_evaluate(coco_from_dict(dataset), copy.deepcopy(results), iou_type, image_ids, engine=engine)
        assert ev is not None and list(stats) == list(STAT_NAMES)
        out[engine] = (stats, ev, text)
    (ref_stats, ref, ref_text), (fast_stats, fast, fast_text) = out["pycocotools"], out["faster"]
    np.testing.assert_allclose([fast_stats[k] for k in STAT_NAMES], [ref_stats[k] for k in STAT_NAMES],
                               rtol=0, atol=STATS_ATOL)
    assert fast_text.splitlines()[1:] == ref_text.splitlines()[1:]  # the same 12 lines; the first names the engine
    rp, fp = ref.eval["precision"], fast.eval["precision"]
    assert rp.shape == fp.shape == (10, 101, len(ref.params.catIds), 4, 3)
    differ = rp != fp
    assert REFERENCE_ONE == 1 - 2.0 ** -52
    assert np.all(rp[differ] == REFERENCE_ONE) and np.all(fp[differ] == 1.0)
    np.testing.assert_array_equal(np.where(differ, 1.0, rp), fp)
    np.testing.assert_array_equal(fast.eval["recall"], ref.eval["recall"])
    np.testing.assert_array_equal(fast.eval["scores"], ref.eval["scores"])
    np.testing.assert_array_equal(fast.params.recThrs, ref.params.recThrs)
    ref_curves, fast_curves = pr_curves(ref), pr_curves(fast)
    assert list(ref_curves) == list(fast_curves)
    for key in ref_curves:  # means of the precision arrays: as close as the summary numbers
        np.testing.assert_allclose(fast_curves[key], ref_curves[key], rtol=0, atol=STATS_ATOL)
    return ref_stats


def box_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def star_polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 10) -> list[list[float]]:
    """A star-shaped polygon of ``n`` vertices around (cx, cy), radii up to (rx, ry) pixels."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.5, 1.0, n)
    xs, ys = cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)
    return [[round(float(v), 2) for xy in zip(xs, ys) for v in xy]]


def rle_of(segmentation, h: int, w: int) -> dict:
    """Compressed RLE (counts as str) of polygons or a binary ``(h, w)`` mask."""
    if isinstance(segmentation, np.ndarray):
        rle = mask_util.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    else:
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def annotation(ann_id: int, image_id: int, cat: int, seg, h: int, w: int, iscrowd: int = 0) -> dict:
    """A ground-truth annotation with COCO's area (mask pixels) and bbox (from the mask)."""
    rle = seg if isinstance(seg, dict) else rle_of(seg, h, w)
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": iscrowd,
            "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)]}


def segm_results(bbox_results: list[dict], images: dict[int, dict]) -> list[dict]:
    """segm records from bbox records: each box's rectangle as an RLE mask, same score."""
    out = []
    for r in bbox_results:
        img = images[r["image_id"]]
        rle = rle_of(box_polygon(*r["bbox"]), img["height"], img["width"])
        out.append({"image_id": r["image_id"], "category_id": r["category_id"], "segmentation": rle, "score": r["score"]})
    return out


def hand_made_case() -> tuple[dict, list[dict]]:
    """Ground truth and bbox results exercising COCOeval's corners.

    Categories 2, 7, 40, 90 (non-contiguous; 90 has no ground truth: -1 precision). Images of
    200 x 300 px:
      1: a medium (40x50) and a small (20x20) object, a crowd region (RLE) with two detections
         inside it (ignored, not false positives), a false positive, a tie in score;
      2: no ground truth, two detections (false positives);
      3: ground truth (one large object), no detections;
      4: a large and a medium object of category 40 and 150 detections (over the 100 cap);
      5: a crowd region given as a polygon, a detection in it and one true positive.
    """
    h, w = 200, 300
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i in (1, 2, 3, 4, 5)]
    crowd_mask = np.zeros((h, w), np.uint8)
    crowd_mask[110:190, 150:290] = 1
    crowd_mask[120:140, 160:200] = 0  # a hole: RLE with several runs
    anns = [
        annotation(1, 1, 2, box_polygon(10, 10, 40, 50), h, w),
        annotation(2, 1, 7, box_polygon(100, 20, 20, 20), h, w),
        annotation(3, 1, 2, rle_of(crowd_mask, h, w), h, w, iscrowd=1),
        annotation(4, 3, 7, box_polygon(20, 20, 150, 120), h, w),
        annotation(5, 4, 40, box_polygon(30, 30, 140, 110), h, w),
        annotation(6, 4, 40, box_polygon(200, 40, 60, 50), h, w),
        annotation(7, 5, 2, box_polygon(150, 100, 120, 80), h, w, iscrowd=1),
        annotation(8, 5, 2, box_polygon(20, 20, 30, 30), h, w),
    ]
    cats = [{"id": c, "name": f"c{c}", "supercategory": "thing"} for c in (2, 7, 40, 90)]
    dataset = {"images": images, "annotations": anns, "categories": cats}
    res = [
        {"image_id": 1, "category_id": 2, "bbox": [11, 9, 39, 52], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [101, 22, 18, 19], "score": 0.7},
        {"image_id": 1, "category_id": 2, "bbox": [160, 150, 60, 30], "score": 0.95},  # in the crowd: ignored
        {"image_id": 1, "category_id": 2, "bbox": [200, 115, 80, 70], "score": 0.7},  # in the crowd, tied score
        {"image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "score": 0.8},  # false positive
        {"image_id": 1, "category_id": 90, "bbox": [10, 10, 40, 50], "score": 0.6},  # category without ground truth
        {"image_id": 2, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.85},
        {"image_id": 2, "category_id": 7, "bbox": [50, 50, 10, 8], "score": 0.3},
        {"image_id": 5, "category_id": 2, "bbox": [160, 110, 100, 60], "score": 0.99},  # in the polygon crowd
        {"image_id": 5, "category_id": 2, "bbox": [22, 19, 28, 31], "score": 0.5},
    ]
    rng = np.random.default_rng(17)
    res.append({"image_id": 4, "category_id": 40, "bbox": [32, 28, 138, 113], "score": 0.5})
    res.append({"image_id": 4, "category_id": 40, "bbox": [198, 41, 61, 50], "score": 0.02})  # ranks past 100
    for _ in range(148):  # 150 detections on image 4 in all
        x, y = rng.uniform(0, 250), rng.uniform(0, 160)
        bw, bh = rng.uniform(5, 60, 2)
        res.append({"image_id": 4, "category_id": 40, "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                    "score": round(float(rng.uniform(0.03, 0.9)), 3)})
    return dataset, res


def random_case(seed: int = 0, num_images: int = 30) -> tuple[dict, list[dict], list[dict]]:
    """Seeded random ground truth (star polygons, 0-12 per image, some crowd; 5 categories with
    ids 1, 3, 8, 21, 56; images of assorted sizes) and results: each object found with
    probability 0.8 (perturbed polygon, mask and box from it), plus 0-8 random false positives
    per image; scores rounded to 2 decimals (ties). Returns (dataset, bbox results, segm results)."""
    rng = np.random.default_rng(seed)
    cats = [1, 3, 8, 21, 56]
    images, anns, bbox_res, segm_res = [], [], [], []
    ann_id = 1
    for image_id in range(1, num_images + 1):
        h, w = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        for _ in range(int(rng.integers(0, 13))):
            cat = int(rng.choice(cats))
            size = float(np.exp(rng.uniform(np.log(6), np.log(min(h, w) / 1.5))))
            cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
            poly = star_polygon(rng, cx, cy, size / 2, size / 2 * rng.uniform(0.6, 1.4))
            crowd = int(rng.uniform() < 0.06)
            anns.append(annotation(ann_id, image_id, cat, rle_of(poly, h, w) if crowd else poly, h, w, iscrowd=crowd))
            ann_id += 1
            if rng.uniform() < 0.8:
                shift = rng.normal(0, size * 0.08, 2)
                det_poly = star_polygon(rng, cx + shift[0], cy + shift[1], size / 2 * rng.uniform(0.8, 1.2),
                                        size / 2 * rng.uniform(0.8, 1.2))
                rle = rle_of(det_poly, h, w)
                score = round(float(rng.uniform(0.05, 1.0)), 2)
                bbox = [round(float(v), 2) for v in mask_util.toBbox(rle)]
                bbox_res.append({"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score})
                segm_res.append({"image_id": image_id, "category_id": cat, "segmentation": rle, "score": score})
        for _ in range(int(rng.integers(0, 9))):
            cat = int(rng.choice(cats))
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            score = round(float(rng.uniform(0.0, 0.9)), 2)
            bbox_res.append({"image_id": image_id, "category_id": cat, "bbox": [x, y, bw, bh], "score": score})
            segm_res.append({"image_id": image_id, "category_id": cat, "score": score,
                             "segmentation": rle_of(box_polygon(x, y, bw, bh), h, w)})
    categories = [{"id": c, "name": f"c{c}", "supercategory": "thing"} for c in cats]
    return {"images": images, "annotations": anns, "categories": categories}, bbox_res, segm_res


def coco_mini_case(seed: int = 3) -> tuple[dict, list[dict], list[dict]]:
    """The coco_mini annotations (train and val: 6 real COCO images, crowd RLE included) with
    detections synthesized from them: each non-crowd object's box jittered and its mask shifted
    by a few pixels (found with probability 0.85), plus 3 random false positives per image."""
    rng = np.random.default_rng(seed)
    dataset: dict = {"images": [], "annotations": [], "categories": None}
    for name in ("instances_train2017.json", "instances_val2017.json"):
        part = json.loads((COCO_MINI / "annotations" / name).read_text())
        dataset["images"] += part["images"]
        dataset["annotations"] += part["annotations"]
        dataset["categories"] = part["categories"]
    gt = coco_from_dict(dataset)
    cat_ids = sorted(gt.cats)
    bbox_res, segm_res = [], []
    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) or rng.uniform() > 0.85:
            continue
        img = gt.imgs[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        jitter = rng.normal(0, 0.06, 4) * [bw, bh, bw, bh]
        box = [x + jitter[0], y + jitter[1], max(bw + jitter[2], 1.0), max(bh + jitter[3], 1.0)]
        score = round(float(rng.uniform(0.1, 1.0)), 3)
        bbox_res.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "bbox": [round(float(v), 2) for v in box], "score": score})
        mask = np.roll(gt.annToMask(ann), tuple(int(v) for v in rng.integers(-3, 4, 2)), axis=(0, 1))
        segm_res.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "segmentation": rle_of(mask, img["height"], img["width"]), "score": score})
    for img in dataset["images"]:
        for _ in range(3):
            bw, bh = rng.uniform(10, img["width"] / 3), rng.uniform(10, img["height"] / 3)
            x, y = rng.uniform(0, img["width"] - bw), rng.uniform(0, img["height"] - bh)
            cat, score = int(rng.choice(cat_ids)), round(float(rng.uniform(0, 0.6)), 3)
            bbox_res.append({"image_id": img["id"], "category_id": cat, "bbox": [x, y, bw, bh], "score": score})
            segm_res.append({"image_id": img["id"], "category_id": cat, "score": score,
                             "segmentation": rle_of(box_polygon(x, y, bw, bh), img["height"], img["width"])})
    return dataset, bbox_res, segm_res


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_hand_made_corner_cases_score_the_same(iou_type):
    dataset, res = hand_made_case()
    images = {img["id"]: img for img in dataset["images"]}
    results = res if iou_type == "bbox" else segm_results(res, images)
    stats = compare_engines(dataset, results, iou_type)
    assert stats["APs"] > -1 and stats["APm"] > -1 and stats["APl"] > -1  # every area range has ground truth
    assert stats["AR1"] < stats["AR10"]


def test_hand_made_case_with_a_subset_of_images():
    dataset, res = hand_made_case()
    compare_engines(dataset, res, "bbox", image_ids=[1, 3, 4])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_random_case_scores_the_same(iou_type):
    dataset, bbox_res, segm_res = random_case(seed=0, num_images=30)
    assert len(dataset["images"]) == 30 and any(a["iscrowd"] for a in dataset["annotations"])
    stats = compare_engines(dataset, bbox_res if iou_type == "bbox" else segm_res, iou_type)
    assert 0 < stats["AP50"] < 1


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_mini_scores_the_same(iou_type):
    dataset, bbox_res, segm_res = coco_mini_case()
    assert any(a.get("iscrowd") for a in dataset["annotations"])
    stats = compare_engines(dataset, bbox_res if iou_type == "bbox" else segm_res, iou_type)
    assert 0 < stats["AP"] < 1


def test_the_faster_engine_reads_pycocotools_objects_and_leaves_the_scores_alone():
    """The faster engine scores pycocotools ``COCO`` ground truth as loaded by the pipeline;
    scoring twice with the same ground truth object (as the evaluate stage does for a variant)
    gives the same numbers."""
    dataset, _, segm_res = random_case(seed=1, num_images=8)
    gt = coco_from_dict(dataset)
    first, _, _ = coco_evaluate(gt, copy.deepcopy(segm_res), "segm", engine="faster")
    again, _, _ = coco_evaluate(gt, copy.deepcopy(segm_res), "segm", engine="faster")
    ref, _, _ = coco_evaluate(gt, copy.deepcopy(segm_res), "segm", engine="pycocotools")
    assert first == again
    np.testing.assert_allclose(list(first.values()), list(ref.values()), rtol=0, atol=STATS_ATOL)


def test_scoring_leaves_the_records_unchanged():
    """pycocotools' loadRes writes ids, areas and (for segm) numpy boxes into the records it is
    given; coco_evaluate hands it copies, so the same records score again with either engine."""
    dataset, bbox, segm = random_case(seed=1, num_images=6)
    for iou_type, records in (("bbox", bbox), ("segm", segm)):
        before = json.dumps(records)
        first = [coco_evaluate(coco_from_dict(dataset), records, iou_type, engine=e)[0] for e in ("pycocotools", "faster")]
        assert json.dumps(records) == before
        again = coco_evaluate(coco_from_dict(dataset), records, iou_type, engine="pycocotools")[0]
        assert again == first[0]
