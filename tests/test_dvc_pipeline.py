"""The pipeline through DVC the way its users work, in a temporary copy of the repository on
the tiny configuration (16 training images, one Faster R-CNN, seconds per stage): repro, a
second repro that runs nothing, an identical retrain that changes no output, push to a
local-directory remote and a teammate's fresh clone + pull, the run-cache, which stages a
touched file invalidates, bad weights, and queued / temporary experiments whose MLflow runs
land in the workspace's store. Each test builds on the state the one before left."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_MODEL, tiny_params, write_params

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]
WEIGHTS = f"weights/{TINY_MODEL}.pth"


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    skip = ("weights/", "results/", "metrics/", "dvc.lock")  # outputs of the developer's own runs
    return [f for f in out if f and (REPO / f).is_file() and not f.startswith(skip)]


def dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own store at <copy>/mlflow.db
    env.pop("DETLAB_MLFLOW_ARTIFACTS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "t"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "t@t"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd, cwd, ok=True, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=dvc_env(), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def out(cmd, cwd, **kw) -> str:
    proc = run(cmd, cwd, **kw)
    return proc.stdout + proc.stderr


def git_status(repo: Path) -> str:
    return out(["git", "status", "--porcelain"], repo).strip()


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message, "--allow-empty"], repo)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def ran(log: str) -> list[str]:
    return [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]


def mlflow_runs(repo: Path, parents: str | None = None) -> list[tuple[str, str, str | None]]:
    """(run name, status, dvc_experiment tag) of every stage run in the copy's store, in the
    order they were made (``parents``: instead the runs that group the stage runs of a DVC
    experiment, ``"exp"``, or of one `dvc repro`, ``"repro"``)."""
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        rows = con.execute(
            "select r.name, r.status, (select value from tags t where t.run_uuid = r.run_uuid "
            "and t.key = 'dvc_experiment'), (select count(*) from tags t where t.run_uuid = r.run_uuid "
            "and t.key = 'dvc_experiment_parent'), (select count(*) from tags t where t.run_uuid = r.run_uuid "
            "and t.key = 'detlab.dvc_invocation') from runs r where r.lifecycle_stage = 'active' "
            "order by r.start_time, r.rowid").fetchall()
    finally:
        con.close()
    return [row[:3] for row in rows if ("exp" if row[3] else "repro" if row[4] else None) == parents]


def parent_names(repo: Path) -> dict[str, set[str]]:
    """Stage run name -> the names of the parents of its runs."""
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        rows = con.execute(
            "select r.name, p.name from runs r join tags pt on pt.run_uuid = r.run_uuid "
            "and pt.key = 'mlflow.parentRunId' join runs p on p.run_uuid = pt.value").fetchall()
    finally:
        con.close()
    out: dict[str, set[str]] = {}
    for child, parent in rows:
        out.setdefault(child, set()).add(parent)
    return out


def parent_of_runs(repo: Path) -> dict[str, str]:
    """dvc_experiment tag -> the names of the parents of its stage runs."""
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        return dict(con.execute(
            "select e.value, p.name from tags e join tags pt on pt.run_uuid = e.run_uuid and pt.key = 'mlflow.parentRunId' "
            "join runs p on p.run_uuid = pt.value where e.key = 'dvc_experiment'").fetchall())
    finally:
        con.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, str]:
    """A git repository with the project's files, the tiny params and one `dvc repro`, committed."""
    dst = tmp_path_factory.mktemp("repo") / "detlab"
    return dst, repro_in_copy(dst, tiny_params())


def repro_in_copy(dst: Path, params: dict) -> str:
    """Copy the project's files to ``dst`` with ``params`` as params.yaml, make it a git repository,
    run `dvc repro` and commit the result; returns the repro's output."""
    for f in repo_files():
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    write_params(params, dst / "params.yaml")
    run(["git", "init", "-q"], dst)
    commit(dst, "params")
    log = out([*DVC, "repro"], dst)
    commit(dst, "repro")
    return log


