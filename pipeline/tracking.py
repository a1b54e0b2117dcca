"""MLflow tracking: one run per train stage and per (evaluate stage, split).

The store is SQLite at an absolute path in the workspace root, also for the runs of a queued
or temporary DVC experiment, which run in a copy (see :func:`pipeline.paths.mlflow_tracking_uri`);
artifacts go to ``mlartifacts/``. Runs carry the tags ``model``, ``stage``, ``split`` (evaluate
only), ``preset``, ``scale``, ``dataset``, ``git_commit``, ``weights_sha256`` (the final weights a
run wrote or evaluated; the report matches the workspace's weights by it) and, under
``dvc exp run``, ``dvc_experiment`` and ``dvc_baseline_rev``. Run ids are never written into DVC-tracked outputs, so a
re-run with identical results leaves DVC's view unchanged.

The stage runs of one DVC command share a parent run (:func:`parent_run`): ``exp/<name>`` under
``dvc exp run``, ``repro/<UTC start of the dvc process>`` under a plain ``dvc repro``; a stage
started by hand (``python -m pipeline.train``, the tests) has none.

Only rank 0 of a distributed job tracks; other ranks get a no-op tracker.

What MLflow (3.17) does here, and what is kept by hand:

* MLflow: a run's start and end (``mlflow.start_run`` with ``run_name``, ``tags``,
  ``parent_run_id``; ``mlflow.end_run``), the ``mlflow.source.*`` / ``mlflow.user`` tags, resuming
  a run by id (status back to RUNNING), the system-metrics monitor (``log_system_metrics``),
  params in batches (``mlflow.log_params``).
* By hand: the health check of a tracking server (the client retries for minutes instead of failing).
* By hand: the experiment with the workspace's artifact root (``mlflow.set_experiment`` takes no artifact location).
* By hand: KILLED for Ctrl-C / SIGTERM (MLflow's context manager ends any exception FAILED).
* By hand: the metric buffer, sent in chunks that are dropped only once stored, held while the
  store is away (MLflow's async logging drops a batch that fails, and one ``log_batch`` of
  everything could resend half of it: a step twice).
* By hand: a resumed run skips the metric steps it already holds (MLflow would log them again).
* By hand: metric values linked to a logged model and a dataset, from the buffer (``Metric``
  entities; ``mlflow.log_metrics(model_id=...)`` would bypass the buffer).
* By hand: the dataset input (``log_inputs`` with an entity: ``mlflow.log_input`` wants an
  ``mlflow.data`` dataset, whose local-file source class MLflow generates at run time).
* By hand: find-or-create of the parent runs by tag (MLflow has no get-or-create; a search,
  then a create, then the oldest of any duplicates wins).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.checkpoint import file_digest
from pipeline.paths import REPO_ROOT, mlflow_artifact_root, mlflow_tracking_uri, workspace_root

EXPERIMENT_NAME = "detlab"


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def client():
    """An MlflowClient on the project's store, creating the experiment on first use."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_tracking_uri()
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri)


class TrackingStoreError(RuntimeError):
    """The MLflow tracking store cannot be reached (a server that is down, a wrong URI)."""


