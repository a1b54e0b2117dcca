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


def good_records():
    return [
        {"image_id": 1, "category_id": 3, "bbox": [12, 9, 39, 52], "score": 0.95},
        {"image_id": 1, "category_id": 7, "bbox": [101, 103, 18, 20], "score": 0.6},
    ]


@pytest.mark.parametrize("index, field, value, problem", [
    (1, "bbox", [101, 103, float("nan"), 20], "not a finite number"),
    (0, "bbox", [float("inf"), 9, 39, 52], "not a finite number"),
    (1, "score", float("nan"), "score nan is not a finite number"),
    (0, "score", float("-inf"), "score -inf is not a finite number"),
    (1, "bbox", [101, 103, -18, 20], "negative width or height"),
    (0, "bbox", [12, 9, 39, -0.5], "negative width or height"),
    (1, "image_id", 99, "image_id 99 is not an image of the ground truth"),
    (0, "category_id", 5, "category_id 5 is not a category of the ground truth"),
    (1, "bbox", [1, 2, 3], "is not [x, y, width, height]"),
])
@pytest.mark.parametrize("engine", ["faster", "pycocotools"])
def test_bad_result_records_are_refused_naming_the_record(tmp_path, index, field, value, problem, engine):
    from pipeline.errors import DataError

    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3), (100, 100, 20, 20, 7)], 2: []})
    records = good_records()
    records[index][field] = value
    image_id, category_id = records[index]["image_id"], records[index]["category_id"]
    with pytest.raises(DataError) as e:
        coco_evaluate(gt, records, "bbox", engine=engine, source="results/m/minival_bbox.json")
    msg = str(e.value)
    assert msg.startswith("results/m/minival_bbox.json: result record ")
    assert f"record {index} (image_id {image_id}, category_id {category_id})" in msg and problem in msg


def test_bad_segm_records_are_refused(tmp_path):
    import numpy as np
    import pycocotools.mask as mask_util
    from pipeline.errors import DataError

    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3)]})
    rle = mask_util.encode(np.asfortranarray(np.ones((200, 200, 1), np.uint8)))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    good = {"image_id": 1, "category_id": 3, "segmentation": rle, "score": 0.5}
    coco_evaluate(gt, [good], "segm")  # accepted
    for seg, problem in [({**rle, "size": [100, 200]}, "differs from the image's [height, width] [200, 200]"),
                         ([[10, 10, 50, 10, 50, 60]], "is not an RLE mapping"),
                         ({"size": [200, 200], "counts": [0, 40000]}, "not a compressed RLE string")]:
        with pytest.raises(DataError, match=r"segm detections: result record 1 \(image_id 1, category_id 3\)") as e:
            coco_evaluate(gt, [good, {**good, "segmentation": seg}], "segm", source="segm detections")
        assert problem in str(e.value)


def test_unknown_engine_is_a_config_error(tmp_path):
    from pipeline.errors import ConfigError

    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3)]})
    with pytest.raises(ConfigError, match="evaluate.engine: 'fast' is not one of"):
        coco_evaluate(gt, good_records()[:1], "bbox", engine="fast")


def test_both_engines_give_the_same_summary_text(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {1: [(10, 10, 40, 50, 3), (100, 100, 20, 20, 7)]})
    texts = [coco_evaluate(gt, good_records(), "bbox", engine=e)[2] for e in ("faster", "pycocotools")]
    assert texts[0].splitlines()[0] == "COCO bbox evaluation, engine faster"
    assert texts[0].splitlines()[1:] == texts[1].splitlines()[1:] and len(texts[1].splitlines()) == 13