def test_repro_runs_every_stage_and_caches_what_it_shares(workspace):
    repo, log = workspace
    assert ran(log) == ["prepare", "pretrain", f"train@{TINY_MODEL}", f"evaluate@{TINY_MODEL}", "report"]
    assert (repo / WEIGHTS).stat().st_size > 1000
    assert not (repo / "checkpoints" / TINY_MODEL / "model_final.pth").exists()
    assert (repo / "checkpoints" / TINY_MODEL / "latest.json").exists()  # the epoch state, outside DVC
    assert (repo / f"results/{TINY_MODEL}/detections_test-dev2017_frcnn-tiny_results.zip").exists()
    minival = json.loads((repo / f"metrics/{TINY_MODEL}/minival.json").read_text())
    assert minival["scored"] and len(minival["bbox"]) == 12 and "synthetic minival" in minival["dataset"]
    assert not any("second" in k or k == "device" for k in minival)
    train = json.loads((repo / f"metrics/{TINY_MODEL}/train.json").read_text())
    assert set(train) == {"iterations", "epochs", "final_losses"}  # no timings, no host facts
    lock = (repo / "dvc.lock").read_text()
    for cached in (WEIGHTS, f"results/{TINY_MODEL}", f"metrics/{TINY_MODEL}/pr", "data/prepared",
                   "weights/pretrained/cpu_backbone.pth"):
        assert f"path: {cached}" in lock
    assert "checkpoints" not in lock
    assert "/frcnn_tiny.pth" in (repo / "weights/.gitignore").read_text()  # DVC's, not git's
    summary = json.loads((repo / "reports/metrics.json").read_text())
    assert set(summary[TINY_MODEL]) == {"box_AP", "box_AP50", "box_AP75", "test-dev_box_AP"}
    overlay = (repo / "reports/plots/pr_minival_bbox.csv").read_text().splitlines()
    assert overlay[0] == "model,recall,precision" and overlay[1].startswith(f"{TINY_MODEL},")
    readme = (repo / "README.md").read_text()
    assert f"| {TINY_MODEL} |" in readme and "reports/figures/pr_frcnn_tiny_minival.png" in readme
    for fig in ("pr_frcnn_tiny_minival.png", "train_frcnn_tiny.png", "predictions_frcnn_tiny.png"):
        assert (repo / "reports/figures" / fig).stat().st_size > 1000, fig
    runs = mlflow_runs(repo)
    assert sorted(r[0] for r in runs) == [f"evaluate/{TINY_MODEL}/minival", f"evaluate/{TINY_MODEL}/test-dev",
                                          "pretrain/cpu_backbone", f"train/{TINY_MODEL}"]
    assert {r[1] for r in runs} == {"FINISHED"}
    # the stage runs of the one `dvc repro` are the children of one parent run repro/<its start>
    repro_parents = mlflow_runs(repo, parents="repro")
    assert len(repro_parents) == 1 and repro_parents[0][0].startswith("repro/") and repro_parents[0][1] == "FINISHED"
    assert all(parent_names(repo)[r[0]] == {repro_parents[0][0]} for r in runs)
    assert git_status(repo) == ""


def test_a_second_repro_runs_nothing(workspace):
    repo, _ = workspace
    assert ran(out([*DVC, "repro"], repo)) == []


def test_dvc_plots_show_overlays_the_runs_one_figure_each(workspace):
    repo, _ = workspace
    printed = run([*DVC, "plots", "show", "--json"], repo).stdout
    shown = json.loads(printed[printed.index("{"):])["data"]
    assert sorted(shown) == ["reports/plots/pr_minival_bbox.csv", "reports/plots/pr_minival_segm.csv",
                             "reports/plots/train_loss.csv"], printed[:500]
    assert shown["reports/plots/pr_minival_segm.csv"] == []  # declared, but no run here has masks
    for name in ("reports/plots/pr_minival_bbox.csv", "reports/plots/train_loss.csv"):
        assert len(shown[name]) == 1, name  # one figure per overlay, not one per run and file
        assert shown[name][0]["content"]["encoding"]["color"]["field"] == "model", name  # a colour per run
    values = shown["reports/plots/train_loss.csv"][0]["content"]["data"]["values"]
    assert {v["model"] for v in values} == {TINY_MODEL} and len(values) == 8  # 8 iterations