_REACHABLE: set[str] = set()


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (``http(s)://``) rather than a local store."""
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For a tracking server, ask its ``/health`` once per process, with a short timeout, so a
    stage whose server is down fails at once with the URI in the message, instead of after the
    MLflow client's minutes of retries. Local stores need no check."""
    if not is_server(uri) or uri in _REACHABLE:
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise urllib.error.URLError(f"HTTP {r.status}")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingStoreError(
            f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it, or set "
            f"MLFLOW_TRACKING_URI to a server that runs (unset it for the local store {workspace_root() / 'mlflow.db'})"
        ) from e
    _REACHABLE.add(uri)


def experiment_id(c) -> str:
    exp = c.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is not None:
        return exp.experiment_id
    # A server decides where artifacts go (its --artifacts-destination, served to every client);
    # a local store puts them under the workspace's mlartifacts/.
    location = None if is_server(c.tracking_uri) else f"{mlflow_artifact_root()}/{EXPERIMENT_NAME}"
    try:
        return c.create_experiment(EXPERIMENT_NAME, artifact_location=location)
    except Exception:  # created concurrently by another stage
        exp = c.get_experiment_by_name(EXPERIMENT_NAME)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """A run in the MLflow store, used as a context manager.

    ``metric_links`` (``model_id``, ``dataset_name``, ``dataset_digest``) are attached to every
    metric value: an evaluate run's numbers then belong to the logged model they scored and the
    data they were measured on. A new run is the child of the parent run of the DVC command
    that started the stage, if any (:func:`parent_run`).

    The run is MLflow's active run of this thread while the block runs (``mlflow.start_run``),
    so ``mlflow.*`` calls inside the block (logging the model) go to it.

    Metrics logged with :meth:`log_metrics` are buffered and written in batches (every
    ``flush_every`` calls and on exit), so per-iteration losses cost little. On an
    exception the run ends FAILED (KILLED on Ctrl-C, or on an exception whose ``run_status``
    says so: :class:`pipeline.engine.Preempted`) and what was logged is kept.

    ``resume_run_id`` (a resumed training: the id its checkpoint recorded) continues that run
    instead of opening a new one: its status goes back to RUNNING, its params stay, and a
    metric step it already holds is not logged again, so the history of a killed and resumed
    training is one run with every step once.
    """

    def __init__(
        self,
        run_name: str,
        tags: dict[str, str],
        enabled: bool = True,
        flush_every: int = 50,
        resume_run_id: str | None = None,
        system_metrics: bool = False,
        metric_links: dict[str, str | None] | None = None,
    ) -> None:
        self.metric_links = {k: v for k, v in (metric_links or {}).items() if v}
        self.resume_run_id = resume_run_id
        self.system_metrics = system_metrics
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in tags.items()}
        self.enabled = enabled
        self.flush_every = flush_every
        self._buffer: list = []
        self._calls = 0
        self.run_id: str | None = None
        self.parent_run_id: str | None = None  # the parent this process gave a new run
        self.resumed = False
        self._client = None
        self._logged_through: dict[str, int] = {}  # metric key -> last step already in the store
        self._warned = False

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        import mlflow

        self._client = client()
        mlflow.set_tracking_uri(self._client.tracking_uri)  # the fluent calls go to the same store
        exp = experiment_id(self._client)
        if self.resume_run_id and self._resumable(self.resume_run_id, exp):
            run = self._start_run(run_id=self.resume_run_id)  # status back to RUNNING, tags and parent kept
            self.resumed = True
        else:
            tags = dict(self.tags)
            tags.setdefault("git_commit", git_commit())
            for env, tag in (("DVC_EXP_NAME", "dvc_experiment"), ("DVC_EXP_BASELINE_REV", "dvc_baseline_rev")):
                if os.environ.get(env):  # set by `dvc exp run` (also --queue / --temp, in their copy)
                    tags.setdefault(tag, os.environ[env])
            self.parent_run_id = parent_run(self._client, exp)
            run = self._start_run(experiment_id=exp, run_name=self.run_name, tags=tags,
                                  parent_run_id=self.parent_run_id)
        self.run_id = run.info.run_id
        return self

    def _start_run(self, **kwargs):
        """``mlflow.start_run``, with MLflow's system-metrics monitor (CPU, memory, disk, network,
        GPU where present) when ``system_metrics``, sampling every ``DETLAB_SYSTEM_METRICS_INTERVAL``
        seconds (else MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, 10). A monitor that
        cannot start costs MLflow's error message, never the run."""
        import mlflow

        interval = os.environ.get("DETLAB_SYSTEM_METRICS_INTERVAL") if self.system_metrics else None
        # the monitor reads MLflow's variable when it is made: set for that moment only
        with _environ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", interval):
            return mlflow.start_run(log_system_metrics=self.system_metrics, **kwargs)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """Record the data the run read (``mlflow.log_input`` for this run): ``digest`` identifies
        the contents (the DVC hash of ``data/prepared`` where dvc.lock has it), ``context`` the
        split (``train``, ``minival``, ...)."""
        if not self.enabled:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
        self._client.log_inputs(self.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])

    def _resumable(self, run_id: str, exp: str) -> bool:
        """Whether run ``run_id`` of this store and experiment can be continued (a resumed
        training), remembering the last step of each metric it holds so that no step is logged
        twice. False when the store has no such run (another store, deleted): a new run is
        created instead."""
        try:
            run = self._client.get_run(run_id)
        except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
            return False
        if run.info.experiment_id != exp or run.info.lifecycle_stage != "active":
            return False
        for key in run.data.metrics:
            history = self._client.get_metric_history(run_id, key)
            self._logged_through[key] = max((m.step for m in history), default=-1)
        return True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        if exc_type is None:
            status = "FINISHED"
        elif getattr(exc, "run_status", None):  # an exception that says how its run ends (a preemption)
            status = str(exc.run_status)
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"  # MLflow's own context manager would say FAILED
        else:
            status = "FAILED"
        try:
            self.flush(final=True)
        finally:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)  # also stops the system-metrics monitor
            else:  # something in the block ended or replaced our active run
                self._client.set_terminated(self.run_id, status=status)
        if self.parent_run_id is not None:
            extend_parent(self._client, self.parent_run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or self.resumed:  # a continued run has its params already
            return
        import mlflow

        mlflow.log_params({k[:250]: v for k, v in flatten(params).items()}, run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, int(step), **self.metric_links) for k, v in metrics.items()
                            if int(step) > self._logged_through.get(k, -1))  # not twice after a resume
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Send the buffered metric values. When the store cannot take them (a server that went
        away), keep them for the next flush and say so once, so that training goes on and loses
        nothing; only the last flush (``final``, on exit) raises. A chunk leaves the buffer only
        once stored, so a store that fails half-way gets no value twice."""
        if not self.enabled:
            return
        try:
            while self._buffer:
                self._client.log_batch(self.run_id, metrics=self._buffer[:900])
                del self._buffer[:900]
        except Exception as e:  # noqa: BLE001 - any transport or server error
            if final:
                raise
            if not self._warned:
                print(f"[tracking] cannot reach the MLflow store {self._client.tracking_uri} ({type(e).__name__}); "
                      f"keeping {len(self._buffer)} metric values to send when it is back", flush=True)
                self._warned = True
            return
        if self._warned:
            print("[tracking] the MLflow store is back; the held metric values are sent", flush=True)
            self._warned = False

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            self._client.set_tag(self.run_id, key, value)


@contextmanager
def _environ(name: str, value: str | None):
    """Within the block, environment variable ``name`` is ``value`` (unchanged for None)."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ------------------------------------------------------------------------------- parent runs
