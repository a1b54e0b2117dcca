"""The COCO evaluator against hand-computed numbers and pycocotools itself."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch

from pipeline.evaluation import (
    STAT_NAMES,
    coco_evaluate,
    detections_to_coco,
    load_coco_quietly,
    submission_name,
    to_original_coords,
    write_results,
)


def write_gt(path, boxes_by_image, cat_ids=(3, 7)):
    images, anns = [], []
    aid = 1
    for img_id, boxes in boxes_by_image.items():
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "height": 200, "width": 200})
        for (x, y, w, h, cat) in boxes:
            anns.append({"id": aid, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            aid += 1
    cats = [{"id": c, "name": f"c{c}", "supercategory": "shape"} for c in cat_ids]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return load_coco_quietly(path)


def test_ap_of_a_hand_made_case(tmp_path):
    # One ground-truth box of 40x50 (medium). A false positive scores higher than the
    # true positive, whose IoU with the ground truth is 0.78: it matches at IoU
    # thresholds 0.50..0.75 (6 of 10), with precision 1/2 at recall 1 there.
    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3)]})
    tp_w = 40 * 0.78  # same x/y/h, width scaled: IoU = 0.78
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [120, 120, 40, 50], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, tp_w, 50], "score": 0.8},
    ]
    stats, ev, text = coco_evaluate(gt, dets, "bbox")
    assert stats["AP50"] == pytest.approx(0.5)
    assert stats["AP75"] == pytest.approx(0.5)
    assert stats["AP"] == pytest.approx(0.5 * 6 / 10)
    assert stats["APm"] == pytest.approx(stats["AP"])
    assert stats["APs"] == -1 and stats["APl"] == -1  # no small / large ground truth
    assert stats["AR100"] == pytest.approx(6 / 10)
    assert list(stats) == list(STAT_NAMES) and "Average Precision" in text


def test_matches_pycocotools_directly(tmp_path):
    from pycocotools.cocoeval import COCOeval

    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3), (100, 100, 20, 20, 7)], 2: [(5, 5, 120, 100, 7)]})
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [12, 9, 39, 52], "score": 0.95},
        {"image_id": 1, "category_id": 7, "bbox": [101, 103, 18, 20], "score": 0.6},
        {"image_id": 1, "category_id": 7, "bbox": [60, 60, 30, 30], "score": 0.7},
        {"image_id": 2, "category_id": 7, "bbox": [0, 10, 110, 100], "score": 0.8},
        {"image_id": 2, "category_id": 3, "bbox": [5, 5, 120, 100], "score": 0.3},
    ]
    stats, _, _ = coco_evaluate(gt, dets, "bbox")
    ref = COCOeval(gt, gt.loadRes(dets), "bbox")
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    assert [stats[k] for k in STAT_NAMES] == pytest.approx(list(ref.stats))


def test_no_detections_scores_zero(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3)]})
    stats, ev, _ = coco_evaluate(gt, [], "bbox")
    assert ev is None and all(v == 0.0 for v in stats.values())


def test_detections_map_back_to_original_image_and_categories():
    # The image was resized by (sx, sy) = (0.5, 0.25); labels are contiguous.
    out = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0], [0.0, 0.0, 400.0, 400.0]]),
        "scores": torch.tensor([0.2, 0.9]),
        "labels": torch.tensor([1, 0]),
    }
    tgt = {"image_id": 42, "scale_factor": torch.tensor([0.5, 0.25]), "orig_size": (300, 500)}
    bbox, segm = detections_to_coco(out, tgt, cat_ids=[3, 7], max_dets=100)
    assert segm == []
    assert [r["score"] for r in bbox] == [0.9, 0.2]  # sorted by score
    assert bbox[0]["category_id"] == 3 and bbox[1]["category_id"] == 7
    assert bbox[0]["bbox"] == [0.0, 0.0, 500.0, 300.0]  # clipped to the original 500x300 image
    assert bbox[1]["bbox"] == [20.0, 20.0, 40.0, 60.0]
    capped, _ = detections_to_coco(out, tgt, cat_ids=[3, 7], max_dets=1)
    assert len(capped) == 1 and capped[0]["score"] == 0.9


def test_to_original_coords_round_trip():
    boxes = torch.tensor([[3.0, 4.0, 50.0, 60.0]])
    sf = torch.tensor([2.0, 1.5])
    resized = boxes * torch.tensor([2.0, 1.5, 2.0, 1.5])
    assert torch.allclose(to_original_coords(resized, sf, (100, 100)), boxes)


def test_masks_are_pasted_and_rle_encoded(tmp_path):
    out = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 30.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
        "masks": torch.ones(1, 1, 28, 28),
    }
    tgt = {"image_id": 1, "scale_factor": torch.tensor([1.0, 1.0]), "orig_size": (64, 64)}
    bbox, segm = detections_to_coco(out, tgt, cat_ids=[5])
    import pycocotools.mask as mask_util

    m = mask_util.decode({"size": segm[0]["segmentation"]["size"], "counts": segm[0]["segmentation"]["counts"].encode()})
    ys, xs = m.nonzero()
    assert m.shape == (64, 64)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 49, 10, 29)  # pixels whose centre is in the box
    assert m.sum() == 40 * 20


def test_paste_samples_the_exact_fractional_box_at_pixel_centres():
    from pipeline.evaluation import paste_masks

    # left half of the mask on: cells 0..13 of 28 cover x in [4.25, 4.25 + 14 * 20 / 28) = [4.25, 14.25)
    probs = torch.zeros(2, 1, 28, 28)
    probs[0, 0, :, :14] = 1.0
    probs[1, 0] = 1.0
    boxes = torch.tensor([[4.25, 2.0, 24.25, 12.0], [30.0, 30.0, 31.0, 31.0]])
    pasted = paste_masks(probs, boxes, (40, 40))
    cols = pasted[0].any(0).nonzero()[0]
    rows = pasted[0].any(1).nonzero()[0]
    # the pixels whose centres 4.5 .. 13.5 lie in [4.25, 14.25); 14.5 is 0.35 cells past the cut (0.15)
    assert (cols.min(), cols.max()) == (4, 13) and (rows.min(), rows.max()) == (2, 11)
    assert pasted[1].sum() == 1 and pasted[1, 30, 30] == 1  # a one-pixel box keeps its pixel
    assert paste_masks(probs[:0], boxes[:0], (5, 5)).shape == (0, 5, 5)


def test_submission_file_and_zip(tmp_path):
    name = submission_name("faster_rcnn_r50_fpn")
    assert name == "detections_test-dev2017_faster-rcnn-r50-fpn_results.json"
    recs = [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}]
    files = write_results(recs, tmp_path / name, zip_it=True)
    assert [f.name for f in files] == [name, name.replace(".json", ".zip")]
    with zipfile.ZipFile(files[1]) as zf:
        assert zf.namelist() == [name]
        assert json.loads(zf.read(name)) == recs
    again = write_results(recs, tmp_path / "b" / name, zip_it=True)
    assert again[1].read_bytes() == files[1].read_bytes()  # reproducible bytes