def test_an_identical_retrain_changes_no_output_and_no_metric(workspace):
    repo, _ = workspace
    shutil.rmtree(repo / "checkpoints" / TINY_MODEL)  # no epoch state to resume from: train from scratch
    log = out([*DVC, "repro", "-f", f"train@{TINY_MODEL}", f"evaluate@{TINY_MODEL}"], repo)
    assert "resumed from" not in log
    assert f"train@{TINY_MODEL}" in ran(log)
    assert git_status(repo) == ""  # dvc.lock: the weights and every result have the same hashes
    assert out([*DVC, "metrics", "diff"], repo).strip() == ""
    assert "up to date" in out([*DVC, "status"], repo)


def test_push_then_a_teammate_clones_pulls_and_runs_nothing(workspace, tmp_path):
    repo, _ = workspace
    remote = tmp_path / "remote"
    run([*DVC, "remote", "add", "-d", "shared", str(remote)], repo)
    commit(repo, "remote")
    run([*DVC, "push"], repo)
    assert any(remote.rglob("*"))

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / WEIGHTS).exists()
    pulled = out([*DVC, "pull"], clone)
    assert "fetched" in pulled or "added" in pulled
    assert md5(clone / WEIGHTS) == md5(repo / WEIGHTS)
    assert "Data and pipelines are up to date" in out([*DVC, "status"], clone)
    assert ran(out([*DVC, "repro"], clone)) == []  # nothing retrains, nothing re-evaluates
    for f in ("reports/results.md", "reports/metrics.json", "README.md", f"metrics/{TINY_MODEL}/minival.json"):
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    assert git_status(clone) == ""


def test_a_push_to_an_unreachable_remote_changes_nothing(workspace, tmp_path):
    repo, _ = workspace
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    before = (md5(repo / WEIGHTS), (repo / "dvc.lock").read_text())
    proc = run([*DVC, "push", "-r", "gone"], repo, ok=False)  # no such remote yet: an error, nothing else
    assert proc.returncode != 0
    run([*DVC, "remote", "add", "--local", "gone", str(blocker / "remote")], repo)
    proc = run([*DVC, "push", "-r", "gone"], repo, ok=False)
    assert proc.returncode != 0
    assert (md5(repo / WEIGHTS), (repo / "dvc.lock").read_text()) == before
    assert git_status(repo) == "" and "up to date" in out([*DVC, "status"], repo)
    run([*DVC, "remote", "remove", "--local", "gone"], repo)


def test_a_parameter_set_and_set_back_comes_from_the_run_cache(workspace):
    repo, _ = workspace
    params = (repo / "params.yaml").read_text()
    assert "lr: 0.01\n" in params
    (repo / "params.yaml").write_text(params.replace("lr: 0.01\n", "lr: 0.02\n"))
    assert f"train@{TINY_MODEL}" in ran(out([*DVC, "repro"], repo))
    (repo / "params.yaml").write_text(params)
    log = out([*DVC, "repro"], repo)
    assert f"Stage 'train@{TINY_MODEL}' is cached - skipping run" in log
    assert f"Stage 'evaluate@{TINY_MODEL}' is cached - skipping run" in log
    assert ran(log) == ["report"]  # it finds the MLflow runs of the restored weights
    assert git_status(repo) == ""


def status_stages(repo: Path) -> set[str]:
    return set(json.loads(out([*DVC, "status", "--json"], repo)))