#: The tag that names the ``dvc repro`` process a parent run groups (host, pid, start time).
INVOCATION_TAG = "detlab.dvc_invocation"

#: Global options of the dvc CLI that take a value (``dvc --cd DIR repro``).
_DVC_OPTIONS_WITH_VALUE = ("--cd", "--cprofile-dump", "--viztracer-depth")


def dvc_subcommand(cmdline: list[str]) -> str | None:
    """The dvc command (``repro``, ``exp``, ...) of a process's command line when it is the dvc
    CLI -- the ``dvc`` executable, or a Python interpreter running the ``dvc`` script, ``-m dvc``
    or ``dvc/__main__.py`` -- else None. ``""`` for dvc without a command."""
    args = list(cmdline)
    if not args:
        return None

    def is_dvc(arg: str) -> bool:
        name = os.path.basename(arg).lower()
        return name in ("dvc", "dvc.exe") or arg.replace("\\", "/").endswith("dvc/__main__.py")

    if is_dvc(args[0]):
        rest = args[1:]
    elif "python" in os.path.basename(args[0]).lower():
        i = 1
        while i < len(args) and args[i].startswith("-") and args[i] not in ("-m", "-c"):
            i += 2 if args[i] in ("-X", "-W") else 1  # interpreter options, some with a value
        if i + 1 < len(args) and args[i] == "-m" and args[i + 1] == "dvc":
            rest = args[i + 2:]
        elif i < len(args) and args[i] != "-c" and is_dvc(args[i]):
            rest = args[i + 1:]
        else:
            return None
    else:
        return None
    j = 0
    while j < len(rest) and rest[j].startswith("-"):
        j += 2 if rest[j] in _DVC_OPTIONS_WITH_VALUE else 1
    return rest[j] if j < len(rest) else ""


class DvcInvocation(NamedTuple):
    """A running ``dvc repro`` process: its pid and start time (seconds since the epoch)."""

    pid: int
    create_time: float

    @property
    def key(self) -> str:
        """What identifies the invocation: host, pid and start time (a pid alone is reused)."""
        import socket

        return f"{socket.gethostname()}:{self.pid}:{self.create_time:.2f}"

    @property
    def run_name(self) -> str:
        return "repro/" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.create_time))


def dvc_repro_invocation() -> DvcInvocation | None:
    """The ``dvc repro`` that runs this process, found by walking up the process tree (DVC runs
    a stage's command through a shell, as a child of the dvc process, and gives it no id of the
    invocation): the nearest ancestor that is the dvc CLI, when its command is ``repro``. None
    without such an ancestor (a stage run by hand, the tests) or when the nearest dvc ancestor
    runs another command."""
    try:
        import psutil

        ancestors = psutil.Process().parents()
    except Exception:  # noqa: BLE001 - no psutil, no /proc: no parent run
        return None
    for proc in ancestors:
        try:
            command = dvc_subcommand(proc.cmdline())
            if command is None:
                continue
            return DvcInvocation(proc.pid, proc.create_time()) if command == "repro" else None
        except Exception:  # noqa: BLE001 - psutil.AccessDenied, NoSuchProcess, ...
            continue
    return None


