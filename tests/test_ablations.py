"""Ablation runs (params ``ablations``, one per seed of ``ablation_seeds``): config lookup and
run ids, the dvc.yaml stages and CPM R-CNN's two report tables (test-dev and component-wise,
with mean ± std over seeds)."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ablation_seeds, resolve_model_config, run_entries, run_id, runs, split_run_id
from pipeline.errors import ConfigError
from pipeline.report import (BEGIN, END, NOISE, component_runs, component_verdict, cpm_component_table, distinct_runs,
                             fmt_mean_std, our_way, paper_way, write_report)
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


def test_run_ids_name_the_seed_and_split_back():
    assert run_id("cpm_ablation_none") == "cpm_ablation_none"
    assert run_id("cpm_ablation_none", 0) == "cpm_ablation_none_seed0"
    assert run_id("a", 12) == "a_seed12"
    for entry, seed in (("a", None), ("a", 0), ("a", 12), ("cpm_ablation_none", 3), ("x_seed_y", 1)):
        assert split_run_id(run_id(entry, seed)) == (entry, seed)
    assert split_run_id("faster_rcnn_r50_fpn") == ("faster_rcnn_r50_fpn", None)
    with pytest.raises(ConfigError, match="non-negative integer"):
        run_id("a", -1)


def test_runs_are_the_models_and_each_ablation_once_per_seed():
    params = {"models": {"m": cpm()}, "ablations": {"a": cpm(switches(True, False, False)), "b": cpm()},
              "ablation_seeds": [0, 2], "seed": 5}
    found = runs(params)
    assert list(found) == ["m", "a_seed0", "a_seed2", "b_seed0", "b_seed2"]
    assert (found["m"].section, found["m"].entry, found["m"].seed) == ("models", "m", None)
    assert (found["a_seed2"].section, found["a_seed2"].entry, found["a_seed2"].seed) == ("ablations", "a", 2)
    assert found["a_seed2"].config(params) is params["ablations"]["a"]
    # a run id resolves to its entry's configuration
    assert resolve_model_config(params, "a_seed2") == resolve_model_config(params, "a")
    # without the key: one seed, 0 (params.yaml's default)
    assert list(runs({"models": {"m": cpm()}, "ablations": {"a": cpm()}})) == ["m", "a_seed0"]
    assert list(runs({**params, "ablation_seeds": []})) == ["m"]


@pytest.mark.parametrize("seeds", [3, [0, -1], [0, 0], ["0"], [True]])
def test_ablation_seeds_must_be_a_list_of_distinct_seeds(seeds):
    with pytest.raises(ConfigError, match="ablation_seeds"):
        ablation_seeds({"ablation_seeds": seeds})


def test_an_entry_name_may_not_look_like_a_seeded_run():
    params = {"models": {"m_seed1": cpm()}}
    with pytest.raises(ConfigError, match=r"models\.m_seed1: entry names may not end in '_seed<number>'"):
        run_entries(params)
    with pytest.raises(ConfigError, match="may not end in"):
        resolve_model_config({"ablations": {"a_seed0": cpm()}}, "a_seed0")


def test_a_name_in_both_sections_is_an_error():
    params = {"models": {"dup": cpm()}, "ablations": {"dup": cpm(), "b": cpm()}}
    with pytest.raises(ConfigError, match="'dup' is defined under both 'models' and 'ablations'"):
        resolve_model_config(params, "dup")
    with pytest.raises(ConfigError, match="'dup' is defined under both"):
        run_entries(params)


# ------------------------------------------------------------------------------------ dvc.yaml
def test_the_ablation_stages_are_train_and_evaluate_over_ablations_and_seeds():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = dvc["stages"]
    tr, ev = stages["train"]["do"], stages["evaluate"]["do"]
    tra, eva = stages["train_ablation"], stages["evaluate_ablation"]
    assert tra["matrix"] == eva["matrix"] == {"run": "${ablations}", "seed": "${ablation_seeds}"}
    assert {"ablations": {}} in dvc["vars"]

    def as_ablation(value: str) -> str:
        """A model stage's line as the ablation stage writes it: the run <entry>_seed<seed>, the
        family folders written out (a matrix item names the entry only)."""
        return (value.replace("--model ${key}", "--model ${item.run} --seed ${item.seed}")
                .replace("${key}", "${item.run}_seed${item.seed}")
                .replace("models/${item.base}", "models/grid_rcnn").replace("models/${item.family}", "models/cpm_rcnn"))

    # the same command, code, outputs as a model's stages: cached and pulled like them
    for key in ("cmd", "deps", "outs"):
        assert tra[key] == (as_ablation(tr[key]) if key == "cmd" else [as_ablation(v) for v in tr[key]]), key
        assert eva[key] == (as_ablation(ev[key]) if key == "cmd" else [as_ablation(v) for v in ev[key]]), key
    # the seed is in the command: no `seed` param (the models' stages have it)
    assert tra["params"] == [p.replace("models.${key}", "ablations.${item.run}") for p in tr["params"] if p != "seed"]
    assert eva["params"] == [p for p in ev["params"] if p != "seed"]
    report = stages["report"]
    assert {"ablations", "ablation_seeds", "seed"} <= set(report["params"])
    assert {"metrics", "weights"} <= set(report["deps"])
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


def cpm_params(seeds=(0,)):
    # names say nothing: the rows are matched by the resolved switches
    return {"models": {"cpm_main": cpm()},
            "ablations": {"abl_p": cpm(switches(False, False, False)),
                          "abl_q": cpm(switches(False, True, False)),
                          "abl_r": cpm(switches(True, False, False))},  # all three on: cpm_main itself
            "ablation_seeds": list(seeds),
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
    fake_runs(metrics, {"cpm_main": 0.35, "abl_p_seed0": 0.30, "abl_q_seed0": 0.32, "abl_r_seed0": 0.29})
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
            ["", "", "", "30.0", "abl_p_seed0 (cpu)", "synthetic minival (8 images)", "39.9"],
            ["✓", "", "", "29.0", "abl_r_seed0 (cpu)", "synthetic minival (8 images)", "40.7"],
            ["", "✓", "", "32.0", "abl_q_seed0 (cpu)", "synthetic minival (8 images)", "40.5"],
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
    assert "| abl_q_seed0 | minival | bbox |" in md.split("## All COCO numbers")[1]


def test_the_component_table_shows_mean_and_std_over_the_seeds(tmp_path):
    metrics = tmp_path / "metrics"
    fake_runs(metrics, {"cpm_main": 0.35,
                        "abl_p_seed0": 0.30, "abl_p_seed1": 0.32,
                        "abl_q_seed0": 0.31, "abl_q_seed1": 0.35,
                        "abl_r_seed0": 0.29, "abl_r_seed1": 0.29})
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    md = write_report(cpm_params(seeds=(0, 1)), readme=readme, reports_dir=tmp_path / "r", metrics_root=metrics,
                      weights_root=None)
    comp = section(md, "CPM R-CNN component-wise performance")
    rows = [cells(l) for l in comp.splitlines() if l.startswith("| ")]
    assert rows[0][3:5] == ["Ours: minival AP", "Our run (scale)"]
    assert rows[1:] == [
        ["", "", "", "31.0 ± 1.4 (n=2)", "abl_p_seed0, abl_p_seed1 (cpu)", "synthetic minival (8 images)", "39.9"],
        ["✓", "", "", "29.0 ± 0.0 (n=2)", "abl_r_seed0, abl_r_seed1 (cpu)", "synthetic minival (8 images)", "40.7"],
        ["", "✓", "", "33.0 ± 2.8 (n=2)", "abl_q_seed0, abl_q_seed1 (cpu)", "synthetic minival (8 images)", "40.5"],
        ["", "", "✓", "not run", "–", "–", "40.6"],
        ["✓", "✓", "✓", "35.0", "cpm_main (cpu)", "synthetic minival (8 images)", "41.3"],
    ]
    # CMM alone: 29.0 against 31.0 ± 1.4, outside the spread; ISM alone: 33.0 ± 2.8 against 31.0 ± 1.4, inside it
    assert ("Ours (minival box AP; a row of several runs (seeds) is compared by its mean, and a difference under "
            "the larger standard deviation of the two rows is within noise): each module alone above the baseline: "
            "CMM no, ISM within noise, RSM not run; all three best: not run.") in comp
    assert "| abl_q_seed1 | minival | bbox |" in md.split("## All COCO numbers")[1]


def component_rows(aps, runs_per_row=None, seeds=None):
    """Minival records of the five component rows (none; CMM, ISM, RSM alone; all three), each row
    ``aps[i]`` (a number, or a list: one run per value, seeds 0, 1, ...)."""
    mods = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
            (True, True, True)]
    out = []
    for name, m, ap in zip(["n", "c", "i", "r", "a"], mods, aps):
        for seed, value in enumerate(ap if isinstance(ap, list) else [ap]):
            out.append({"model": run_id(name, seed), "entry": name, "seed": seed, "config": name,
                        "section": "ablations", "split": "minival", "preset": "cpm_rcnn_r50_fpn", "scale": "cpu",
                        "dataset": "d", "bbox": {"AP": value},
                        "modules": dict(zip(["with_cmm", "with_ism", "with_rsm"], m))})
    return out


def test_mean_and_std_formatting():
    assert fmt_mean_std(0.3012, None, 1) == "30.1"
    assert fmt_mean_std(None, None, 0) == "–"
    assert fmt_mean_std(0.31, 0.0141421, 2) == "31.0 ± 1.4 (n=2)"
    assert fmt_mean_std(0.3, 0.01, 3) == "30.0 ± 1.0 (n=3)"


def test_a_configuration_and_seed_count_once():
    model = {"model": "cpm_main", "entry": "cpm_main", "section": "models", "seed": 0, "config": "cfg-all"}
    same = {"model": "abl_all_seed0", "entry": "abl_all", "section": "ablations", "seed": 0, "config": "cfg-all"}
    other_seed = {**same, "model": "abl_all_seed1", "seed": 1}
    other_cfg = {**same, "model": "abl_x_seed0", "entry": "abl_x", "config": "cfg-x"}
    no_seed = {"model": "hand_made"}
    assert distinct_runs([model, same, other_seed, other_cfg, no_seed, dict(no_seed)]) == \
        [model, other_seed, other_cfg, no_seed, no_seed]
    # in the table: the model run and an ablation of its configuration at its seed are one run
    rows = component_rows([0.30, 0.31, 0.305, 0.302, [0.32, 0.32, 0.34]])
    rows[-3]["model"], rows[-3]["section"] = "cpm_main", "models"
    rows[-2]["model"], rows[-1]["model"] = "a_seed0", "a_seed1"  # a_seed0 repeats cpm_main (same config, seed 0)
    rows[-2]["seed"], rows[-1]["seed"] = 0, 1
    row, found = component_runs(rows)[-1]
    assert [r["model"] for r in found] == ["cpm_main", "a_seed1"]
    assert "| 33.0 ± 1.4 (n=2) | cpm_main, a_seed1 (cpu) |" in cpm_component_table(rows)


def test_a_difference_under_the_rows_std_is_within_noise():
    aps = [0.300, 0.310, 0.290, 0.302, 0.320]
    assert our_way(aps, 0.0, [None] * 5) == paper_way(aps)
    assert our_way(aps, 0.0, [0.0] * 5) == paper_way(aps)
    # a std of 1.1 AP on CMM alone: its 1.0 above the baseline is within it; CMM is also the best
    # single row, and all three, 1.0 above it, are within its std too
    assert our_way(aps, 0.0, [None, 0.011, None, None, None]) == ([NOISE, False, True], NOISE)
    # the larger of the two rows' std counts: the baseline's 0.003 leaves ISM (-1.0) outside
    assert our_way(aps, 0.0, [0.003, None, None, None, None]) == ([True, False, NOISE], True)
    # with the measured spread as well, the larger threshold wins
    assert our_way(aps, 0.005, [0.003, None, None, None, None]) == ([True, False, NOISE], True)
    assert our_way(aps, 0.005, [0.015, None, None, None, None]) == ([NOISE, NOISE, NOISE], True)
    with pytest.raises(ValueError):
        our_way(aps, 0.0, [None])


def test_the_component_table_with_seeds_compares_means_and_says_so():
    # baseline 30.0 ± 1.0 (n=3); CMM 31.5 ± 0.7 (n=2): +1.5 > 1.0, yes; ISM 30.5 ± 0.7: within
    rows = component_rows([[0.29, 0.30, 0.31], [0.31, 0.32], [0.30, 0.31], 0.33, 0.36])
    text = cpm_component_table(rows)
    assert "| 30.0 ± 1.0 (n=3) | n_seed0, n_seed1, n_seed2 (cpu) | d |" in text
    assert "| 31.5 ± 0.7 (n=2) |" in text and "|  |  | ✓ | 33.0 | r_seed0 (cpu) | d |" in text
    assert "CMM yes, ISM within noise, RSM yes; all three best: yes." in text
    assert "**yes where the differences exceed the noise (1 of 4 within it)**" in text
    assert "a row of several runs (seeds) is compared by its mean" in text
    with_noise = cpm_component_table(rows, noise=0.012)
    assert ("a difference under 1.2 AP, the measured run-to-run spread at this scale, is within noise; a row of "
            "several runs (seeds) is compared by its mean, and a difference under the larger standard deviation of "
            "the two rows is within noise too") in with_noise
    # one run per row: no word of means
    assert "several runs" not in cpm_component_table(component_rows([0.30, 0.31, 0.305, 0.302, 0.32]))


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


# ------------------------------------------------------------------------------------ a seeded run
def test_a_seeded_run_trains_with_its_seed_under_its_own_id(tiny_prepared, tmp_path):
    """`pipeline.train --seed K` / `pipeline.evaluate --seed K` (the ablation stages): the run
    <entry>_seedK, trained with seed K, in its own files and MLflow runs; the report reads it as
    the ablation run of that seed."""
    from pipeline.evaluate import evaluate_model
    from pipeline.report import collect
    from pipeline.tracking import client, newest_finished_run
    from pipeline.train import run_training
    from tests.conftest import TINY_MODEL, tiny_params

    params = tiny_params()
    entry = "tiny_abl"
    params["ablations"] = {entry: params.pop("models")[TINY_MODEL]}
    params["ablations"][entry]["overrides"]["schedule"]["epochs"] = 1
    params["models"] = {}
    params["ablation_seeds"] = [1]
    params["evaluate"]["splits"] = ["minival"]
    params["seed"] = 0
    roots = dict(manifest_file=tiny_prepared, weights_root=tmp_path / "weights", metrics_root=tmp_path / "metrics")
    run_training(entry, params, checkpoint_root=tmp_path / "ckpt", log_model=False, seed=1, **roots)
    run = run_id(entry, 1)
    assert run == "tiny_abl_seed1"
    assert (tmp_path / "weights" / f"{run}.pth").exists() and (tmp_path / "ckpt" / run).is_dir()
    assert (tmp_path / "metrics" / run / "train.json").exists()
    assert not (tmp_path / "weights" / f"{entry}.pth").exists()
    c = client()
    train = newest_finished_run(c, run, "train")
    assert train.info.run_name == f"train/{run}"
    assert train.data.params["seed"] == "1"  # the stage's seed, not params `seed`
    assert (train.data.tags["entry"], train.data.tags["seed"]) == (entry, "1")

    evaluate_model(entry, params, results_root=tmp_path / "results", seed=1, **roots)
    assert (tmp_path / "metrics" / run / "minival.json").exists() and (tmp_path / "results" / run).is_dir()
    ev = newest_finished_run(c, run, "evaluate", "minival")
    assert ev.info.run_name == f"evaluate/{run}/minival" and ev.data.tags["seed"] == "1"

    [record] = collect(params, tmp_path / "metrics")
    assert (record["model"], record["entry"], record["seed"], record["section"]) == (run, entry, 1, "ablations")
