"""The D2Det instance model through the pipeline: training on synthetic data with masks,
bbox + segm evaluation (mask scores = box score + 0.3 * predicted IoU), the paper table."""
from __future__ import annotations

import json

from pipeline.evaluate import evaluate_model
from pipeline.report import collect, paper_tables
from pipeline.train import run_training
from tests.conftest import tiny_params

MODEL = "d2det_mask_tiny"


def test_d2det_mask_model_trains_evaluates_segm_and_fills_the_paper_table(tiny_prepared, tmp_path):
    params = tiny_params()
    params["models"] = {MODEL: {"preset": "d2det_r101_fpn_mask", "scale": "cpu", "overrides": {
        "schedule": {"epochs": 1, "images_per_gpu": 4, "lr": 0.01, "warmup_iters": 2, "lr_steps": [0.75]},
        "model": {"roi_head": {"sampler": {"num": 64}, "test": {"score_thr": 0.0}}},
    }}}
    metrics, _ = run_training(MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt", weights_root=tmp_path / "ckpt",
                              metrics_root=tmp_path / "metrics", track=True)
    assert metrics["iterations"] == 4
    assert {"loss_reg", "loss_overlap", "loss_instance", "loss_mask_iou"} <= set(metrics["final_losses"])
    out = evaluate_model(MODEL, params, manifest_file=tiny_prepared, weights_root=tmp_path / "ckpt",
                         metrics_root=tmp_path / "metrics", results_root=tmp_path / "results", track=True)
    minival = out["minival"]
    assert set(minival) >= {"bbox", "segm"} and all(-1 <= v <= 1 for v in minival["segm"].values())
    boxes = json.loads((tmp_path / "results" / MODEL / "minival_bbox.json").read_text())
    segms = json.loads((tmp_path / "results" / MODEL / "minival_segm.json").read_text())
    assert boxes and len(segms) == len(boxes)
    # mask score = class score + 0.3 * predicted mask IoU: differs from the box score
    assert any(abs(s["score"] - b["score"]) > 1e-4 for s, b in zip(segms, boxes))

    rows = collect(params, tmp_path / "metrics")
    table = paper_tables(rows)
    line = next(l for l in table.splitlines() if "instance segmentation" in l)
    ours_val = line.split("|")[3].strip()
    assert ours_val == f"{100 * minival['segm']['AP']:.1f}"  # mask AP, our measurement
    assert "d2det_mask_tiny (cpu)" in line and "40.2" in line  # the paper's test-dev mask AP beside it
    assert "not run" in next(l for l in table.splitlines() if "D2Det-res101-dcn" in l)
