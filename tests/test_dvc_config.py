"""dvc.yaml as DVC reads it (no stage runs): which stages a changed file or parameter
invalidates, what is cached and shared, and the declared artifacts and plots."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ablation_seeds, load_params, run_entries, run_id, runs, split_run_id
from tests.conftest import REPO

#: The family folders the ablation stages depend on (dvc.yaml writes them out: a matrix item
#: gives the entry's name only, not its `family` / `base`).
ABLATION_FAMILY, ABLATION_BASE = "cpm_rcnn", "grid_rcnn"


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.addressing: s for s in repo.index.stages}


def dep_paths(stage) -> list[str]:
    return [d.def_path for d in stage.deps if not hasattr(d, "params")]


def invalidated_by(stages, path: str) -> set[str]:
    """The stages whose dependencies include ``path`` (itself or a folder above it): the ones
    `dvc status` reports as changed once that file changes in an up-to-date workspace."""
    out = set()
    for name, stage in stages.items():
        for dep in dep_paths(stage):
            if path == dep or path.startswith(dep.rstrip("/") + "/"):
                out.add(name)
    return out


def stage_run(name: str) -> str:
    """The run a train/evaluate stage writes: ``train@<run>``; ``train_ablation@<entry>-<seed>``
    writes the run ``<entry>_seed<seed>`` (:func:`pipeline.config.run_id`)."""
    kind, _, key = name.partition("@")
    if kind.endswith("_ablation"):
        entry, seed = key.rsplit("-", 1)
        return run_id(entry, int(seed))
    return key


def params_of(stages) -> dict[str, set[str]]:
    from dvc.dependency.param import ParamsDependency

    return {name: {p for d in s.deps if isinstance(d, ParamsDependency) for p in (d.params or [])}
            for name, s in stages.items()}


def runs_of(*families: str) -> set[str]:
    """The train and evaluate stages of the runs whose entry is of one of ``families``: one pair
    per model, one per ablation and seed of ``ablation_seeds``."""
    params = load_params(REPO / "params.yaml")
    out = set()
    for run in runs(params).values():
        if run.config(params).get("family") in families:
            if run.section == "models":
                out |= {f"train@{run.entry}", f"evaluate@{run.entry}"}
            else:
                out |= {f"train_ablation@{run.entry}-{run.seed}", f"evaluate_ablation@{run.entry}-{run.seed}"}
    return out


FAMILY_FILES = {
    "models/faster_rcnn/faster_rcnn.py": ("faster_rcnn",),
    "models/d2det/d2det_head.py": ("d2det",),
    "models/grid_rcnn/grid_head.py": ("grid_rcnn", "cpm_rcnn"),  # CPM R-CNN builds on Grid R-CNN
    "models/cpm_rcnn/cpm_roi_head.py": ("cpm_rcnn",),
    "models/reppoints/reppoints_head.py": ("reppoints", "dense_reppoints"),  # Dense builds on RepPoints
    "models/dense_reppoints/dense_reppoints_v2_head.py": ("dense_reppoints",),
}


@pytest.mark.parametrize("path", sorted(FAMILY_FILES))
def test_a_family_file_invalidates_that_family_and_the_report(stages, path):
    assert (REPO / path).exists()
    expected = runs_of(*FAMILY_FILES[path]) | {"report"}
    assert len(expected) > 1
    assert invalidated_by(stages, path) == expected


def test_shared_and_pipeline_files_invalidate_what_uses_them(stages):
    all_runs = {n for n in stages if n.split("@")[0] in ("train", "evaluate", "train_ablation", "evaluate_ablation")}
    trains = {n for n in all_runs if n.startswith("train")}
    evals = all_runs - trains
    assert invalidated_by(stages, "models/common/backbones/freezing.py") == all_runs | {"report", "pretrain"}
    assert invalidated_by(stages, "pipeline/pretrain.py") == {"pretrain"}
    assert invalidated_by(stages, "pipeline/figures.py") == evals | {"report"}  # no retraining for a plot change
    assert invalidated_by(stages, "pipeline/visualize.py") == {"report"}
    assert invalidated_by(stages, "pipeline/tracking.py") == set()  # where runs are recorded changes no result
    assert invalidated_by(stages, "checkpoints/d2det_r50_fpn/epoch_0001.pth") == set()


def test_settings_that_cannot_change_a_result_are_no_dependency(stages):
    tracked = set().union(*params_of(stages).values())
    for key in ("train.log_interval", "train.keep_checkpoints", "train.checkpoint_every", "train.num_workers",
                "train.node_rank", "train.rdzv_endpoint", "train.rdzv_id", "evaluate.processes"):
        assert key not in tracked and "train" not in tracked and "evaluate" not in tracked, key
    for name, keys in params_of(stages).items():
        if name.startswith(("train@", "evaluate@", "train_ablation@", "evaluate_ablation@")):
            entry = split_run_id(stage_run(name))[0]
            assert not any(k.startswith(("models.", "ablations.")) and not k.endswith(f".{entry}") for k in keys), \
                (name, keys)  # a run depends on its own entry only
        if name.startswith(("train_ablation@", "evaluate_ablation@")):
            # the seed is the stage's own (in its command): no `seed` or `ablation_seeds` param
            assert not keys & {"seed", "ablation_seeds"}, (name, keys)


def test_every_cpu_run_starts_from_the_pretrain_stage_output(stages):
    """Every CPU entry's backbone starts from the pretrain stage's output, which every train
    stage depends on, and the pretrained architecture is the one the entry builds."""
    from pipeline.config import resolve_model_config

    params = load_params(REPO / "params.yaml")
    out = params["pretrain"]["init"]["pretrained"]
    assert [o.def_path for o in stages["pretrain"].outs if o.use_cache][0] == out
    arch = ("depth", "base_channels", "groups", "width_per_group", "norm")
    cpu_runs = [n for n in run_entries(params) if resolve_model_config(params, n)["scale"] == "cpu"]
    assert cpu_runs
    for name in cpu_runs:
        backbone = resolve_model_config(params, name)["model"]["backbone"]
        assert backbone["pretrained"] == out, name
        assert {k: backbone[k] for k in arch} == {k: params["pretrain"]["backbone"][k] for k in arch}, name
    for name, stage in stages.items():
        if name.startswith("train"):
            assert out in dep_paths(stage), name


def test_evaluate_depends_on_the_final_weights_and_the_report_on_no_epoch_state(stages):
    for name, stage in stages.items():
        if name.startswith("evaluate"):
            run = stage_run(name)
            deps = dep_paths(stage)
            assert f"weights/{run}.pth" in deps and not any(d.startswith("checkpoints") for d in deps)
    assert not any(d.startswith("checkpoints") for d in dep_paths(stages["report"]))


def test_train_and_evaluate_outputs_are_cached_and_never_persist(stages):
    """DVC keeps a stage's run-cache only when no output persists and every output but metrics
    and plots is cached; the final weights are the train stage's cached output."""
    for name, stage in stages.items():
        for out in stage.outs:
            assert not out.persist, (name, out.def_path)
        if name != "report":
            for out in stage.outs:
                assert out.use_cache or out.is_metric or out.is_plot, (name, out.def_path)
        if name.startswith("train"):
            assert f"weights/{stage_run(name)}.pth" in [o.def_path for o in stage.outs if o.use_cache]


