"""A team's tracking server as the store: a real `mlflow server` on a loopback port (SQLite
backend, artifacts in a temporary folder), a tiny train -> evaluate -> report against it, and
the records checked through the server's REST API. And a server that is down fails a stage at
once, naming the URI."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.evaluate import evaluate_model
from pipeline.report import BEGIN, END, write_report
from pipeline.tracking import TrackingStoreError
from pipeline.train import run_training
from tests.conftest import TINY_MODEL, tiny_params

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, endpoint: str, **query) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on ``port`` with its SQLite store and artifacts in ``folder``, once its
    /health answers (at most 90 s)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(folder / "server.log", "a")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    log.close()
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.time() > deadline:
            stop_server(proc)
            raise RuntimeError(f"mlflow server did not answer in 90 s: {(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    """A running `mlflow server`: (its URL, its artifact folder)."""
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "artifacts"
    finally:
        stop_server(proc)


def test_train_evaluate_report_against_a_tracking_server(mlflow_server, tiny_prepared, tmp_path, monkeypatch):
    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv("DETLAB_MLFLOW_ARTIFACTS", raising=False)  # the server decides where artifacts go
    monkeypatch.setenv("DETLAB_SYSTEM_METRICS_INTERVAL", "0.5")  # the tiny training lasts seconds
    params = tiny_params()
    roots = dict(weights_root=tmp_path / "weights", metrics_root=tmp_path / "metrics")
    run_training(TINY_MODEL, params, manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt", **roots)
    evaluate_model(TINY_MODEL, params, manifest_file=tiny_prepared, results_root=tmp_path / "results", **roots)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\n{END}\n")
    md = write_report(params, readme=readme, reports_dir=tmp_path / "reports", manifest_file=tiny_prepared, **roots)
    assert f"| {TINY_MODEL} |" in md and f"| {TINY_MODEL} |" in readme.read_text()  # read from the server

    # what the server holds, through its REST API
    exp = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="detlab")["experiment"]
    assert exp["artifact_location"].startswith("mlflow-artifacts:")  # served by the server, not a client path
    runs = post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert sorted(by_name) == [f"evaluate/{TINY_MODEL}/minival", f"evaluate/{TINY_MODEL}/test-dev",
                               f"train/{TINY_MODEL}"]
    assert {r["info"]["status"] for r in runs} == {"FINISHED"}
    tags = {t["key"]: t["value"] for t in by_name[f"evaluate/{TINY_MODEL}/minival"]["data"]["tags"]}
    train_tags = {t["key"]: t["value"] for t in by_name[f"train/{TINY_MODEL}"]["data"]["tags"]}
    assert tags["stage"] == "evaluate" and tags["weights_sha256"] == train_tags["weights_sha256"] != "unknown"
    train_id = by_name[f"train/{TINY_MODEL}"]["info"]["run_id"]
    history = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=train_id, metric_key="train/loss")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, 9))  # 2 epochs x 4 iterations, each once
    metrics = {m["key"]: m["value"] for m in by_name[f"evaluate/{TINY_MODEL}/minival"]["data"]["metrics"]}
    assert 0 <= metrics["minival/bbox_AP"] <= 1 and "minival/bbox_AP50" in metrics and "bbox_AP" not in metrics
    eval_id = by_name[f"evaluate/{TINY_MODEL}/minival"]["info"]["run_id"]
    files = [f["path"] for f in get(url, "/api/2.0/mlflow-artifacts/artifacts",
                                    path=f"{exp['experiment_id']}/{eval_id}/artifacts").get("files", [])]
    assert "minival.json" in files, files
    assert list(artifacts.rglob("minival.json"))  # stored in the server's artifact folder

    # lineage: each run names the data it read, with the prepared data's digest and the split
    from pipeline.checkpoint import file_digest

    digest = file_digest(tiny_prepared)  # no dvc.lock here: the manifest's
    for name, context in ((f"train/{TINY_MODEL}", "train"), (f"evaluate/{TINY_MODEL}/minival", "minival")):
        run = get(url, "/api/2.0/mlflow/runs/get", run_id=by_name[name]["info"]["run_id"])["run"]
        inputs = run["inputs"]["dataset_inputs"]
        assert [i["dataset"]["digest"] for i in inputs] == [digest], name
        assert {"key": "mlflow.data.context", "value": context} in inputs[0]["tags"], name
    # the evaluate run's metrics belong to the logged model it scored
    model_id = train_tags["logged_model_id"]
    assert tags["logged_model_id"] == model_id
    logged = get(url, f"/api/2.0/mlflow/logged-models/{model_id}")["model"]
    linked = {m["key"] for m in logged["data"].get("metrics", []) if m.get("run_id") == eval_id}
    assert {"minival/bbox_AP", "minival/bbox_AP50"} <= linked, logged["data"].get("metrics", [])[:3]
    # system metrics on the training run
    train_metrics = {m["key"] for m in get(url, "/api/2.0/mlflow/runs/get", run_id=train_id)["run"]["data"]["metrics"]}
    assert any(k.startswith("system/") for k in train_metrics), sorted(train_metrics)

    # the trained model: logged to the train run, registered as version 1 of its name, and a
    # `models:/` URI is enough to predict
    registered = get(url, "/api/2.0/mlflow/registered-models/get", name=TINY_MODEL)["registered_model"]
    assert [v["version"] for v in registered["latest_versions"]] == ["1"]
    assert registered["latest_versions"][0]["run_id"] == train_id
    assert train_tags["registered_model"] == f"models:/{TINY_MODEL}/1"
    from pipeline.data import load_manifest
    from pipeline.predict import run_predict

    image_dir = load_manifest(tiny_prepared).split("minival").img_dir
    image = sorted(Path(image_dir).glob("*.png")) + sorted(Path(image_dir).glob("*.jpg"))
    records = run_predict(f"models:/{TINY_MODEL}/1", image[0], tmp_path / "pred", score_thr=0.0)
    assert records and {"bbox", "score", "category_id"} <= set(records[0])
    assert (tmp_path / "pred" / "predictions.json").exists()


def test_an_unreachable_server_fails_the_stage_at_once_naming_it(tiny_prepared, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.time()
    with pytest.raises(TrackingStoreError, match=f"MLflow tracking server {url} is unreachable"):
        run_training(TINY_MODEL, tiny_params(), manifest_file=tiny_prepared, checkpoint_root=tmp_path / "ckpt",
                     weights_root=tmp_path / "w", metrics_root=tmp_path / "m")
    assert time.time() - start < 60
    assert not (tmp_path / "w" / f"{TINY_MODEL}.pth").exists()


def test_a_server_that_goes_away_mid_training_loses_nothing(tiny_prepared, tmp_path):
    """The server stops after the first epochs and comes back: the training goes on, holds the
    metric values it could not send, and the run ends with every step once."""
    import json as json_mod

    from tests.conftest import REPO
    from tests.test_train_kill import wait_for_epoch

    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(folder, port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "OMP_NUM_THREADS": "1"}
    env.pop("DETLAB_MLFLOW_ARTIFACTS", None)
    out = tmp_path / "train"
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "train_worker.py"), "--manifest", str(tiny_prepared),
                               "--out", str(out), "--epochs", "20"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        latest = out / "ckpt" / TINY_MODEL / "latest.json"
        wait_for_epoch(worker, latest, 2)
        assert worker.poll() is None, "training ended before the server could be stopped"
        stop_server(server)
        time.sleep(4)  # at least one epoch's flush meets no server
        server = start_server(folder, port)
        log, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, log[-4000:]
        assert "keeping" in log and "is back" in log, log[-3000:]
        run_id = json_mod.loads(latest.read_text())["mlflow_run_id"]
        history = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="train/loss")["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, 81))  # 20 epochs x 4 iterations, each once
        assert get(url, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]["info"]["status"] == "FINISHED"
    finally:
        if worker.poll() is None:
            worker.kill()
        stop_server(server)
