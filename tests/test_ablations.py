"""Ablation runs (params ``ablations``): config lookup, the dvc.yaml stages
and CPM R-CNN's two report tables (test-dev and component-wise)."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import resolve_model_config, run_entries
from pipeline.errors import ConfigError
from pipeline.report import BEGIN, END, NOISE, component_verdict, cpm_component_table, our_way, paper_way, write_report
from tests.conftest import REPO
from tests.test_report import cells, log_eval, stats_with, write_metrics


def switches(cmm, ism, rsm):
    return {"model": {"roi_head": {"with_cmm": cmm, "with_ism": ism, "with_rsm": rsm}}}


def cpm(overrides=None):
    return {"preset": "cpm_rcnn_r50_fpn", "scale": "cpu", "overrides": overrides or {}}


# ------------------------------------------------------------------------------------ config lookup
def test_a_run_is_found_under_models_or_ablations():
    params = {"models": {"m": cpm()}, "ablations": {"a": cpm(switches(True, False, False))}}
    assert resolve_model_config(params, "m")["model"]["roi_head"]["with_ism"] is True
    roi = resolve_model_config(params, "a")["model"]["roi_head"]
    assert (roi["with_cmm"], roi["with_ism"], roi["with_rsm"]) == (True, False, False)
    assert resolve_model_config({"ablations": {"a": cpm()}}, "a")["preset"] == "cpm_rcnn_r50_fpn"
    assert list(run_entries(params)) == ["m", "a"] and run_entries(params)["a"][0] == "ablations"
    with pytest.raises(ConfigError, match="no model named 'x' under 'models' or 'ablations'"):
        resolve_model_config(params, "x")
    with pytest.raises(ConfigError, match=r"ablations\.a\.preset = 'nope'"):
        resolve_model_config({"ablations": {"a": {"preset": "nope"}}}, "a")


def test_a_name_in_both_sections_is_an_error():
    params = {"models": {"dup": cpm()}, "ablations": {"dup": cpm(), "b": cpm()}}
    with pytest.raises(ConfigError, match="'dup' is defined under both 'models' and 'ablations'"):
        resolve_model_config(params, "dup")
    with pytest.raises(ConfigError, match="'dup' is defined under both"):
        run_entries(params)


# ------------------------------------------------------------------------------------ dvc.yaml
def test_the_ablation_stages_are_train_and_evaluate_over_ablations():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = dvc["stages"]
    tr, ev = stages["train"]["do"], stages["evaluate"]["do"]
    tra, eva = stages["train_ablation"], stages["evaluate_ablation"]
    assert tra["foreach"] == eva["foreach"] == "${ablations}" and {"ablations": {}} in dvc["vars"]
    # the same command, code, outputs as a model's stages: cached and pulled like them
    for key in ("cmd", "deps", "outs"):
        assert tra["do"][key] == tr[key], key
        assert eva["do"][key] == ev[key], key
    assert tra["do"]["params"] == [p.replace("models.", "ablations.") for p in tr["params"]]
    assert eva["do"]["params"] == ev["params"]
    report = stages["report"]
    assert "ablations" in report["params"] and {"metrics", "weights"} <= set(report["deps"])
    assert "checkpoints" not in report["deps"]


def test_no_ablation_repeats_a_model():
    """An ablation with the configuration of a model would train the same thing twice: the
    component table reads the model's run for that row instead."""
    from pipeline.config import load_params

    params = load_params(REPO / "params.yaml")
    models = {name: resolve_model_config(params, name) for name in params["models"]}
    for name in params.get("ablations") or {}:
        cfg = resolve_model_config(params, name)
        same = [m for m, c in models.items() if c == cfg]
        assert not same, f"ablations.{name} repeats models.{same[0]}"


# ------------------------------------------------------------------------------------ the CPM tables
def test_paper_way():
    assert paper_way([39.9, 40.7, 40.5, 40.6, 41.3]) == ([True, True, True], True)
    assert paper_way([0.30, 0.31, 0.29, 0.30, 0.305]) == ([True, False, False], False)
    assert paper_way([0.30, None, 0.31, 0.32, 0.4]) == ([None, True, True], None)


def cpm_params():
    # names say nothing: the rows are matched by the resolved switches
    return {"models": {"cpm_main": cpm()},
            "ablations": {"abl_p": cpm(switches(False, False, False)),
                          "abl_q": cpm(switches(False, True, False)),
                          "abl_r": cpm(switches(True, False, False))},  # all three on: cpm_main itself
            "evaluate": {"splits": ["minival", "test-dev"]}}


def fake_runs(metrics, aps, testdev_ap=0.2):
    for run, ap in aps.items():
        log_eval(run, "minival", stats_with(ap))
        write_metrics(metrics, run, "minival", stats_with(ap))
        log_eval(run, "test-dev", stats_with(testdev_ap), dataset="synthetic test-dev (8 images)")
        write_metrics(metrics, run, "test-dev", stats_with(testdev_ap), dataset="synthetic test-dev (8 images)")


def section(md, title):
    return md.split(f"**{title}**")[1].split("\n**")[0].split("\n## ")[0]


