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
        t.log_metrics({f"{split}/bbox_{k}": v for k, v in stats.items()})  # as the evaluate stage logs


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
                      weights_root=None)
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
        t.log_metrics({f"minival/bbox_{k}": v for k, v in stats.items()})  # the keys of the default's run


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
                      weights_root=None)
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
    md = write_report(p, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics, weights_root=None)
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


# --------------------------------------------------- contour snapping on / off (Dense RepPoints V2)
def log_eval_box_mask(model, split, bbox, segm, variant=None, dataset="synthetic minival (8 images)"):
    tags = {"model": model, "stage": "evaluate", "split": split, "preset": "dense_reppoints_v2_r50_fpn_giou_1x",
            "scale": "cpu", "dataset": dataset}
    if variant is not None:
        tags["variant"] = variant
    time.sleep(0.01)
    with Tracker(f"evaluate/{model}/{split}", tags) as t:
        t.log_metrics({**{f"minival/bbox_{k}": v for k, v in bbox.items()},  # a variant's too
                       **{f"minival/segm_{k}": v for k, v in segm.items()}})


def write_contour_model(root, model, bbox, segm, v_bbox, v_segm, default=True,
                        dataset="synthetic minival (8 images)"):
    """A Dense RepPoints V2 model's minival metrics file and MLflow runs: the main numbers with
    contour snapping at ``default``, the variant's with it flipped."""
    name = f"contour_snapping_{'off' if default else 'on'}"
    log_eval_box_mask(model, "minival", bbox, segm, dataset=dataset)
    log_eval_box_mask(model, f"minival/{name}", v_bbox, v_segm, variant=name, dataset=dataset)
    d = root / model
    d.mkdir(parents=True, exist_ok=True)
    (d / "minival.json").write_text(json.dumps({
        "bbox": bbox, "segm": segm, "dataset": dataset, "scored": True, "contour_snapping": default,
        "variants": {name: {"contour_snapping": not default, "bbox": v_bbox, "segm": v_segm}}}))


def contour_params(*models):
    return {"models": {m: {"preset": "dense_reppoints_v2_r50_fpn_giou_1x", "scale": "cpu"} for m in models},
            "evaluate": {"splits": ["minival"]}}


CONTOUR_TABLE = """\
The same trained weights, masks built with and without the snapped contour points (boxes and scores are the same both ways, so only mask AP can move).

| Our model (scale) | Ours: minival mask AP, snapping on | Ours: minival mask AP, snapping off | Difference (on - off) | Ours: minival box AP (both) | Measured on |
|---|:-:|:-:|:-:|:-:|---|
| dense_on (cpu) | 22.2 | 21.5 | +0.7 | 31.2 | synthetic minival (8 images) |
| dense_off (cpu) | 23.0 | 20.0 | +3.0 | 30.0 | synthetic minival (8 images) |"""


def test_the_contour_snapping_table_from_mlflow_and_the_metrics_files(tmp_path):
    from pipeline.report import collect, contour_snapping_table, corner_snapping_table

    metrics = tmp_path / "metrics"
    box, box_off = stats_with(0.3123), stats_with(0.30)
    write_contour_model(metrics, "dense_on", box, stats_with(0.2222), box, stats_with(0.2150))
    # default off: "on" is the variant's number
    write_contour_model(metrics, "dense_off", box_off, stats_with(0.20), box_off, stats_with(0.23), default=False)
    p = contour_params("dense_on", "dense_off")
    rows = collect(p, metrics)
    assert [(r["model"], r["contour_snapping"]) for r in rows] == [("dense_on", True), ("dense_off", False)]
    assert all("corner_snapping" not in r for r in rows)
    assert rows[0]["variants"]["contour_snapping_off"]["contour_snapping"] is False
    assert "corner_snapping" not in rows[0]["variants"]["contour_snapping_off"]
    assert rows[1]["variants"]["contour_snapping_on"]["segm"]["AP"] == pytest.approx(0.23)
    assert contour_snapping_table(rows) == CONTOUR_TABLE
    assert corner_snapping_table(rows) == ""  # the corner table ignores contour variants

    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(p, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics, weights_root=None)
    text = readme.read_text()
    assert f"## Dense RepPoints V2 contour snapping\n\n{CONTOUR_TABLE}\n\n## All COCO numbers" in md
    assert f"**Dense RepPoints V2 contour snapping**\n\n{CONTOUR_TABLE}\n{END}" in text
    assert "corner snapping" not in md and "corner snapping" not in text
    assert (tmp_path / "r" / "results.md").read_text() == md
    # the main tables still read the main minival run, not the variant's
    assert "| 31.2 / 50.0 / 50.0 |" in next(l for l in md.splitlines() if l.startswith("| dense_on | "))


