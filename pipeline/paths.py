"""Well-known locations of the repository.

All paths are absolute and derived from this file's location, so they stay valid when
DVC runs a stage from a temporary copy of the workspace (``dvc exp run --temp``).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
PARAMS_FILE: Path = REPO_ROOT / "params.yaml"
PREPARED_DIR: Path = REPO_ROOT / "data" / "prepared"
MANIFEST_FILE: Path = PREPARED_DIR / "manifest.json"
CHECKPOINT_DIR: Path = REPO_ROOT / "checkpoints"
METRICS_DIR: Path = REPO_ROOT / "metrics"
RESULTS_DIR: Path = REPO_ROOT / "results"
REPORTS_DIR: Path = REPO_ROOT / "reports"
README_FILE: Path = REPO_ROOT / "README.md"


def mlflow_tracking_uri() -> str:
    """The MLflow tracking store: SQLite at an absolute path in the repository root.

    ``MLFLOW_TRACKING_URI`` overrides it (tests point it at a temporary store).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    """Where runs' artifacts go when the store is created (absolute ``file://`` URI)."""
    env = os.environ.get("DETLAB_MLFLOW_ARTIFACTS")
    if env:
        return env
    return (REPO_ROOT / "mlartifacts").as_uri()
