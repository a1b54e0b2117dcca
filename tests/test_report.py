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


# ---------------------------------------------------------------------------- the papers' tables
D2DET_ROWS = [
    {"model": "d2det_r50_fpn", "preset": "d2det_r50_fpn", "scale": "cpu", "split": "minival",
     "dataset": "synthetic minival (200 images)", "scored": True, "bbox": {"AP": 0.39}},
    {"model": "d2det_r50_fpn", "preset": "d2det_r50_fpn", "scale": "cpu", "split": "test-dev",
     "dataset": "synthetic test-dev (200 images)", "scored": True, "bbox": {"AP": 0.41}},
    {"model": "mask", "preset": "d2det_r101_fpn_mask", "scale": "cpu", "split": "minival",
     "dataset": "synthetic minival (200 images)", "scored": True, "bbox": {"AP": 0.39}, "segm": {"AP": 0.465}},
    {"model": "mask", "preset": "d2det_r101_fpn_mask", "scale": "cpu", "split": "test-dev",
     "dataset": "coco test-dev", "scored": False},
]

# As rendered before tables could declare their own columns (byte for byte).
D2DET_TABLE = """\
**D2Det** (published: official D2Det README (JialeCao001/D2Det), the seed table)

| name | type | Ours: validation | Ours: test-dev | Our model (scale) | Measured on | Paper: validation | Paper: test-dev |
|---|---|:-:|:-:|---|---|:-:|:-:|
| D2Det-res50 [1] | object detection | 39.0 | 41.0 | d2det_r50_fpn (cpu) | synthetic minival (200 images); synthetic test-dev (200 images) | – | 33.9 |
| D2Det-res101 | object detection | not run | not run | – | – | 44.9 | 45.4 |
| D2Det-res101-dcn | object detection | not run | not run | – | – | 46.9 | 47.5 |
| D2Det-res101 [2] | instance segmentation | 46.5 | not scored | mask (cpu) | synthetic minival (200 images); coco test-dev | – | 40.2 |

[1] the seed prints xx.x / 33.9; the README at a76781a (specs/d2det.md §7.1) reads 43.7 / 43.9.

[2] mask AP; the seed prints xx.x for validation (specs/d2det.md §7.1: 39.8)."""


def spec(title):
    from pipeline.published import PAPER_TABLES

    return next(s for s in PAPER_TABLES if s["title"] == title)


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_the_d2det_paper_table_renders_as_before():
    from pipeline.report import paper_table

    assert paper_table(spec("D2Det"), D2DET_ROWS) == D2DET_TABLE


