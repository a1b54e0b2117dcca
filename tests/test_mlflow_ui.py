"""`mlflow ui` for real: start it on a loopback port against the project's kind of store
(SQLite), ask its REST API for the runs the pipeline logged, stop it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.paths import mlflow_tracking_uri
from pipeline.tracking import Tracker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_mlflow_ui_lists_the_logged_runs(tmp_path):
    tags = {"model": "ui_check", "stage": "evaluate", "split": "minival", "dataset": "synthetic minival (8 images)"}
    with Tracker("evaluate/ui_check/minival", tags) as t:
        t.log_metrics({"minival/bbox_AP": 0.25, "minival/bbox_AP50": 0.5})
    run_id = t.run_id

    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", mlflow_tracking_uri(), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        experiments = None
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError("mlflow ui exited early:\n" + proc.stdout.read()[-3000:])
            try:
                experiments = post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})
                break
            except OSError:
                time.sleep(0.5)
        assert experiments is not None, "mlflow ui did not answer within 120 s"
        exp_ids = [e["experiment_id"] for e in experiments["experiments"] if e["name"] == "detlab"]
        assert exp_ids, experiments
        found = post(f"{base}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": exp_ids, "filter": "tags.model = 'ui_check'", "max_results": 10})
        runs = found["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert runs[0]["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert metrics == {"minival/bbox_AP": 0.25, "minival/bbox_AP50": 0.5}
        with urllib.request.urlopen(f"{base}/", timeout=10) as r:  # the UI page itself is served
            assert r.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
