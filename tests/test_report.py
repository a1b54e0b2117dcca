"""The report stage: tables from MLflow, cross-checked against the DVC metrics files."""
from __future__ import annotations

import json
import time

import pytest

from pipeline.evaluation import STAT_NAMES
from pipeline.report import BEGIN, END, ReportError, write_report
from pipeline.tracking import Tracker


def log_eval(model, split, stats, dataset="synthetic minival (8 images)"):
    tags = {"model": model, "stage": "evaluate", "split": split, "preset": "faster_rcnn_r50_fpn_1x",
            "scale": "cpu", "dataset": dataset}
    time.sleep(0.01)  # distinct start times, so "newest" is well defined
    with Tracker(f"evaluate/{model}/{split}", tags) as t:
        t.log_metrics({f"bbox_{k}": v for k, v in stats.items()})


def write_metrics(root, model, split, stats, dataset="synthetic minival (8 images)"):
    d = root / model
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.json").write_text(json.dumps({"bbox": stats, "dataset": dataset, "scored": True}))


def stats_with(ap):
    return {k: (ap if k == "AP" else 0.5) for k in STAT_NAMES}


@pytest.fixture
def params():
    return {"models": {"m_report": {"preset": "faster_rcnn_r50_fpn_1x", "scale": "cpu"}},
            "evaluate": {"splits": ["minival", "test-dev"]}}


def test_report_uses_the_newest_finished_run_and_rewrites_the_readme(tmp_path, params):
    metrics = tmp_path / "metrics"
    log_eval("m_report", "minival", stats_with(0.1))  # older run, superseded
    log_eval("m_report", "minival", stats_with(0.4321))
    log_eval("m_report", "test-dev", stats_with(0.25), dataset="synthetic test-dev (8 images)")
    write_metrics(metrics, "m_report", "minival", stats_with(0.4321))
    write_metrics(metrics, "m_report", "test-dev", stats_with(0.25), dataset="synthetic test-dev (8 images)")
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    md = write_report(params, readme=readme, reports_dir=tmp_path / "reports", metrics_root=metrics,
                      checkpoint_root=None)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# T\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    row = next(line for line in text.splitlines() if line.startswith("| m_report"))
    assert "| 43.2 / 50.0 / 50.0 |" in row          # ours, from the newest run
    assert "| 25.0 |" in row                        # test-dev, scored on synthetic
    assert "synthetic minival (8 images)" in row    # the data our number was measured on
    assert "| 37.4 |" in row and "mmdetection" in row  # the published number, labelled
    assert (tmp_path / "reports" / "results.md").read_text() == md


def test_report_refuses_when_mlflow_and_metrics_file_disagree(tmp_path, params):
    params = {**params, "models": {"m_mismatch": params["models"]["m_report"]}, "evaluate": {"splits": ["minival"]}}
    metrics = tmp_path / "metrics"
    log_eval("m_mismatch", "minival", stats_with(0.30))
    write_metrics(metrics, "m_mismatch", "minival", stats_with(0.31))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    with pytest.raises(ReportError, match="disagree"):
        write_report(params, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics)
    assert readme.read_text() == f"{BEGIN}\n{END}\n"  # nothing rewritten


def test_report_names_a_missing_run_and_missing_markers(tmp_path, params):
    metrics = tmp_path / "metrics"
    p = {**params, "models": {"m_norun": params["models"]["m_report"]}, "evaluate": {"splits": ["minival"]}}
    write_metrics(metrics, "m_norun", "minival", stats_with(0.3))
    with pytest.raises(ReportError, match="no FINISHED MLflow evaluate run"):
        write_report(p, readme=tmp_path / "R.md", reports_dir=tmp_path / "r", metrics_root=metrics)
    log_eval("m_norun", "minival", stats_with(0.3))
    readme = tmp_path / "R.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ReportError, match="markers"):
        write_report(p, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics)