def test_every_run_is_a_declared_model_artifact():
    """Every run of params.yaml: the models, and the ablations once per seed of `ablation_seeds`."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    artifacts = dvc["artifacts"]
    params = load_params(REPO / "params.yaml")
    for name in runs(params):
        assert artifacts.get(name, {}).get("path") == f"weights/{name}.pth", name
        assert artifacts[name]["type"] == "model"
    assert set(artifacts) == set(runs(params))


def test_the_ablation_stages_are_one_per_entry_and_seed(stages):
    params = load_params(REPO / "params.yaml")
    want = {f"{kind}@{name}-{seed}" for kind in ("train_ablation", "evaluate_ablation")
            for name in params["ablations"] for seed in ablation_seeds(params)}
    assert want and {n for n in stages if "_ablation@" in n} == want
    assert stages["train_ablation@cpm_ablation_none-0"].cmd == \
        "python -m pipeline.train --model cpm_ablation_none --seed 0"
    assert stages["evaluate_ablation@cpm_ablation_none-0"].cmd == \
        "python -m pipeline.evaluate --model cpm_ablation_none --seed 0"


def test_every_ablation_is_of_the_family_its_stages_depend_on(stages):
    """dvc.yaml writes the ablation stages' family folders out (a matrix item names the entry
    only): an ablation of another family would not re-run when its code changes."""
    params = load_params(REPO / "params.yaml")
    for name, entry in params["ablations"].items():
        assert (entry.get("family"), entry.get("base")) == (ABLATION_FAMILY, ABLATION_BASE), \
            f"ablations.{name}: the ablation stages depend on models/{ABLATION_FAMILY} and models/{ABLATION_BASE} " \
            f"only; give another family stages of its own in dvc.yaml"
    for name, stage in stages.items():
        if "_ablation@" in name:
            families = {d for d in dep_paths(stage) if d.startswith("models/") and d.count("/") == 1
                        and not d.endswith(".py")}
            assert families == {"models/common", f"models/{ABLATION_FAMILY}", f"models/{ABLATION_BASE}"}, name


def resolved_stage_names(tmp_path, params: dict) -> set[str]:
    """The stage names DVC resolves from the repository's dvc.yaml with ``params`` as params.yaml
    (a scratch DVC repository; nothing runs)."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo(str(tmp_path)) as repo:
        return {s.name for s in repo.index.stages}