def test_a_touched_file_invalidates_only_the_stages_of_its_family(workspace):
    repo, _ = workspace
    cases = {
        "models/faster_rcnn/faster_rcnn.py": {f"train@{TINY_MODEL}", f"evaluate@{TINY_MODEL}", "report"},
        "models/d2det/d2det_head.py": {"report"},  # another family: only the report (it draws every model)
        "pipeline/figures.py": {f"evaluate@{TINY_MODEL}", "report"},
        "pipeline/tracking.py": set(),
    }
    for path, expected in cases.items():
        with open(repo / path, "a") as f:
            f.write("# touched\n")
        assert status_stages(repo) == expected, path
        run(["git", "checkout", "--", path], repo)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("log_interval: 2", "log_interval: 7"))
    assert status_stages(repo) == set()  # console output only
    (repo / "params.yaml").write_text(params)


def test_missing_or_corrupt_weights_name_the_file_and_the_fix(workspace):
    repo, _ = workspace
    evaluate = [sys.executable, "-m", "pipeline.evaluate", "--model", TINY_MODEL]
    good = (repo / WEIGHTS).read_bytes()
    (repo / WEIGHTS).unlink()
    proc = run(evaluate, repo, ok=False)
    assert proc.returncode != 0 and "weights/frcnn_tiny.pth: no trained weights" in proc.stderr
    assert "dvc pull" in proc.stderr and "Traceback" not in proc.stderr
    (repo / WEIGHTS).write_bytes(good[: len(good) // 2])  # a truncated download
    proc = run(evaluate, repo, ok=False)
    assert proc.returncode != 0 and "weights/frcnn_tiny.pth: cannot read the weights" in proc.stderr
    assert "dvc pull" in proc.stderr and "dvc repro" in proc.stderr
    run([*DVC, "checkout", "--force", WEIGHTS], repo)
    assert (repo / WEIGHTS).read_bytes() == good and git_status(repo) == ""


def test_queued_and_temporary_experiments_record_in_the_workspace_store(workspace):
    repo, _ = workspace
    before = len(mlflow_runs(repo))
    lr = f"models.{TINY_MODEL}.overrides.schedule.lr"
    names = []
    for value in ("0.011", "0.012"):
        log = out([*DVC, "exp", "run", "--queue", "-S", f"{lr}={value}"], repo)
        names.append(log.split("Queued experiment '")[1].split("'")[0])
    run([*DVC, "queue", "start"], repo)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = out([*DVC, "queue", "status"], repo)
        if not any(s in status for s in ("Queued", "Running")):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    runs = mlflow_runs(repo)
    new = runs[before:]
    assert len(new) == 6 and {r[1] for r in new} == {"FINISHED"}  # train + 2 evaluate runs each
    assert sorted({r[2] for r in new}) == sorted(names)
    # each experiment's stage runs are the children of one parent run named after it
    assert sorted(r[0] for r in mlflow_runs(repo, parents="exp")) == sorted(f"exp/{n}" for n in names)
    assert all(parent_of_runs(repo)[n] == f"exp/{n}" for n in names)
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("**/mlflow.db"))  # no store left in a copy

    log = out([*DVC, "exp", "run", "--temp", "-S", f"{lr}=0.013"], repo)
    assert f"train@{TINY_MODEL}" in ran(log) and "prepare" not in ran(log)
    assert len(mlflow_runs(repo)) == before + 9

    # the outputs come back with `dvc exp apply`, the weights with them
    run([*DVC, "exp", "apply", names[1]], repo)
    lock = (repo / "dvc.lock").read_text()
    weights_md5 = lock.split(f"path: {WEIGHTS}")[1].split("md5: ")[1].split()[0]
    assert md5(repo / WEIGHTS) == weights_md5 and "lr: 0.012" in (repo / "params.yaml").read_text()
    assert "up to date" in out([*DVC, "status"], repo)
    header = out([*DVC, "exp", "show", "--csv"], repo).splitlines()[0].split(",")
    assert f"{TINY_MODEL}.box_AP" in header and lr in header
    assert not any("second" in h for h in header)
    run(["git", "checkout", "--", "."], repo)
    run([*DVC, "checkout", "--force"], repo)