def find_or_create_parent(c, experiment: str, tag: str, value: str, run_name: str,
                          tags: dict[str, str] | None = None) -> str:
    """The id of the run of ``experiment`` tagged ``tag = value``, created FINISHED when there is
    none. MLflow has no get-or-create: two stage processes that both find none both create one;
    each then takes the oldest run with the tag (run id breaks ties) and deletes its own if it
    lost, so they converge on one parent."""
    flt = f"tags.`{tag}` = '{value}'"
    found = c.search_runs([experiment], filter_string=flt, max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = c.create_run(experiment, run_name=run_name,
                       tags={tag: value, "git_commit": git_commit(), **(tags or {})})
    mine = run.info.run_id
    c.set_terminated(mine, status="FINISHED")
    runs = c.search_runs([experiment], filter_string=flt, max_results=50)
    winner = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else mine
    if winner != mine:
        c.delete_run(mine)
    return winner


def experiment_parent_run(c, experiment: str, dvc_experiment: str) -> str:
    """The id of the run that groups the stage runs of DVC experiment ``dvc_experiment``
    (``exp/<name>``, tag ``dvc_experiment_parent``), created FINISHED on first use."""
    return find_or_create_parent(c, experiment, "dvc_experiment_parent", dvc_experiment, f"exp/{dvc_experiment}",
                                 {"dvc_experiment": dvc_experiment})


def repro_parent_run(c, experiment: str, invocation: DvcInvocation) -> str:
    """The id of the run that groups the stage runs of one ``dvc repro`` (``repro/<UTC start of
    the dvc process>``, tag :data:`INVOCATION_TAG`), created FINISHED on first use."""
    return find_or_create_parent(c, experiment, INVOCATION_TAG, invocation.key, invocation.run_name,
                                 {"dvc_command": "repro"})


def parent_run(c, experiment: str) -> str | None:
    """The parent of a new stage run: under ``dvc exp run`` (``DVC_EXP_NAME`` set) the
    experiment's (:func:`experiment_parent_run`), else under ``dvc repro`` the invocation's
    (:func:`repro_parent_run`), else None.

    A parent run is created FINISHED, and each child that ends moves its end time to then
    (:func:`extend_parent`). It is never left RUNNING: nothing runs when a dvc command ends, so
    a RUNNING parent would stay RUNNING forever after the last stage, or after a killed dvc. Its
    status is not its children's: they carry their own (the UI shows them under it), and a
    roll-up would be wrong for a training resumed by a later command, which stays the child of
    its first parent."""
    if os.environ.get("DVC_EXP_NAME"):
        return experiment_parent_run(c, experiment, os.environ["DVC_EXP_NAME"])
    invocation = dvc_repro_invocation()
    return repro_parent_run(c, experiment, invocation) if invocation is not None else None


def extend_parent(c, parent_run_id: str) -> None:
    """Move the end time of a (FINISHED) parent run to now, as a child run ends, so that it spans
    its children. A store that refuses costs a message, never the stage."""
    try:
        c.set_terminated(parent_run_id, status="FINISHED")
    except Exception as e:  # noqa: BLE001 - cosmetic
        print(f"[tracking] could not update the parent run {parent_run_id}: {type(e).__name__}: {e}", flush=True)


def logged_model_id(model: str, weights_sha256: str) -> str | None:
    """The id of the logged model of the training that wrote these weights (its train run's tag
    ``logged_model_id``), or None when the store has no such run."""
    run = newest_finished_run(client(), model, "train", weights_sha256=weights_sha256)
    return run.data.tags.get("logged_model_id") if run is not None else None


def newest_finished_run(c, model: str, stage: str, split: str | None = None, weights_sha256: str | None = None):
    """The newest FINISHED run with the given tags (``weights_sha256``: only runs of those exact
    weights), or None."""
    flt = f"tags.model = '{model}' and tags.stage = '{stage}' and attributes.status = 'FINISHED'"
    if split is not None:
        flt += f" and tags.split = '{split}'"
    if weights_sha256 is not None:
        flt += f" and tags.weights_sha256 = '{weights_sha256}'"
    runs = c.search_runs(
        [experiment_id(c)], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def prepared_data_digest(manifest_file: Path) -> str:
    """The digest that names the prepared data of a run: DVC's hash of ``data/prepared`` from the
    workspace's dvc.lock when ``manifest_file`` is the one under it and the lock has it, else the
    manifest file's own (its sha256, first 16 hex digits)."""
    import yaml

    manifest_file = Path(manifest_file).resolve()
    lock = REPO_ROOT / "dvc.lock"
    if manifest_file.parent == (REPO_ROOT / "data" / "prepared").resolve() and lock.exists():
        try:
            stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {})
            for out in stage.get("outs", []):
                if out.get("path") == "data/prepared" and out.get("md5"):
                    return str(out["md5"])
        except yaml.YAMLError:
            pass
    return file_digest(manifest_file)