def test_the_contour_table_follows_the_corner_table_and_each_keeps_to_its_switch(tmp_path):
    from pipeline.report import collect, contour_snapping_table, corner_snapping_table

    metrics = tmp_path / "metrics"
    log_eval("rpv2_corner", "minival", stats_with(0.4123))
    write_metrics(metrics, "rpv2_corner", "minival", stats_with(0.4123))
    log_variant("rpv2_corner", stats_with(0.3999))
    write_variant(metrics, "rpv2_corner", stats_with(0.3999))
    write_contour_model(metrics, "dense_on", stats_with(0.3123), stats_with(0.2222),
                        stats_with(0.3123), stats_with(0.2150))
    p = {"models": {"rpv2_corner": snapping_params()["models"]["rpv2_snap"],
                    "dense_on": contour_params("dense_on")["models"]["dense_on"]},
         "evaluate": {"splits": ["minival"]}}
    rows = collect(p, metrics)
    corner = corner_snapping_table(rows)
    contour = contour_snapping_table(rows)
    assert [cells(l)[0] for l in corner.splitlines()[3:]] == ["---", "rpv2_corner (cpu)"]
    assert [cells(l)[0] for l in contour.splitlines()[3:]] == ["---", "dense_on (cpu)"]

    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(p, readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics, weights_root=None)
    text = readme.read_text()
    assert (f"## RepPoints V2 joint inference (corner snapping)\n\n{corner}\n\n"
            f"## Dense RepPoints V2 contour snapping\n\n{contour}\n\n## All COCO numbers") in md
    assert (f"**RepPoints V2 joint inference (corner snapping)**\n\n{corner}\n\n"
            f"**Dense RepPoints V2 contour snapping**\n\n{contour}\n{END}") in text


def test_the_contour_table_shows_both_box_aps_if_they_differ_and_dashes_without_masks():
    from pipeline.report import contour_snapping_table

    rows = [{"model": "d", "scale": "cpu", "split": "minival", "dataset": "x", "bbox": {"AP": 0.31},
             "segm": {"AP": 0.22}, "contour_snapping": True,
             "variants": {"contour_snapping_off": {"contour_snapping": False, "bbox": {"AP": 0.30}}}},
            {"model": "t", "scale": "cpu", "split": "test-dev", "dataset": "x", "bbox": {"AP": 0.31},
             "variants": {"contour_snapping_off": {"contour_snapping": False, "bbox": {"AP": 0.30}}}}]
    lines = contour_snapping_table(rows).splitlines()
    assert [cells(l) for l in lines[4:]] == [["d (cpu)", "22.0", "–", "–", "31.0 / 30.0", "x"]]


