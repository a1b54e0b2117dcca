"""MLflow tracking: one run per train stage and per (evaluate stage, split).

The store is SQLite at an absolute path in the workspace root, also for the runs of a queued
or temporary DVC experiment, which run in a copy (see :func:`pipeline.paths.mlflow_tracking_uri`);
artifacts go to ``mlartifacts/``. Runs carry the tags ``model``, ``stage``, ``split`` (evaluate
only), ``preset``, ``scale``, ``dataset``, ``git_commit``, ``weights_sha256`` (the final weights a
run wrote or evaluated; the report matches the workspace's weights by it) and, under
``dvc exp run``, ``dvc_experiment`` and ``dvc_baseline_rev``. Run ids are never written into DVC-tracked outputs, so a
re-run with identical results leaves DVC's view unchanged.

Only rank 0 of a distributed job tracks; other ranks get a no-op tracker.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

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
    data they were measured on. Under ``dvc exp run`` (``DVC_EXP_NAME`` set) the run is the child
    of the experiment's parent run (:func:`experiment_parent_run`).

    Metrics logged with :meth:`log_metrics` are buffered and written in batches (every
    ``flush_every`` calls and on exit), so per-iteration losses cost little. On an
    exception the run ends FAILED (KILLED on Ctrl-C or SIGTERM) and what was logged is kept.

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
        self._monitor = None
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in tags.items()}
        self.enabled = enabled
        self.flush_every = flush_every
        self._buffer: list = []
        self._calls = 0
        self.run_id: str | None = None
        self.resumed = False
        self._client = None
        self._logged_through: dict[str, int] = {}  # metric key -> last step already in the store
        self._warned = False

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        self._client = client()
        exp = experiment_id(self._client)
        tags = dict(self.tags)
        tags.setdefault("git_commit", git_commit())
        for env, tag in (("DVC_EXP_NAME", "dvc_experiment"), ("DVC_EXP_BASELINE_REV", "dvc_baseline_rev")):
            if os.environ.get(env):  # set by `dvc exp run` (also --queue / --temp, in their copy)
                tags.setdefault(tag, os.environ[env])
        tags["mlflow.runName"] = self.run_name
        if os.environ.get("DVC_EXP_NAME"):  # the stage runs of one DVC experiment under one parent run
            tags.setdefault("mlflow.parentRunId", experiment_parent_run(self._client, exp, os.environ["DVC_EXP_NAME"]))
        if not (self.resume_run_id and self._continue(self.resume_run_id, exp)):
            run = self._client.create_run(exp, tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
        if self.system_metrics:
            self._start_system_metrics()
        return self

    def _start_system_metrics(self) -> None:
        """MLflow's system-metrics monitor (CPU, memory, disk, network, GPU where present) on this
        run, sampling every ``DETLAB_SYSTEM_METRICS_INTERVAL`` seconds (10). A monitor that cannot
        start costs a warning, never the training."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("DETLAB_SYSTEM_METRICS_INTERVAL", "10"))
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval,
                                                 resume_logging=self.resumed, tracking_uri=mlflow_tracking_uri())
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 - optional instrumentation
            print(f"[tracking] system metrics off: {type(e).__name__}: {e}", flush=True)
            self._monitor = None

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

    def _continue(self, run_id: str, exp: str) -> bool:
        """Reopen run ``run_id`` of this store and experiment (a resumed training), remembering
        the last step of each metric it holds so that no step is logged twice. False when the
        store has no such run (another store, deleted): a new run is created instead."""
        try:
            run = self._client.get_run(run_id)
        except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
            return False
        if run.info.experiment_id != exp or run.info.lifecycle_stage != "active":
            return False
        for key in run.data.metrics:
            history = self._client.get_metric_history(run_id, key)
            self._logged_through[key] = max((m.step for m in history), default=-1)
        self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.resumed = True
        return True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001 - optional instrumentation
                pass
        try:
            self.flush(final=True)
        finally:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, KeyboardInterrupt):
                status = "KILLED"
            else:
                status = "FAILED"
            self._client.set_terminated(self.run_id, status=status)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or self.resumed:  # a continued run has its params already
            return
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k[:250], v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

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
        nothing; only the last flush (``final``, on exit) raises."""
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


def experiment_parent_run(c, experiment: str, dvc_experiment: str) -> str:
    """The id of the run that groups the stage runs of DVC experiment ``dvc_experiment``
    (``exp/<name>``, tag ``dvc_experiment_parent``), created FINISHED on first use."""
    flt = f"tags.dvc_experiment_parent = '{dvc_experiment}'"
    found = c.search_runs([experiment], filter_string=flt, max_results=1)
    if found:
        return found[0].info.run_id
    run = c.create_run(experiment, run_name=f"exp/{dvc_experiment}",
                       tags={"dvc_experiment_parent": dvc_experiment, "dvc_experiment": dvc_experiment,
                             "git_commit": git_commit()})
    c.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


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
