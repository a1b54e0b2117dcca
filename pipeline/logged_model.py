"""The trained detector as an MLflow logged model, registered under its run's name.

Each train run logs its final weights file (``weights/<run>.pth``: the state dict, the model
configuration, the label map and the tensor digest; :mod:`pipeline.train`) as the artifact of
an MLflow logged model (``model_type`` :data:`MODEL_TYPE`, linked to the train run) and
registers it under the run's name, one model version per training. ``models:/<name>/<version>``
is enough to predict: :func:`load_logged_model` downloads the file and rebuilds the detector with
the repository's code, as evaluate does (:func:`pipeline.evaluate.load_trained_model`).

Why not ``mlflow.pytorch.log_model``: its "pickle" format pickles the whole ``nn.Module`` and
its ``load_model`` unpickles it with torch.load's full unpickler (weights-only off), which runs
whatever code the pickle names: a registry entry would run code on every machine loading it. Its
"pt2" format (torch.export) is code-free but cannot trace the detectors' data-dependent control
flow (proposal counts, NMS). The weights file holds tensors and plain containers only, is read
with ``torch.load(weights_only=True)`` and its tensors are checked against their digest, so
loading a logged model runs no code from the store. The logged model has no MLmodel file (no
MLflow flavor), so ``mlflow.pytorch.load_model`` cannot load it; use :func:`load_logged_model`.

The weights are logged as a copy, not as an external model pointing at the DVC-tracked
``weights/<run>.pth``: a registry entry must load on a machine that has the tracking server
but no DVC cache (a colleague, a serving host). The price is storage on the server: 15-35 MB
per training at the CPU scale, 150-900 MB at the paper scale.
"""
from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

#: the keys of a weights file (``weights/<run>.pth``) that the logged model carries as params
METADATA_KEYS = ("detector", "num_classes", "cat_ids", "categories", "config")

#: the ``model_type`` of the logged models of the train stage
MODEL_TYPE = "detlab-weights"

#: prefixes of the model URIs :func:`load_logged_model` takes
MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_PREFIXES)


def log_and_register(run_id: str, weights: Path, state: dict[str, Any],
                     registered_name: str) -> tuple[str, str]:
    """Log the final weights file ``weights`` (written by the train stage; ``state`` is its
    content) as a logged model of MLflow run ``run_id`` and register it as a new version of
    ``registered_name``; returns (the ``models:/<name>/<version>`` URI, the logged model's id,
    which evaluate runs link their metrics to)."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.paths import mlflow_tracking_uri

    weights = Path(weights)
    tags = {"detector": str(state["detector"]), "weights_file": weights.name,
            "tensor_sha256": str(state.get("tensor_sha256", ""))}
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:  # inside its Tracker: the run is active
        run = nullcontext()
    else:
        mlflow.set_tracking_uri(mlflow_tracking_uri())
        run = mlflow.start_run(run_id=run_id)
    with run:
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, tags=tags,
                                                model_type=MODEL_TYPE)
        try:
            MlflowClient().log_model_artifact(logged.model_id, str(weights))
        except BaseException:
            mlflow.finalize_logged_model(logged.model_id, "FAILED")
            raise
        mlflow.finalize_logged_model(logged.model_id, "READY")
        version = mlflow.register_model(f"models:/{logged.model_id}", registered_name)
    return f"models:/{registered_name}/{version.version}", logged.model_id


def load_logged_model(uri: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detector logged at ``uri`` (``models:/<name>/<version>``, ``runs:/<id>/model``, ...),
    in eval mode on ``device``, and its weights file's state (:data:`METADATA_KEYS` among it).

    The weights file is downloaded to a temporary folder and read like a local one
    (:func:`pipeline.evaluate.load_trained_model`: ``torch.load(weights_only=True)``, tensor
    digest verified), so a WeightsError names the downloaded file's name and the URI.

    Raises:
        ValueError: the URI holds no single ``.pth`` file (not logged by the train stage).
        WeightsError: the file is unsafe, corrupt, fails its digest or does not fit its model.
    """
    import mlflow
    import mlflow.artifacts

    from pipeline.errors import WeightsError
    from pipeline.evaluate import load_trained_model
    from pipeline.paths import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    with tempfile.TemporaryDirectory(prefix="detlab_logged_model_") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        files = [local] if local.is_file() else sorted(local.rglob("*.pth"))
        if len(files) != 1:
            raise ValueError(f"{uri}: not a detector logged by the train stage (expected one .pth weights file, "
                             f"found {[p.name for p in files]})")
        try:
            model, state = load_trained_model(files[0], device)
        except WeightsError as e:
            raise WeightsError(f"{uri}: {e}") from e
    missing = [k for k in METADATA_KEYS if k not in state]
    if missing:
        raise ValueError(f"{uri}: not a detector logged by the train stage (its weights lack {missing})")
    return model, state