def test_the_contour_snapping_variant_is_cross_checked(tmp_path):
    from pipeline.report import collect

    metrics = tmp_path / "metrics"
    write_contour_model(metrics, "dense_bad", stats_with(0.31), stats_with(0.22), stats_with(0.31), stats_with(0.21))
    data = json.loads((metrics / "dense_bad" / "minival.json").read_text())
    data["variants"]["contour_snapping_off"]["segm"]["AP"] = 0.2
    (metrics / "dense_bad" / "minival.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="variants.contour_snapping_off.segm AP .* disagree"):
        collect(contour_params("dense_bad"), metrics)


# ------------------------------------------------------------------ Dense RepPoints (box and mask AP)
def log_eval_segm(model, split, bbox, segm, dataset):
    tags = {"model": model, "stage": "evaluate", "split": split, "scale": "cpu", "dataset": dataset}
    time.sleep(0.01)
    with Tracker(f"evaluate/{model}/{split}", tags) as t:
        t.log_metrics({**{f"{split}/bbox_{k}": v for k, v in bbox.items()},
                       **{f"{split}/segm_{k}": v for k, v in segm.items()}})


def write_metrics_segm(root, model, split, bbox, segm, dataset, scored=True):
    d = root / model
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.json").write_text(json.dumps({"bbox": bbox, "segm": segm, "dataset": dataset, "scored": scored}))


def dense_params():
    return {"models": {"dense_reppoints_v1_r50_fpn_giou": {"preset": "dense_reppoints_v1_r50_fpn_giou_1x",
                                                           "scale": "cpu"},
                       "dense_reppoints_v2_r50_fpn_giou": {"preset": "dense_reppoints_v2_r50_fpn_giou_1x",
                                                           "scale": "cpu"}},
            "evaluate": {"splits": ["minival", "test-dev"]}}


DENSE_V2_TABLE = """\
**Dense RepPoints V2** (published: official RepPointsV2 README (Scalsol/RepPointsV2), the seed table)

| Model | MS training | Ours: bbox AP (minival/test-dev) | Ours: mask AP (minival/test-dev) | Our model (scale) | Measured on | Paper: bbox AP (minival/test-dev) | Paper: mask AP (minival/test-dev) |
|---|---|:-:|:-:|---|---|:-:|:-:|
| Dense_RepPoints_V2_R_50_FPN_1x | No | not run | not run | – | – | 40.5 / – | 34.8 / – |
| Dense_RepPoints_V2_R_50_FPN_GIoU_1x | No | 31.2 / 30.1 | 22.2 / 21.9 | dense_reppoints_v2_r50_fpn_giou (cpu) | synthetic minival (200 images); synthetic test-dev (200 images) | 41.5 / 41.6 | 35.1 / 35.4 |
| Dense_RepPoints_V2_R_50_FPN_GIoU_3x | Yes | not run | not run | – | – | 45.2 / 45.9 | 38.3 / 39.0 |

The README's notes:
- GIoU: GIoU loss instead of smooth-L1 for the regression branch.
- 1x / 3x: 12 / 36 epochs; MS (multi-scale) training draws the shorter image side from [480, 960]."""


def test_the_dense_reppoints_tables_from_mlflow_box_and_mask(tmp_path):
    metrics = tmp_path / "metrics"
    aps = {"dense_reppoints_v2_r50_fpn_giou": {"minival": (0.3123, 0.2222), "test-dev": (0.3011, 0.2188)},
           "dense_reppoints_v1_r50_fpn_giou": {"minival": (0.2951, 0.2049), "test-dev": (0.2876, 0.1950)}}
    for model, by_split in aps.items():
        for split, (box, mask) in by_split.items():
            dataset = f"synthetic {split} (200 images)"
            log_eval_segm(model, split, stats_with(box), stats_with(mask), dataset)
            write_metrics_segm(metrics, model, split, stats_with(box), stats_with(mask), dataset)
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n{BEGIN}\n{END}\n")
    md = write_report(dense_params(), readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics,
                      weights_root=None)
    text = readme.read_text()
    for out in (md, text):
        # in both places, right after the RepPoints tables and before CPM R-CNN's
        assert DENSE_V2_TABLE in out
        assert (out.index("**RepPoints V1**") < out.index("**Dense RepPoints V2**")
                < out.index("**Dense RepPoints V1**") < out.index("**CPM R-CNN on COCO test-dev**"))
    v1 = text.split("**Dense RepPoints V1**")[1].split("\n\n**")[0]
    body = [cells(l) for l in v1.splitlines() if l.startswith("| Dense_")]
    measured = "synthetic minival (200 images); synthetic test-dev (200 images)"
    assert body == [
        ["Dense_RepPoints_V1_R_50_FPN_1x", "No", "not run", "not run", "–", "–", "39.9 / –", "33.7 / –"],
        ["Dense_RepPoints_V1_R_50_FPN_GIoU_1x", "No", "29.5 / 28.8", "20.5 / 19.5",
         "dense_reppoints_v1_r50_fpn_giou (cpu)", measured, "40.9 / 41.1", "34.2 / 34.5"],
        ["Dense_RepPoints_V1_R_50_FPN_GIoU_3x", "Yes", "not run", "not run", "–", "–", "44.5 / 45.0", "37.4 / 38.0"],
    ]
    # the main table: our box and mask AP, the published box AP of the preset
    row = cells(next(l for l in text.splitlines() if l.startswith("| dense_reppoints_v2_r50_fpn_giou |")))
    assert row[4] == "22.2" and row[5] == "30.1" and row[7:9] == ["41.5", "41.6"] and "mask AP 35.1" in row[9]


@pytest.mark.parametrize("title,expected", [
    ("Dense RepPoints V2", [
        ("Dense_RepPoints_V2_R_50_FPN_1x", "No", "40.5 / –", "34.8 / –"),
        ("Dense_RepPoints_V2_R_50_FPN_GIoU_1x", "No", "41.5 / 41.6", "35.1 / 35.4"),
        ("Dense_RepPoints_V2_R_50_FPN_GIoU_3x", "Yes", "45.2 / 45.9", "38.3 / 39.0"),
    ]),
    ("Dense RepPoints V1", [
        ("Dense_RepPoints_V1_R_50_FPN_1x", "No", "39.9 / –", "33.7 / –"),
        ("Dense_RepPoints_V1_R_50_FPN_GIoU_1x", "No", "40.9 / 41.1", "34.2 / 34.5"),
        ("Dense_RepPoints_V1_R_50_FPN_GIoU_3x", "Yes", "44.5 / 45.0", "37.4 / 38.0"),
    ]),
])
def test_the_dense_reppoints_tables_show_the_seed_numbers_beside_not_run(title, expected):
    from pipeline.report import paper_table

    lines = paper_table(spec(title), D2DET_ROWS).splitlines()
    assert lines[0] == f"**{title}** (published: official RepPointsV2 README (Scalsol/RepPointsV2), the seed table)"
    assert cells(lines[2]) == ["Model", "MS training", "Ours: bbox AP (minival/test-dev)",
                               "Ours: mask AP (minival/test-dev)", "Our model (scale)", "Measured on",
                               "Paper: bbox AP (minival/test-dev)", "Paper: mask AP (minival/test-dev)"]
    assert lines[3] == "|---|---|:-:|:-:|---|---|:-:|:-:|"
    assert [cells(l) for l in lines[4:7]] == [[n, ms, "not run", "not run", "–", "–", box, mask]
                                             for n, ms, box, mask in expected]
    assert lines[7] == ""
    v = "v2" if title.endswith("V2") else "v1"
    assert [r["preset"] for r in spec(title)["rows"]] == [
        f"dense_reppoints_{v}_r50_fpn_1x", f"dense_reppoints_{v}_r50_fpn_giou_1x",
        f"dense_reppoints_{v}_r50_fpn_giou_mstrain_3x"]


def test_a_dense_row_without_test_dev_scores_or_masks():
    from pipeline.report import paper_table

    rows = [{"model": "dense_box_only", "preset": "dense_reppoints_v2_r50_fpn_1x", "scale": "cpu",
             "split": "minival", "dataset": "synthetic minival (8 images)", "scored": True, "bbox": {"AP": 0.25}},
            {"model": "dense_box_only", "preset": "dense_reppoints_v2_r50_fpn_1x", "scale": "cpu",
             "split": "test-dev", "dataset": "coco test-dev", "scored": False}]
    line = next(l for l in paper_table(spec("Dense RepPoints V2"), rows).splitlines()
                if l.startswith("| Dense_RepPoints_V2_R_50_FPN_1x |"))
    assert cells(line) == ["Dense_RepPoints_V2_R_50_FPN_1x", "No", "25.0 / not scored", "– / not scored",
                           "dense_box_only (cpu)", "synthetic minival (8 images); coco test-dev",
                           "40.5 / –", "34.8 / –"]


def test_published_dense_reppoints_entries():
    from pipeline.published import PUBLISHED

    assert (PUBLISHED["dense_reppoints_v2_r50_fpn_giou_1x"]["minival"],
            PUBLISHED["dense_reppoints_v2_r50_fpn_giou_1x"]["test-dev"]) == (41.5, 41.6)
    assert (PUBLISHED["dense_reppoints_v1_r50_fpn_giou_1x"]["minival"],
            PUBLISHED["dense_reppoints_v1_r50_fpn_giou_1x"]["test-dev"]) == (40.9, 41.1)


def test_the_note_states_the_noise_when_params_set_it():
    """Without params noise.box_ap the note is the plain one; with it, the results table's note
    says how much a CPU-scale number varies, in AP."""
    from pipeline.report import NOTE, note_text

    assert note_text(0.0) == NOTE
    text = note_text(0.028)
    assert text.startswith(NOTE) and "vary by about 2.8 AP" in text and "noise.box_ap" in text


# ---------------------------------------------------------------------------- a split the data lacks
def skipped_metrics(model, split="test-dev", name="my-dataset"):
    """A metrics file as the evaluate stage writes it for a split the manifest lacks."""
    return {"model": model, "split": split, "dataset": f"{name} (no {split} split)", "scored": False,
            "skipped": True, "reason": f"the prepared data (dataset {name}) has no {split} split, so nothing "
                                       f"was predicted or scored on it"}


def test_report_shows_a_skipped_test_dev_split_without_an_mlflow_run(tmp_path, params):
    """test-dev skipped by the evaluate stage (no MLflow run, metrics file ``skipped``): the report
    neither fails looking for its run nor counts it as measured data."""
    model = "m_skipped_td"
    p = {**params, "models": {model: params["models"]["m_report"]}}
    metrics = tmp_path / "metrics"
    log_eval(model, "minival", stats_with(0.3), dataset="my-dataset minival (3 images)")
    write_metrics(metrics, model, "minival", stats_with(0.3), dataset="my-dataset minival (3 images)")
    (metrics / model / "test-dev.json").write_text(json.dumps(skipped_metrics(model)))
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(p, readme=readme, reports_dir=tmp_path / "reports", metrics_root=metrics, weights_root=None)
    row = next(line for line in readme.read_text().splitlines() if line.startswith(f"| {model}"))
    assert cells(row)[4:7] == ["–", "skipped (no test-dev split)", "my-dataset minival (3 images)"]
    assert "| 30.0 / 50.0 / 50.0 |" in row
    full = md.split("## All COCO numbers")[1].split("## Figures")[0]
    assert f"| {model} | minival | bbox |" in full and "test-dev" not in full
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())[model] == {
        "box_AP": 0.3, "box_AP50": 0.5, "box_AP75": 0.5}