def test_ablation_seeds_make_one_stage_pair_per_entry_and_seed(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["ablation_seeds"] = [0, 1]
    names = resolved_stage_names(tmp_path, params)
    for kind in ("train_ablation", "evaluate_ablation"):
        assert {n for n in names if n.startswith(f"{kind}@")} == \
            {f"{kind}@{name}-{seed}" for name in params["ablations"] for seed in (0, 1)}
    assert len(runs(params)) == len(params["models"]) + 2 * len(params["ablations"])


def test_no_ablations_make_no_ablation_stages(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["ablations"] = {}
    params["ablation_seeds"] = [0, 1, 2]
    names = resolved_stage_names(tmp_path, params)
    assert not {n for n in names if "_ablation@" in n} and f"train@{next(iter(params['models']))}" in names


def test_the_top_level_plots_overlay_every_run():
    from pipeline.report import OVERLAY_PLOTS

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc["plots"]}
    assert set(plots) == {f"reports/plots/{name}" for name in OVERLAY_PLOTS}
    assert "reports/plots/pr_minival_segm.csv" in plots  # the mask PR curves are plots too
    for props in plots.values():
        assert props["template"] == "by_model"
    template = (REPO / ".dvc" / "plots" / "by_model.json").read_text()
    assert '"field": "model"' in template and "<DVC_METRIC_DATA>" in template


def test_git_ignores_the_epoch_state_but_not_what_dvc_tracks():
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/checkpoints/" in ignored
    for path in ("/weights/", "/results/", "/metrics/"):
        assert path not in ignored, f"{path}: DVC writes its own .gitignore entries for cached outputs"


def test_the_evaluation_engine_is_a_dependency_of_every_evaluate_stage(stages):
    """``evaluate.engine`` (faster-coco-eval or pycocotools) picks the code that computes the
    numbers: changing it re-runs every evaluation (and nothing else)."""
    params = params_of(stages)
    evals = {n for n in stages if n.startswith(("evaluate@", "evaluate_ablation@"))}
    assert evals and {n for n, keys in params.items() if "evaluate.engine" in keys} == evals
    assert load_params(REPO / "params.yaml")["evaluate"]["engine"] == "faster"
