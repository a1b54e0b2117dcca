"""The MLflow records of a DVC command: the stage runs of one `dvc repro` (a real one, in a
temporary git + DVC repository) share one parent run named ``repro/<start>``, a second
`dvc repro` makes a second parent, `dvc exp run`'s parent ``exp/<name>`` takes precedence, and a
stage run by hand has none. And the evaluate runs' metric keys, ``<split>/<task>_<stat>``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.tracking import INVOCATION_TAG, DvcInvocation, Tracker, client, dvc_subcommand, experiment_id
from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("cmdline,expected", [
    ([str(BIN / "python"), str(BIN / "dvc"), "repro"], "repro"),            # the venv's console script
    (["/usr/bin/python3.11", "-m", "dvc", "repro", "-f"], "repro"),          # python -m dvc
    (["python", "-u", "/x/site-packages/dvc/__main__.py", "-q", "repro"], "repro"),
    (["dvc", "--cd", "sub", "repro", "train@m"], "repro"),                   # a global option with a value
    (["/opt/dvc/dvc", "exp", "run"], "exp"),
    (["python", "-m", "dvc"], ""),
    (["python", "-m", "pytest", "repro"], None),
    (["/bin/bash", "--noprofile", "--norc", "-c", "dvc repro"], None),     # the shell dvc starts a stage in
    (["python", "-c", "import dvc", "repro"], None),
    (["/usr/bin/dvcx", "repro"], None),
    ([], None),
])
def test_the_dvc_cli_is_recognised_by_its_command_line(cmdline, expected):
    assert dvc_subcommand(cmdline) == expected


def parent_of(c, run_id: str):
    parent = c.get_run(run_id).data.tags.get("mlflow.parentRunId")
    return c.get_run(parent) if parent else None


def test_a_stage_run_by_hand_has_no_parent(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.dvc_repro_invocation() is None  # pytest has no dvc ancestor
    with Tracker("stage/by_hand", {"model": "parent_check", "stage": "by_hand"}) as t:
        pass
    assert parent_of(client(), t.run_id) is None
    assert client().get_run(t.run_id).data.tags["mlflow.source.name"]  # MLflow's own tags, from start_run


def test_a_dvc_experiment_parent_takes_precedence_over_the_invocation(monkeypatch):
    import psutil

    me = psutil.Process()
    invocation = DvcInvocation(me.pid, me.create_time())
    monkeypatch.setattr(tracking, "dvc_repro_invocation", lambda: invocation)
    monkeypatch.setenv("DVC_EXP_NAME", "precedence-check")
    with Tracker("stage/exp", {"model": "parent_check", "stage": "exp"}) as t:
        pass
    c = client()
    assert parent_of(c, t.run_id).info.run_name == "exp/precedence-check"
    monkeypatch.delenv("DVC_EXP_NAME")
    with Tracker("stage/repro", {"model": "parent_check", "stage": "repro"}) as t1:
        pass
    with Tracker("stage/repro", {"model": "parent_check", "stage": "repro"}) as t2:
        pass
    p1, p2 = parent_of(c, t1.run_id), parent_of(c, t2.run_id)
    assert p1.info.run_id == p2.info.run_id and p1.info.run_name == invocation.run_name
    assert p1.data.tags[INVOCATION_TAG] == invocation.key and p1.info.status == "FINISHED"
    assert p2.info.end_time >= c.get_run(t2.run_id).info.end_time  # each child's end extends it


def test_duplicate_parents_converge_on_the_oldest():
    """Two stage processes that both found no parent both create one; each then keeps the
    oldest, and the other's is deleted."""
    c = client()
    exp = experiment_id(c)
    other = c.create_run(exp, run_name="repro/dup", tags={INVOCATION_TAG: "dup-check"}).info.run_id

    class Racing:  # its first search misses the other process's parent, created just after
        def __init__(self):
            self.searches = 0

        def __getattr__(self, name):
            return getattr(c, name)

        def search_runs(self, *args, **kwargs):
            self.searches += 1
            return [] if self.searches == 1 else c.search_runs(*args, **kwargs)

    assert tracking.find_or_create_parent(Racing(), exp, INVOCATION_TAG, "dup-check", "repro/dup") == other
    found = c.search_runs([exp], f"tags.`{INVOCATION_TAG}` = 'dup-check'")
    assert [r.info.run_id for r in found] == [other]  # the newer duplicate is gone


