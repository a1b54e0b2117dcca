"""A dataset without test-dev end to end: the files source over tests/data/coco_mini (train and
minival only), a tiny model trained in seconds, the evaluate stage skipping test-dev (note, metrics
file, no result files, no MLflow run) and the report showing it as skipped."""
from __future__ import annotations

import json

from pipeline.data.manifest import load_manifest
from pipeline.evaluate import evaluate_model
from pipeline.prepare import prepare
from pipeline.report import BEGIN, END, write_report
from pipeline.tracking import client, newest_finished_run
from pipeline.train import run_training
from tests.conftest import COCO_MINI, TINY_MODEL, tiny_params

RUN = "frcnn_tiny_no_testdev"  # a run of its own in the session's MLflow store


def test_evaluate_skips_a_split_the_data_lacks_and_the_report_shows_it(tmp_path, capsys):
    ann = COCO_MINI / "annotations"
    manifest_file = tmp_path / "prepared" / "manifest.json"
    prepare({"source": "files", "files": {
        "name": "coco-mini",
        "train": {"ann_file": str(ann / "instances_train2017.json"), "img_dir": str(COCO_MINI / "train2017")},
        "minival": {"ann_file": str(ann / "instances_val2017.json"), "img_dir": str(COCO_MINI / "val2017")},
        "test-dev": None,
    }}, manifest_file.parent)
    assert set(load_manifest(manifest_file).splits) == {"train", "minival"}

    params = tiny_params()
    params["models"] = {RUN: params["models"][TINY_MODEL]}
    params["models"][RUN]["overrides"]["schedule"].update({"epochs": 1, "images_per_gpu": 3})
    params["evaluate"]["splits"] = ["minival", "test-dev"]
    weights, metrics_root, results_root = tmp_path / "weights", tmp_path / "metrics", tmp_path / "results"
    run_training(RUN, params, manifest_file=manifest_file, checkpoint_root=tmp_path / "ckpt", weights_root=weights,
                 metrics_root=metrics_root, track=False)

    # result files an earlier evaluation (on data with test-dev) left behind
    stale = [results_root / RUN / "test-dev_bbox.json",
             results_root / RUN / "detections_test-dev2017_frcnn-tiny-no-testdev_results.zip",
             metrics_root / RUN / "pr" / "test-dev_bbox.csv"]
    for f in stale:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("old")
    capsys.readouterr()
    out = evaluate_model(RUN, params, manifest_file=manifest_file, weights_root=weights, metrics_root=metrics_root,
                         results_root=results_root, track=True)
    printed = capsys.readouterr().out
    assert f"[evaluate] {RUN}: no test-dev split in {manifest_file} (dataset coco-mini); skipped" in printed

    expected = {"model": RUN, "split": "test-dev", "dataset": "coco-mini (no test-dev split)", "scored": False,
                "skipped": True, "reason": "the prepared data (dataset coco-mini) has no test-dev split, so nothing "
                                           "was predicted or scored on it"}
    assert json.loads((metrics_root / RUN / "test-dev.json").read_text()) == expected == out["test-dev"]
    assert out["minival"]["scored"] and out["minival"]["dataset"] == "coco-mini minival (3 images)"
    assert not [f for f in stale if f.exists()]
    assert not [p.name for p in (results_root / RUN).iterdir() if "test-dev" in p.name]
    assert (results_root / RUN / "minival_bbox.json").exists()

    c = client()
    assert newest_finished_run(c, RUN, "evaluate", "test-dev") is None  # no MLflow run for the skipped split
    minival_run = newest_finished_run(c, RUN, "evaluate", "minival")
    assert minival_run.data.tags["dataset"] == "coco-mini minival (3 images)"

    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    write_report(params, readme=readme, reports_dir=tmp_path / "reports", metrics_root=metrics_root,
                 weights_root=weights, manifest_file=None)
    row = next(line for line in readme.read_text().splitlines() if line.startswith(f"| {RUN} "))
    assert "| skipped (no test-dev split) | coco-mini minival (3 images) |" in row