def test_the_cpm_tables_from_mlflow_and_the_metrics_files(tmp_path):
    metrics = tmp_path / "metrics"
    fake_runs(metrics, {"cpm_main": 0.35, "abl_p": 0.30, "abl_q": 0.32, "abl_r": 0.29})
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(cpm_params(), readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics,
                      weights_root=None)
    for text in (md, readme.read_text()):
        comp = section(text, "CPM R-CNN component-wise performance")
        rows = [cells(l) for l in comp.splitlines() if l.startswith("| ")]
        assert rows[0] == ["CMM", "ISM", "RSM", "Ours: minival AP", "Our run (scale)", "Measured on",
                           "Paper: AP (val2017)"]
        assert rows[1:] == [
            ["", "", "", "30.0", "abl_p (cpu)", "synthetic minival (8 images)", "39.9"],
            ["✓", "", "", "29.0", "abl_r (cpu)", "synthetic minival (8 images)", "40.7"],
            ["", "✓", "", "32.0", "abl_q (cpu)", "synthetic minival (8 images)", "40.5"],
            ["", "", "✓", "not run", "–", "–", "40.6"],
            ["✓", "✓", "✓", "35.0", "cpm_main (cpu)", "synthetic minival (8 images)", "41.3"],
        ]
        assert ("Does our ablation go the paper's way? **cannot tell yet (runs missing)**. Paper: each module "
                "alone above the baseline: CMM yes, ISM yes, RSM yes; all three best: yes. Ours (minival box AP): "
                "each module alone above the baseline: CMM no, ISM yes, RSM not run; all three best: not run."
                ) in comp

        testdev = section(text, "CPM R-CNN on COCO test-dev")
        rows = [cells(l) for l in testdev.splitlines() if l.startswith("| ")]
        assert rows[0][:3] == ["Backbone", "LR", "Ours: mAP (test-dev)"]
        assert rows[1:] == [  # the model's run only, not the ablation with the same preset
            ["R-50-FPN", "2x", "20.0", "50.0", "50.0 / 50.0 / 50.0", "cpm_main (cpu)",
             "synthetic test-dev (8 images)", "41.7", "59.2", "23.1 / 44.0 / 54.7"],
            ["R-101-FPN", "2x", "not run", "not run", "not run", "–", "–", "43.3", "61.2", "23.9 / 46.3 / 56.6"],
            ["X-101-FPN-DCN", "2x", "not run", "not run", "not run", "–", "–", "46.4", "65.3",
             "26.8 / 49.4 / 61.0"],
        ]
    # ablation runs: not in the main table, but in the table of all numbers
    main = md.split("## Detection (box AP)")[1].split("\n## ")[0]
    assert "| cpm_main | cpm_rcnn_r50_fpn (cpu) |" in main and "abl_" not in main
    assert "| 41.7 |" in main  # the published test-dev AP of cpm_rcnn_r50_fpn
    assert "| abl_q | minival | bbox |" in md.split("## All COCO numbers")[1]


def test_the_component_verdict_yes_and_no():
    def rows(aps):
        names = ["n", "c", "i", "r", "a"]
        mods = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
                (True, True, True)]
        return [{"model": n, "section": "ablations", "split": "minival", "preset": "cpm_rcnn_r50_fpn",
                 "scale": "cpu", "dataset": "d", "bbox": {"AP": ap},
                 "modules": dict(zip(["with_cmm", "with_ism", "with_rsm"], m))}
                for n, m, ap in zip(names, mods, aps)]

    assert "**yes**" in cpm_component_table(rows([0.30, 0.31, 0.305, 0.302, 0.32]))
    text = cpm_component_table(rows([0.30, 0.31, 0.29, 0.302, 0.305]))
    assert "**no**" in text and "CMM yes, ISM no, RSM yes; all three best: no." in text
    # another preset's ablations do not count
    other = [{**r, "preset": "cpm_rcnn_r101_fpn"} for r in rows([0.3] * 5)]
    assert cpm_component_table(other).count("not run |") == 5


def test_differences_under_the_measured_spread_are_within_noise():
    aps = [0.300, 0.310, 0.290, 0.302, 0.320]  # base; CMM, ISM, RSM alone; all three
    assert our_way(aps, 0.0) == paper_way(aps)
    assert our_way(aps, 0.005) == ([True, False, NOISE], True)
    assert our_way(aps, 0.015) == ([NOISE, NOISE, NOISE], NOISE)  # all three 1.0 above the best single
    assert our_way(aps, 0.009) == ([True, False, NOISE], True)
    paper = [True, True, True, True]
    assert component_verdict([True, NOISE, True, True], paper).startswith("yes where the differences exceed")
    assert component_verdict([True, False, NOISE, True], paper) == "no"
    assert component_verdict([NOISE] * 4, paper) == NOISE
    assert component_verdict([True, None, True, True], paper) == "cannot tell yet (runs missing)"


def test_the_component_table_says_within_noise_and_names_the_spread():
    names = ["n", "c", "i", "r", "a"]
    mods = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
            (True, True, True)]
    rows = [{"model": n, "section": "ablations", "split": "minival", "preset": "cpm_rcnn_r50_fpn",
             "scale": "cpu", "dataset": "d", "bbox": {"AP": ap},
             "modules": dict(zip(["with_cmm", "with_ism", "with_rsm"], m))}
            for n, m, ap in zip(names, mods, [0.30, 0.31, 0.29, 0.302, 0.305])]
    strict = cpm_component_table(rows)
    assert "**no**" in strict and "within noise" not in strict
    text = cpm_component_table(rows, noise=0.012)
    assert "**within noise**" in text
    assert "a difference under 1.2 AP, the measured run-to-run spread at this scale, is within noise" in text
    assert "CMM within noise, ISM within noise, RSM within noise; all three best: within noise." in text


def test_published_cpm_and_grid_entries():
    from pipeline.published import CPM_COMPONENT_TABLE, PUBLISHED

    assert PUBLISHED["cpm_rcnn_r50_fpn"]["minival"] is None and PUBLISHED["cpm_rcnn_r50_fpn"]["test-dev"] == 41.7
    assert PUBLISHED["grid_rcnn_r50_fpn_2x"]["minival"] == 40.4
    assert [r["AP"] for r in CPM_COMPONENT_TABLE["rows"]] == [39.9, 40.7, 40.5, 40.6, 41.3]