def test_the_papers_tables_show_a_skipped_test_dev_split():
    from pipeline.report import cpm_testdev_table, paper_table

    rows = [dict(D2DET_ROWS[0], dataset="my-dataset minival (3 images)"),
            {"model": "d2det_r50_fpn", "preset": "d2det_r50_fpn", "scale": "cpu", "split": "test-dev",
             **skipped_metrics("d2det_r50_fpn")}]
    line = next(l for l in paper_table(spec("D2Det"), rows).splitlines() if l.startswith("| D2Det-res50 [1]"))
    assert cells(line)[2:6] == ["39.0", "skipped (no test-dev split)", "d2det_r50_fpn (cpu)",
                                "my-dataset minival (3 images)"]
    dense = [dict(r, model="dense", preset="dense_reppoints_v2_r50_fpn_1x") for r in rows]
    line = next(l for l in paper_table(spec("Dense RepPoints V2"), dense).splitlines()
                if l.startswith("| Dense_RepPoints_V2_R_50_FPN_1x |"))
    assert cells(line)[2:6] == ["39.0 / skipped (no test-dev split)", "– / skipped (no test-dev split)",
                                "dense (cpu)", "my-dataset minival (3 images)"]
    cpm = [dict(r, model="cpm", preset="cpm_rcnn_r50_fpn") for r in rows]
    line = next(l for l in cpm_testdev_table(cpm).splitlines() if l.startswith("| R-50-FPN |"))
    assert cells(line)[2:7] == ["skipped (no test-dev split)", "–", "–", "cpm (cpu)", "my-dataset (no test-dev split)"]


def test_only_entries_keeps_the_named_runs_and_names_an_unknown_one():
    from pipeline.report import ReportError, only_entries

    params = {"models": {"a": {"preset": "p"}, "b": {"preset": "q"}}, "ablations": {"c": {"preset": "p"}}, "seed": 0}
    assert only_entries(params, ["b"]) == {"models": {"b": {"preset": "q"}}, "ablations": {}, "seed": 0}
    assert only_entries(params, ["c", "a"])["ablations"] == {"c": {"preset": "p"}}
    assert params["models"] == {"a": {"preset": "p"}, "b": {"preset": "q"}}  # the caller's params untouched
    with pytest.raises(ReportError, match=r"--models: zz not among the entries of 'models' or 'ablations' \(have: a, b, c\)"):
        only_entries(params, ["zz"])