@pytest.mark.parametrize("title,first,expected", [
    ("RepPoints V2", "RepPoints_V2_R_50_FPN_1x", [
        ("RepPoints_V2_R_50_FPN_1x", "No", "40.9", "–"),
        ("RepPoints_V2_R_50_FPN_GIoU_1x", "No", "41.1", "41.3"),
        ("RepPoints_V2_R_50_FPN_GIoU_2x", "Yes", "43.9", "44.4"),
        ("RepPoints_V2_R_101_FPN_GIoU_2x [1]", "Yes", "45.8", "46.0"),
        ("RepPoints_V2_R_101_FPN_dcnv2_GIoU_2x", "Yes", "47.7", "48.1"),
        ("RepPoints_V2_X_101_FPN_GIoU_2x", "Yes", "47.3", "47.8"),
        ("RepPoints_V2_X_101_FPN_dcnv2_GIoU_2x", "Yes", "49.3", "49.4"),
        ("RepPoints_V2_MNV2_c128_FPN_2x", "Yes", "36.8", "–"),
        ("RepPoints_V2_MNV2_FPN_2x", "Yes", "39.4", "–"),
    ]),
    ("RepPoints V1", "RepPoints_V1_R_50_FPN_1x", [
        ("RepPoints_V1_R_50_FPN_1x", "No", "38.8", "–"),
        ("RepPoints_V1_R_50_FPN_GIoU_1x", "No", "39.9", "–"),
        ("RepPoints_V1_R_50_FPN_GIoU_2x", "Yes", "42.7", "–"),
        ("RepPoints_V1_R_101_FPN_GIoU_2x", "Yes", "44.4", "–"),
        ("RepPoints_V1_R_101_FPN_dcnv2_GIoU_2x", "Yes", "46.6", "–"),
        ("RepPoints_V1_X_101_FPN_GIoU_2x", "Yes", "46.3", "–"),
        ("RepPoints_V1_X_101_FPN_dcnv2_GIoU_2x", "Yes", "48.3", "–"),
        ("RepPoints_V1_MNV2_c128_FPN_2x", "Yes", "35.7", "–"),
        ("RepPoints_V1_MNV2_FPN_2x", "Yes", "37.8", "–"),
    ]),
])
def test_the_reppoints_paper_tables_show_the_seed_numbers_beside_not_run(title, first, expected):
    from pipeline.report import paper_table

    text = paper_table(spec(title), D2DET_ROWS)
    lines = text.splitlines()
    assert lines[0].startswith(f"**{title}** (published: official RepPointsV2 README")
    assert cells(lines[2]) == ["Model", "Multi-scale training", "Ours: AP (minival)", "Ours: AP (test-dev)",
                               "Our model (scale)", "Measured on", "Paper: AP (minival)", "Paper: AP (test-dev)"]
    assert lines[3] == "|---|---|:-:|:-:|---|---|:-:|:-:|"
    body = [cells(l) for l in lines[4:4 + len(expected)]]
    assert body[0][0] == first
    for row, (name, ms, val, test) in zip(body, expected):
        # our columns say "not run"; the paper's numbers only in the paper's columns
        assert row == [name, ms, "not run", "not run", "–", "–", val, test]
    assert "X-101: ResNeXt-101-64x4d" in text and "c128: 128" in text and "SyncBN and the GIoU loss" in text
    assert all(s["task"] == "bbox" for s in spec(title)["rows"])


def test_a_reppoints_row_fills_our_columns_from_its_preset():
    from pipeline.report import paper_table

    rows = [{"model": "rpv2_cpu", "preset": "reppoints_v2_r50_fpn_giou_1x", "scale": "cpu", "split": "minival",
             "dataset": "synthetic minival (8 images)", "scored": True, "bbox": {"AP": 0.3456}}]
    line = next(l for l in paper_table(spec("RepPoints V2"), rows).splitlines()
                if l.startswith("| RepPoints_V2_R_50_FPN_GIoU_1x |"))
    assert cells(line) == ["RepPoints_V2_R_50_FPN_GIoU_1x", "No", "34.6", "–", "rpv2_cpu (cpu)",
                           "synthetic minival (8 images)", "41.1", "41.3"]


def test_published_reppoints_entries():
    from pipeline.published import PUBLISHED

    assert PUBLISHED["reppoints_v2_r50_fpn_giou_1x"]["minival"] == 41.1
    assert PUBLISHED["reppoints_v2_r50_fpn_giou_1x"]["test-dev"] == 41.3
    assert PUBLISHED["reppoints_v1_r50_fpn_giou_1x"]["minival"] == 39.9
    assert PUBLISHED["reppoints_v1_r50_fpn_giou_1x"]["test-dev"] is None
    assert "improved RepPoints V1" in PUBLISHED["reppoints_v1_r50_fpn_giou_1x"]["source"]


# ------------------------------------------------------------- corner snapping on / off (RepPoints V2)
def log_variant(model, stats, variant="corner_snapping_off", dataset="synthetic minival (8 images)"):
    tags = {"model": model, "stage": "evaluate", "split": f"minival/{variant}", "variant": variant,
            "preset": "reppoints_v2_r50_fpn_giou_1x", "scale": "cpu", "dataset": dataset}
    time.sleep(0.01)
    with Tracker(f"evaluate/{model}/minival/{variant}", tags) as t:
        t.log_metrics({f"bbox_{k}": v for k, v in stats.items()})


