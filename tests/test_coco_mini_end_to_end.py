"""Real COCO files (tests/data/coco_mini: crowd RLE, polygons, non-contiguous category ids)
carried through the dataset, a model, the evaluator and the result files."""
from __future__ import annotations

import json
import zipfile

from pipeline.data import SplitInfo, write_manifest
from pipeline.evaluate import evaluate_model
from pipeline.evaluation import load_coco_quietly
from pipeline.train import run_training
from tests.conftest import COCO_MINI, TINY_MODEL, tiny_params


def test_coco_mini_trains_evaluates_and_writes_result_files(tmp_path):
    ann = COCO_MINI / "annotations"
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, "coco", {
        "train": SplitInfo("train", ann / "instances_train2017.json", COCO_MINI / "train2017", True),
        "minival": SplitInfo("minival", ann / "instances_val2017.json", COCO_MINI / "val2017", True),
        # Real test-dev has no public annotations: the split is predicted, written, zipped, not scored.
        "test-dev": SplitInfo("test-dev", ann / "instances_val2017.json", COCO_MINI / "val2017", False),
    })
    params = tiny_params()
    params["models"][TINY_MODEL]["overrides"]["schedule"].update({"epochs": 1, "images_per_gpu": 3})
    params["models"][TINY_MODEL]["overrides"]["model"] = {"roi_head": {"test": {"score_thr": 0.0}}}
    metrics, model = run_training(TINY_MODEL, params, manifest_file=manifest, checkpoint_root=tmp_path / "ckpt", weights_root=tmp_path / "ckpt",
                                  metrics_root=tmp_path / "metrics", track=False)
    assert metrics["iterations"] == 2  # aspect-ratio grouping: the portrait image gets a batch of its own
    assert all(v == v for v in metrics["final_losses"].values())  # finite

    out = evaluate_model(TINY_MODEL, params, manifest_file=manifest, weights_root=tmp_path / "ckpt",
                         metrics_root=tmp_path / "metrics", results_root=tmp_path / "results", track=True)
    gt = load_coco_quietly(ann / "instances_val2017.json")
    real_ids = set(gt.getCatIds())
    records = json.loads((tmp_path / "results" / TINY_MODEL / "minival_bbox.json").read_text())
    assert records, "an untrained model with score_thr 0 still returns boxes"
    assert {r["category_id"] for r in records} <= real_ids          # mapped back to COCO's ids
    assert {r["image_id"] for r in records} <= set(gt.getImgIds())
    per_image = {}
    for r in records:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
        x, y, w, h = r["bbox"]
        img = gt.imgs[r["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 0.01 and y + h <= img["height"] + 0.01
    assert max(per_image.values()) <= 100
    gt.loadRes(records)  # pycocotools accepts the file
    minival = out["minival"]
    assert minival["scored"] and set(minival["bbox"]) >= {"AP", "AP50", "ARl"}
    assert all(-1 <= v <= 1 for v in minival["bbox"].values())
    testdev = json.loads((tmp_path / "metrics" / TINY_MODEL / "test-dev.json").read_text())
    assert testdev["scored"] is False and "bbox" not in testdev
    sub = tmp_path / "results" / TINY_MODEL / "detections_test-dev2017_frcnn-tiny_results.zip"
    with zipfile.ZipFile(sub) as zf:
        assert json.loads(zf.read(zf.namelist()[0])) == json.loads(
            (tmp_path / "results" / TINY_MODEL / "test-dev_bbox.json").read_text())


def test_a_model_without_any_detection_still_writes_its_pr_curves(tmp_path):
    """No detection at all (COCOeval accumulates nothing): every metric 0 and zero precision-recall
    curves, so that the stage's output metrics/<run>/pr exists as DVC requires."""
    from pipeline.figures import read_curves_csv

    ann = COCO_MINI / "annotations"
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, "coco", {
        "train": SplitInfo("train", ann / "instances_train2017.json", COCO_MINI / "train2017", True),
        "minival": SplitInfo("minival", ann / "instances_val2017.json", COCO_MINI / "val2017", True),
    })
    params = tiny_params()
    params["evaluate"]["splits"] = ["minival"]
    overrides = params["models"][TINY_MODEL]["overrides"]
    overrides["schedule"].update({"epochs": 1, "images_per_gpu": 3})
    overrides["model"] = {"roi_head": {"test": {"score_thr": 1.5}}}  # no score reaches it
    run_training(TINY_MODEL, params, manifest_file=manifest, checkpoint_root=tmp_path / "w", weights_root=tmp_path / "w",
                 metrics_root=tmp_path / "metrics", track=False)
    out = evaluate_model(TINY_MODEL, params, manifest_file=manifest, weights_root=tmp_path / "w",
                         metrics_root=tmp_path / "metrics", results_root=tmp_path / "results", track=False)
    assert out["minival"]["num_detections"] == 0 and set(out["minival"]["bbox"].values()) == {0.0}
    curves = read_curves_csv(tmp_path / "metrics" / TINY_MODEL / "pr" / "minival_bbox.csv")
    assert len(curves["recall"]) == 101 and curves["recall"][-1] == 1.0
    assert all(not v.any() for k, v in curves.items() if k != "recall")
    assert (tmp_path / "results" / TINY_MODEL / "pr_minival_bbox.png").stat().st_size > 1000