STAGE = textwrap.dedent('''\
    import sys
    from pipeline.tracking import Tracker
    name = sys.argv[1]
    with Tracker(f"stage/{name}", {"model": "repro_check", "stage": name}) as t:
        t.log_metrics({"x": 1.0})
    open(f"{name}.txt", "w").write(t.run_id)
    ''')


def test_each_dvc_repro_gives_its_stage_runs_one_parent(tmp_path):
    """Real `dvc repro` processes (the console script, then `python -m dvc repro -f`) run two
    stages that each open a Tracker run in a store of their own."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(textwrap.dedent(f'''\
        stages:
          first:
            cmd: '"{sys.executable}" stage.py first'
            outs:
              - first.txt:
                  cache: false
          second:
            cmd: '"{sys.executable}" stage.py second'
            deps:
              - first.txt
            outs:
              - second.txt:
                  cache: false
        '''))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "DETLAB_MLFLOW_ARTIFACTS": (tmp_path / "art").as_uri(),
           "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_EXP_NAME", None)

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    run("git", "init", "-q")
    run(str(BIN / "dvc"), "init", "-q")
    run(str(BIN / "dvc"), "repro")
    invocation_1 = {(repo / f"{s}.txt").read_text() for s in ("first", "second")}
    run(sys.executable, "-m", "dvc", "repro", "-f")
    invocation_2 = {(repo / f"{s}.txt").read_text() for s in ("first", "second")}

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=store)
    parents = []
    for run_ids in (invocation_1, invocation_2):
        assert len(run_ids) == 2
        of = {parent_of(c, r).info.run_id for r in run_ids}
        assert len(of) == 1, "the stage runs of one dvc repro have one parent"
        parent = c.get_run(of.pop())
        assert parent.info.run_name.startswith("repro/") and parent.info.status == "FINISHED"
        assert INVOCATION_TAG in parent.data.tags
        assert parent.info.end_time >= max(c.get_run(r).info.end_time for r in run_ids)
        parents.append(parent)
    assert parents[0].info.run_id != parents[1].info.run_id
    assert parents[0].data.tags[INVOCATION_TAG] != parents[1].data.tags[INVOCATION_TAG]
    exp = c.get_experiment_by_name("detlab").experiment_id
    assert len(c.search_runs([exp], f"tags.`{INVOCATION_TAG}` != ''")) == 2  # no stray parent


def test_evaluate_runs_log_split_prefixed_keys():
    """One name per number, the same for every model: ``<split>/<task>_<stat>``; a variant's run
    (split tag ``minival/corner_snapping_off``) uses the data split's keys."""
    from pipeline.evaluate import log_evaluate_run
    from pipeline.evaluation import STAT_NAMES

    stats = {k: 0.5 for k in STAT_NAMES}
    metrics = {"bbox": stats, "segm": stats, "num_detections": 7}
    c = client()
    for split, prefix in (("test-dev", "test-dev"), ("minival/corner_snapping_off", "minival")):
        tags = {"model": "keys_check", "stage": "evaluate", "split": split}
        log_evaluate_run(f"evaluate/keys_check/{split}", tags, {}, {}, {"iteration": 3}, metrics, 0.25, [])
        run = tracking.newest_finished_run(c, "keys_check", "evaluate", split)
        expected = {f"{prefix}/{t}_{k}" for t in ("bbox", "segm") for k in STAT_NAMES}
        expected |= {f"{prefix}/num_detections", f"{prefix}/seconds_per_image"}
        assert set(run.data.metrics) == expected
        assert run.data.metrics[f"{prefix}/seconds_per_image"] == 0.25