def write_variant(root, model, stats, default=True):
    path = root / model / "minival.json"
    data = json.loads(path.read_text())
    name = f"corner_snapping_{'off' if default else 'on'}"
    data["corner_snapping"] = default
    data["variants"] = {name: {"corner_snapping": not default, "bbox": stats}}
    path.write_text(json.dumps(data))


def snapping_params():
    return {"models": {"rpv2_snap": {"preset": "reppoints_v2_r50_fpn_giou_1x", "scale": "cpu"},
                       "frcnn_plain": {"preset": "faster_rcnn_r50_fpn_1x", "scale": "cpu"}},
            "evaluate": {"splits": ["minival"]}}


def test_the_corner_snapping_table_from_mlflow_and_the_metrics_files(tmp_path):
    metrics = tmp_path / "metrics"
    for model, ap in (("rpv2_snap", 0.4123), ("frcnn_plain", 0.30)):
        log_eval(model, "minival", stats_with(ap))
        write_metrics(metrics, model, "minival", stats_with(ap))
    log_variant("rpv2_snap", stats_with(0.3999))
    write_variant(metrics, "rpv2_snap", stats_with(0.3999))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(snapping_params(), readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics,
                      checkpoint_root=None)
    assert "## RepPoints V2 joint inference (corner snapping)" in md
    assert "**RepPoints V2 joint inference (corner snapping)**" in readme.read_text()
    section = md.split("## RepPoints V2 joint inference")[1].split("\n## ")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ")]
    assert cells(lines[0]) == ["Our model (scale)", "Ours: minival box AP, snapping on",
                               "Ours: minival box AP, snapping off", "Difference (on - off)", "Measured on"]
    assert [cells(l) for l in lines[1:]] == [["rpv2_snap (cpu)", "41.2", "40.0", "+1.2",
                                              "synthetic minival (8 images)"]]
    # the main tables still read the main minival run, not the variant's
    assert "| 41.2 / 50.0 / 50.0 |" in next(l for l in md.splitlines() if l.startswith("| rpv2_snap | "))


def test_the_corner_snapping_table_when_the_default_is_off(tmp_path):
    from pipeline.report import collect, corner_snapping_table

    metrics = tmp_path / "metrics"
    p = {**snapping_params(), "models": {"rpv2_off": snapping_params()["models"]["rpv2_snap"]}}
    log_eval("rpv2_off", "minival", stats_with(0.38))
    write_metrics(metrics, "rpv2_off", "minival", stats_with(0.38))
    log_variant("rpv2_off", stats_with(0.41), variant="corner_snapping_on")
    write_variant(metrics, "rpv2_off", stats_with(0.41), default=False)
    row = next(l for l in corner_snapping_table(collect(p, metrics)).splitlines() if l.startswith("| rpv2_off"))
    assert cells(row)[:4] == ["rpv2_off (cpu)", "41.0", "38.0", "+3.0"]


def test_no_corner_snapping_table_without_the_variant(tmp_path, params):
    metrics = tmp_path / "metrics"
    p = {**params, "models": {"m_nosnap": params["models"]["m_report"]}, "evaluate": {"splits": ["minival"]}}
    log_eval("m_nosnap", "minival", stats_with(0.3))
    write_metrics(metrics, "m_nosnap", "minival", stats_with(0.3))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(p, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics, checkpoint_root=None)
    assert "snapping" not in md.lower() and "snapping" not in readme.read_text().lower()


def test_the_corner_snapping_variant_is_cross_checked(tmp_path):
    from pipeline.report import collect

    metrics = tmp_path / "metrics"
    p = {**snapping_params(), "models": {"rpv2_bad": snapping_params()["models"]["rpv2_snap"]}}
    log_eval("rpv2_bad", "minival", stats_with(0.4))
    write_metrics(metrics, "rpv2_bad", "minival", stats_with(0.4))
    write_variant(metrics, "rpv2_bad", stats_with(0.35))
    with pytest.raises(ReportError, match="minival/corner_snapping_off"):
        collect(p, metrics)  # no variant run in the store
    log_variant("rpv2_bad", stats_with(0.36))
    with pytest.raises(ReportError, match="variants.corner_snapping_off.bbox AP .* disagree"):
        collect(p, metrics)
