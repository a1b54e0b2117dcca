"""Well-known locations of the repository.

All paths are absolute and derived from this file's location. When DVC runs a queued or
temporary experiment (``dvc exp run --queue`` / ``--temp``), that location is a copy of the
workspace under ``<workspace>/.dvc/tmp/exps/``; the stage outputs belong in the copy (DVC
brings them back with ``dvc exp apply``), but the MLflow store must stay the workspace's, or
the experiment's runs would vanish with the copy: see :func:`workspace_root`.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
PARAMS_FILE: Path = REPO_ROOT / "params.yaml"
PREPARED_DIR: Path = REPO_ROOT / "data" / "prepared"
MANIFEST_FILE: Path = PREPARED_DIR / "manifest.json"
#: resumable epoch state (``checkpoints/<run>/``): git-ignored and no DVC output, never pushed
CHECKPOINT_DIR: Path = REPO_ROOT / "checkpoints"
#: final weights (``weights/<run>.pth``): the train stage's DVC-cached output
WEIGHTS_DIR: Path = REPO_ROOT / "weights"
METRICS_DIR: Path = REPO_ROOT / "metrics"
RESULTS_DIR: Path = REPO_ROOT / "results"
REPORTS_DIR: Path = REPO_ROOT / "reports"
README_FILE: Path = REPO_ROOT / "README.md"


def weights_file(run: str, weights_root: Path = WEIGHTS_DIR) -> Path:
    """The final weights of ``run``: ``weights/<run>.pth``."""
    return Path(weights_root) / f"{run}.pth"


def workspace_root(repo_root: Path = REPO_ROOT) -> Path:
    """The DVC workspace a stage belongs to: ``repo_root`` itself, or, when ``repo_root`` is an
    experiment's copy at ``<workspace>/.dvc/tmp/exps/...``, that ``<workspace>``."""
    parts = Path(repo_root).parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(repo_root)


def mlflow_tracking_uri() -> str:
    """The MLflow tracking store: SQLite at an absolute path in the workspace root (the
    workspace's, also from an experiment's copy; :func:`workspace_root`).

    ``MLFLOW_TRACKING_URI`` overrides it (a team's server; tests point it at a temporary store).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{workspace_root() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    """Where runs' artifacts go when the store is created (absolute ``file://`` URI)."""
    env = os.environ.get("DETLAB_MLFLOW_ARTIFACTS")
    if env:
        return env
    return (workspace_root() / "mlartifacts").as_uri()
