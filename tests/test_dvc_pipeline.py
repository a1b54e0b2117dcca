"""The whole pipeline through DVC in a temporary copy of the repository (tiny settings)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_MODEL, tiny_params, write_params

pytestmark = pytest.mark.slow


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (REPO / f).is_file()]


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("repo") / "detlab"
    for f in repo_files():
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    write_params(tiny_params(), dst / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def dvc_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own store at <copy>/mlflow.db
    env.pop("DETLAB_MLFLOW_ARTIFACTS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "t"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "t@t"
    return env


def test_dvc_repro_end_to_end_then_nothing_then_only_dependents(repo_copy):
    env = dvc_env(repo_copy)
    dvc = [sys.executable, "-m", "dvc"]
    out = run([*dvc, "repro"], repo_copy, env)
    for stage in ("prepare", f"train@{TINY_MODEL}", f"evaluate@{TINY_MODEL}", "report"):
        assert f"Running stage '{stage}'" in out
    assert (repo_copy / "data/prepared/manifest.json").exists()
    assert (repo_copy / f"checkpoints/{TINY_MODEL}/model_final.pth").exists()
    sub = repo_copy / f"results/{TINY_MODEL}/detections_test-dev2017_frcnn-tiny_results.zip"
    assert sub.exists()
    minival = json.loads((repo_copy / f"metrics/{TINY_MODEL}/minival.json").read_text())
    assert minival["scored"] and len(minival["bbox"]) == 12 and "synthetic minival" in minival["dataset"]
    readme = (repo_copy / "README.md").read_text()
    assert f"| {TINY_MODEL} |" in readme and "No results yet" not in readme
    assert (repo_copy / "reports/results.md").exists()
    for fig in ("pr_frcnn_tiny_minival.png", "train_frcnn_tiny.png", "predictions_frcnn_tiny.png"):
        assert (repo_copy / "reports/figures" / fig).stat().st_size > 1000, fig
    assert "reports/figures/pr_frcnn_tiny_minival.png" in readme
    assert (repo_copy / f"metrics/{TINY_MODEL}/pr_minival_bbox.csv").exists()
    # The store is SQLite in the copy's root and holds a finished train run and evaluate runs.
    con = sqlite3.connect(repo_copy / "mlflow.db")
    statuses = con.execute("select status from runs").fetchall()
    con.close()
    assert len(statuses) == 3 and {s for (s,) in statuses} == {"FINISHED"}

    out = run([*dvc, "repro"], repo_copy, env)
    assert "Running stage" not in out  # nothing changed, nothing runs

    out = run([*dvc, "exp", "run", "-S", f"+models.{TINY_MODEL}.overrides.schedule.momentum=0.8"], repo_copy, env)
    assert "Running stage 'prepare'" not in out
    assert f"Running stage 'train@{TINY_MODEL}'" in out and "Running stage 'report'" in out
